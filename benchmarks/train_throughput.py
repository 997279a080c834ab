"""Training throughput on this CPU: trained (query, passage) pairs per second and peak RSS of the v1 recipe
(one batch padded to the step's longest pair, fp32, [CLS] classifier) against the v2 recipe (length-sorted
micro-batches under a token budget, bf16 autocast where the CPU has native bf16, gated cross-encoder), with and
without gradient checkpointing, and with its gates frozen closed (how `crossrank adapt` and `crossrank train
--freeze-gates` fine-tune the bundled model), which the trainer runs one segment at a time.

One command (`python benchmarks/train_throughput.py [--steps 4]`): every contender trains the same lists — the
TREC DL 2021 judged BM25 top-100 (listwise label loss, groups of 16, 8 lists a step) — in its own process, so
peak RSS is its own; contenders are interleaved over repeats and the figure is the median. Prints a table; writes
benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "train_throughput.json"
CONTENDERS = {
    "v1: classifier, one padded batch, fp32": {"architecture": "classifier", "batch_tokens": 1 << 30, "bf16": False},
    "v2: gated, length-sorted micro-batches, bf16": {"architecture": "gated", "batch_tokens": 8192, "bf16": True},
    "v2 + gradient checkpointing": {"architecture": "gated", "batch_tokens": 8192, "bf16": True,
                                    "gradient_checkpointing": True},
    "v2, gates frozen closed: one segment at a time": {"architecture": "gated", "batch_tokens": 8192, "bf16": True,
                                                       "freeze_gates": True},
}


def worker(name: str, steps: int) -> None:
    """Train `steps` steps (after one warm-up step) and print pairs/s and peak RSS as JSON."""
    from crossrank.datasets import BeirDataset
    from crossrank.train.data import judged_lists
    from crossrank.train.trainer import TrainConfig, Trainer

    dataset = BeirDataset("trec-dl-2021", "test")
    lists = judged_lists(dataset, dataset.run("bm25-top100"), include_judged=False)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(base="minilm", label_loss="listwise", teacher_loss=None, lists_per_step=8,
                             group_size=16, max_length=256, steps=1, eval_every=1, device="cpu", **CONTENDERS[name])
        trainer = Trainer(config, lists, out, log=lambda _: None)
        trainer.train()  # warm-up: allocator, threads, first-step overheads
        trainer.config.steps = trainer.step + steps
        pairs_before = trainer.pairs_seen
        result = trainer.train()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = result.pairs_seen - pairs_before
    print(json.dumps({"name": name, "pairs": pairs, "seconds": result.wall_seconds,
                      "pairs_per_second": pairs / result.wall_seconds, "peak_rss_mb": rss_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for repeat in range(args.repeats):
        for name in CONTENDERS:
            output = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps)],
                                    check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(output.strip().splitlines()[-1]))
            print(f"repeat {repeat}: {name}: {runs[name][-1]['pairs_per_second']:.1f} pairs/s", flush=True)
    summary = {name: {"pairs_per_second": float(np.median([r["pairs_per_second"] for r in rows])),
                      "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in rows])), "runs": rows}
               for name, rows in runs.items()}
    reference = summary[next(iter(CONTENDERS))]["pairs_per_second"]
    print(f"\n{'contender':48} {'pairs/s':>8} {'vs v1':>6} {'peak RSS MB':>12}")
    for name, row in summary.items():
        print(f"{name:48} {row['pairs_per_second']:8.1f} {row['pairs_per_second'] / reference:6.2f} "
              f"{row['peak_rss_mb']:12.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
                                   "steps": args.steps, "repeats": args.repeats, "results": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
