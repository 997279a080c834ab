"""Does fine-tuning the default model on a judged training set's own queries help the queries it did not see?

K-fold cross-validation over the queries of a judged training set (default trec-dl-2021: 53 queries with graded
judgments over the shipped BM25 top-100, the in-domain data closest to MS MARCO that crossrank may train on). Per
fold the bundled model is fine-tuned with its gates frozen closed (so it stays factorised, as shipped) on the
other folds' judged lists — listwise cross-entropy over groups of one judged anchor and random others — and the
held-out queries' top-100 are reranked every --eval-every steps (nDCG@10 against all their judgments). Prints the
curve of the fold mean against step 0 (the bundled model) and writes it to --out as JSON.

    python scripts/judged_finetune_cv.py --out /tmp/judged-cv.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from crossrank.datasets import BeirDataset
from crossrank.train.data import judged_lists
from crossrank.train.trainer import DevSet, TrainConfig, Trainer


def folds_of(query_ids: list[str], folds: int, seed: int) -> dict[str, int]:
    order = sorted(query_ids)
    random.Random(seed).shuffle(order)
    return {query_id: i % folds for i, query_id in enumerate(order)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="trec-dl-2021")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", default="bm25-top100", help="the dataset's shipped run whose top-100 is reranked")
    parser.add_argument("--model", default="default")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--lists-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    dataset = BeirDataset(args.dataset, args.split)
    lists = judged_lists(dataset, dataset.run(args.run), depth=100, include_judged=False)
    fold_of = folds_of([item.query_id for item in lists], args.folds, args.seed)
    curves: dict[int, dict[int, float]] = {}
    report: dict = {"args": {key: str(value) for key, value in vars(args).items()}, "folds": {}}
    for fold in range(args.folds):
        held = [item for item in lists if fold_of[item.query_id] == fold]
        held_ids = {item.query_id for item in held}
        dev = DevSet(f"{args.dataset} fold {fold}", held, {q: j for q, j in dataset.qrels.items() if q in held_ids})
        config = TrainConfig(base=args.model, architecture="gated", freeze_gates=True, label_loss="listwise",
                             teacher_loss=None, labelled_fraction=1.0, group_size=args.group_size,
                             lists_per_step=args.lists_per_step, lr=args.lr, head_lr=args.lr, steps=args.steps,
                             eval_every=args.eval_every, device="cpu", seed=args.seed + fold)
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as out:
            train = [item for item in lists if item.query_id not in held_ids]
            result = Trainer(config, train, out, dev=dev, log=lambda _: None).train()
        curves[fold] = {row["step"]: row["dev_ndcg@10"] for row in result.history}
        report["folds"][fold] = {"queries": len(held), "curve": curves[fold],
                                 "seconds": round(time.monotonic() - started, 1), "pairs": result.pairs_seen}
        print(f"fold {fold} ({len(held)} queries): " + ", ".join(f"{s}: {v:.4f}" for s, v in curves[fold].items()),
              flush=True)
    steps = sorted(set.intersection(*(set(curve) for curve in curves.values())))
    # Every held-out query counts once: the folds' means weighted by their query counts.
    sizes = np.array([report["folds"][fold]["queries"] for fold in curves], dtype=float)
    mean = {step: float(np.average([curves[fold][step] for fold in curves], weights=sizes)) for step in steps}
    report["mean"] = mean
    print(f"\n{'step':>5} {'nDCG@10':>8} {'vs step 0':>9}")
    for step in steps:
        print(f"{step:5d} {mean[step]:8.4f} {mean[step] - mean[0]:+9.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
