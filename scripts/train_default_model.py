"""The recipe of crossrank's default model (crossrank-minilm-l6-v1), in three stages that can run on different
machines: `prepare` (CPU, needs the datasets: builds and saves every ranking list), `teach` (bi-encoder teacher
scores, GPU or CPU) and `train` (the package trainer; GPU or `--device cpu`).

    python scripts/train_default_model.py prepare --out data/
    python scripts/train_default_model.py teach --data data/ --device cuda
    python scripts/train_default_model.py train --data data/ --out model/ --device cuda --max-minutes 6

Training data: trec-dl-2021 (judged BM25 top-100), wikiqa and trecqa train+dev (candidate lists), BM25 lists of
those questions over the union corpus, and self-supervised pseudo-queries from the three corpora (test-split
sentences of WikiQA/TrecQA excluded). Dev (selection only): trec-dl-2020 BM25 top-100.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crossrank.train.data import load_lists, save_lists


def prepare(args: argparse.Namespace) -> None:
    from crossrank.evaluate.datasets import BeirDataset
    from crossrank.train.data import Bm25Index, judged_lists, mine_negatives, pseudo_query_lists, retrieved_lists

    out = Path(args.out)
    dl21 = BeirDataset("trec-dl-2021", "test")
    lists = judged_lists(dl21, dl21.run("bm25-top100"), depth=100)
    corpus_texts, corpus_ids, questions = [], [], []
    per_document = {"trec-dl-2021": args.pseudo_per_passage, "wikiqa": args.pseudo_per_sentence,
                    "trecqa": args.pseudo_per_sentence}
    pseudo_sources: list[tuple[list[str], int, str]] = []
    for name in ("wikiqa", "trecqa"):
        for split in ("train", "dev"):
            dataset = BeirDataset(name, split)
            lists += judged_lists(dataset, dataset.run(f"candidates-{split}"), include_judged=False)
            questions += list(dataset.queries.values())
    for dataset in (dl21, BeirDataset("wikiqa", "train"), BeirDataset("trecqa", "train")):
        kept = [(doc_id, doc.content) for doc_id, doc in dataset.corpus.items() if not doc_id.startswith("test-")]
        corpus_ids += [f"{dataset.name}/{doc_id}" for doc_id, _ in kept]
        corpus_texts += [text for _, text in kept]
        pseudo_sources.append(([text for _, text in kept], per_document[dataset.name], dataset.name))
    questions += list(dl21.queries.values())
    index = Bm25Index(corpus_texts, corpus_ids)
    lists += retrieved_lists(questions, index, depth=args.depth, source="questions-bm25")
    for seed, (texts, count, name) in enumerate(pseudo_sources):
        lists += pseudo_query_lists(texts, index, count, depth=args.depth, seed=seed, source=f"pseudo-{name}")
    save_lists(lists, out / "train.jsonl.gz")
    dl20 = BeirDataset("trec-dl-2020", "test")
    save_lists(judged_lists(dl20, dl20.run("bm25-top100"), include_judged=False), out / "dev.jsonl.gz")
    (out / "dev-qrels.json").write_text(json.dumps(dl20.qrels), encoding="utf-8")
    if args.scifact:
        scifact_train, scifact_test = BeirDataset("scifact", "train"), BeirDataset("scifact", "test")
        sci_index = Bm25Index([d.content for d in scifact_train.corpus.values()], list(scifact_train.corpus))
        save_lists(mine_negatives(scifact_train.queries, sci_index, scifact_train.qrels, rank_range=(0, 100),
                                  per_query=args.depth - 1, source="scifact-train"), out / "scifact-train.jsonl.gz")
        test_ids = list(scifact_test.queries)
        save_lists(retrieved_lists([scifact_test.queries[q] for q in test_ids], sci_index, depth=100,
                                   source="scifact-test", query_ids=test_ids), out / "scifact-test.jsonl.gz")
        (out / "scifact-test-qrels.json").write_text(json.dumps(scifact_test.qrels), encoding="utf-8")
    counts: dict[str, int] = {}
    for item in lists:
        counts[item.source] = counts.get(item.source, 0) + 1
    print(json.dumps({"lists": counts, "pairs": sum(len(i.documents) for i in lists)}, indent=1))


def teach(args: argparse.Namespace) -> None:
    from crossrank.train.teacher import BiEncoderTeacher, attach_teacher

    data = Path(args.data)
    lists = load_lists(data / "train.jsonl.gz")
    attach_teacher(lists, BiEncoderTeacher(args.teacher, device=args.device))
    save_lists(lists, data / "train-teacher.jsonl.gz")
    print(f"teacher scores for {len(lists)} lists")


def train(args: argparse.Namespace) -> None:
    from crossrank.train.trainer import DevSet, Trainer, TrainConfig

    data = Path(args.data)
    lists = load_lists(data / args.lists)
    if args.sources:
        lists = [item for item in lists if any(item.source.startswith(s) for s in args.sources.split(","))]
    dev = DevSet(args.dev_name, load_lists(data / args.dev), json.loads((data / args.dev_qrels).read_text()))
    if args.dev_limit:
        dev.lists = dev.lists[: args.dev_limit]
        dev.qrels = {item.query_id: dev.qrels[item.query_id] for item in dev.lists}
    config = TrainConfig(
        base=args.base, max_length=args.max_length, group_size=args.group_size, lists_per_step=args.lists_per_step,
        labelled_fraction=args.labelled_fraction, label_loss=args.label_loss or None, label_weight=args.label_weight,
        teacher_loss=args.teacher_loss or None, temperature=args.temperature,
        first_stage_weight=args.first_stage_weight, lr=args.lr, head_lr=args.head_lr, steps=args.steps,
        max_minutes=args.max_minutes, seed=args.seed, device=args.device, eval_every=args.eval_every,
        patience=args.patience, resume=args.resume)
    result = Trainer(config, lists, args.out, dev=dev).train()
    print(json.dumps({"best_dev_ndcg@10": result.best_metric, "best_step": result.best_step, "steps": result.steps,
                      "pairs": result.pairs_seen, "seconds": round(result.wall_seconds, 1)}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--out", required=True)
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--pseudo-per-passage", type=int, default=6)
    p.add_argument("--pseudo-per-sentence", type=int, default=2)
    p.add_argument("--scifact", action="store_true", help="also prepare scifact train/test lists (adaptation)")
    p = commands.add_parser("teach")
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", default=None, help="bi-encoder dir (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--device", default="cpu")
    p = commands.add_parser("train")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--lists", default="train-teacher.jsonl.gz")
    p.add_argument("--sources", default="", help="comma-separated source prefixes to keep (ablations)")
    p.add_argument("--dev", default="dev.jsonl.gz")
    p.add_argument("--dev-qrels", default="dev-qrels.json")
    p.add_argument("--dev-name", default="trec-dl-2020:test")
    p.add_argument("--dev-limit", type=int, default=0)
    p.add_argument("--base", default="minilm")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--lists-per-step", type=int, default=32)
    p.add_argument("--labelled-fraction", type=float, default=0.25)
    p.add_argument("--label-loss", default="listwise")
    p.add_argument("--label-weight", type=float, default=1.0)
    p.add_argument("--teacher-loss", default="kl")
    p.add_argument("--temperature", type=float, default=0.3)
    p.add_argument("--first-stage-weight", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    {"prepare": prepare, "teach": teach, "train": train}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
