"""What RAG context selection costs per query, next to plain reranking of the same 100 candidates.

One command (`python benchmarks/context_latency.py [--quick]`): for judged test queries of TREC DL 2020 (passages)
and SciFact (whole abstracts), each query's BM25 top-100 is (a) reranked by the bundled cross-encoder, (b) turned
into a context by `ContextSelector` at sentence granularity (the default: passages scored, then the sentences of
the passages that pass the floor scored in one more batched pass, near-duplicates dropped, packed into the budget)
and (c) at passage granularity, all with the default model on the ONNX backend and no score caches. The three run
in one process, interleaved query by query, repeated; p50/p95 ms per query are medians over all (repeat, query)
timings, and `x rerank` is each one's p50 over plain reranking's. Writes benchmarks/results/context_latency.json.

Texts the caller sends are encoded per call here; over an index that stores its passages' vectors (`crossrank
index`), the passage pass reads them and only the query and the sentences are encoded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rerank_throughput import load_queries, package_versions

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "context_latency.json"
DATASETS = {"trec-dl-2020": 10, "scifact": 5}  # judged test queries (evenly spread) per dataset
BUDGET = 512


def contenders(threads: int | None) -> dict[str, Callable[[dict], object]]:
    from crossrank.context import ContextSelector
    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.embedding import BiEncoder

    model = CrossEncoder.from_pretrained(threads=threads)
    sentence = ContextSelector(model, BiEncoder.from_pretrained(threads=threads))
    passage = sentence.with_settings(granularity="passage")
    return {
        "rerank": lambda q: model.rank(q["query"], q["documents"]),
        f"context sentence {BUDGET}": lambda q: sentence.select(q["query"], q["documents"], BUDGET),
        f"context passage {BUDGET}": lambda q: passage.select(q["query"], q["documents"], BUDGET),
    }


def measure(queries: list[dict], runs: dict[str, Callable[[dict], object]], repeats: int) -> dict[str, np.ndarray]:
    """ms[repeat, query] per contender, interleaved query by query after one warm-up each."""
    for run in runs.values():
        run(queries[0])
    times = {name: np.zeros((repeats, len(queries))) for name in runs}
    for repeat in range(repeats):
        for i, query in enumerate(queries):
            for name, run in runs.items():
                start = time.perf_counter()
                run(query)
                times[name][repeat, i] = (time.perf_counter() - start) * 1e3
    return times


def summarise(times: dict[str, np.ndarray]) -> dict[str, dict]:
    reference = float(np.percentile(times["rerank"], 50))
    return {name: {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
                   "x_rerank": round(float(np.percentile(ms, 50)) / reference, 2),
                   "p50_ms_per_repeat": np.percentile(ms, 50, axis=1).round(1).tolist()}
            for name, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 queries per dataset, 3 repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (medians of fewer are not medians)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = contenders(args.threads)
    results, load_before, started = {}, os.getloadavg(), time.time()
    for dataset, count in DATASETS.items():
        queries, _ = load_queries(2 if args.quick else count, dataset)
        summary = summarise(measure(queries, runs, args.repeats))
        results[dataset] = {"queries": len(queries),
                            "candidates_per_query": float(np.mean([len(q["documents"]) for q in queries])),
                            "contenders": summary}
        print(f"\n{dataset}: {len(queries)} queries × BM25 top-100, budget {BUDGET} tokens, {args.repeats} repeats")
        print(f"{'contender':28} {'p50 ms':>8} {'p95 ms':>8} {'x rerank':>9}")
        for name, row in summary.items():
            print(f"{name:28} {row['p50_ms']:8.0f} {row['p95_ms']:8.0f} {row['x_rerank']:9.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "meta": {"command": "python benchmarks/context_latency.py " + " ".join(sys.argv[1:]),
                 "cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_before": load_before,
                 "load_avg_after": os.getloadavg(), "seconds": round(time.time() - started),
                 "repeats": args.repeats, "budget_tokens": BUDGET,
                 "versions": package_versions(sys.executable, ["crossrank", "onnxruntime", "tokenizers"])},
        "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
