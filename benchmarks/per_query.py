"""Per-query latency and quality: what a user waits for to rerank one query's BM25 top-100, and what it costs.

One command (`python benchmarks/per_query.py [--quick]`): sentence-transformers (torch fp32, the reference),
FlashRank (int8) and crossrank's variants each rerank every judged query's BM25 top-100 of TREC DL 2020 (and a
SciFact slice: whole abstracts, so long-document cost shows), each contender in its own process, interleaved
query by query (rerank_throughput.py's harness), medians over repeats. Per contender: p50/p95 ms per query,
nDCG@10 of its order, and the p50 speed-up over sentence-transformers. Writes benchmarks/results/per_query.json
and a latency-vs-nDCG plot beside it.

Same model for every contender where the peers can run it. The default model is a gated cross-encoder
(`crossrank.model.gated`): FlashRank runs its exported graph as is (the pair template lives in tokenizer.json),
but sentence-transformers loads only the plain BERT inside it (a random head on the same weights: the same shape
and slightly *less* work than the gated graph). Its latency is still the reference; its nDCG@10 is not the
model's, so the quality reference is then crossrank's torch fp32 joint pass, which is what the model computes.
When the model's gates are closed the engine scores it factorised (`crossrank.model.factorised`); the joint ONNX
graph it replaces runs beside it (`-joint` rows), so the gain is measured, not assumed. Such a model's document
windows do not depend on the query, so an index stores their vectors when it is built (`crossrank index`, on by
default): the `-indexed` row is that search, the candidates' vectors read from a store written before the first
query (its build time is printed, not timed: it is indexing work) and only the query encoded per search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rerank_throughput import (
    Contender,
    default_model_dir,
    flashrank_cache,
    load_queries,
    measure,
    ndcg_at_10,
    package_versions,
    setup_peers,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "per_query.json"
# (dataset, judged test queries used: None = all). SciFact's 300 queries × 100 abstracts (two windows each) would
# take an hour per contender set; an evenly spread slice shows the long-document cost.
DATASETS = {"trec-dl-2020": None, "scifact": 20}
REFERENCE = "sentence-transformers"
QUALITY_REFERENCE = "crossrank-torch-fp32"  # for a gated model: the joint pass, as it was trained


def contenders(model_dir: Path, scratch: Path, peers_python: str, threads: int | None,
               lengths: list[int]) -> list[Contender]:
    from crossrank.model.checkpoint import Checkpoint
    from crossrank.model.export import onnx_model_path
    from crossrank.model.factorised import gates_closed

    checkpoint = Checkpoint.open(model_dir)
    onnx_int8 = onnx_model_path(checkpoint, "classification", "int8")  # FlashRank runs the joint graph
    flashrank_cache(model_dir, {"crossrank-int8": onnx_int8}, scratch / "flashrank")
    common = {"pairs_file": str(scratch / "pairs.json"), "threads": threads}
    crossrank = common | {"kind": "crossrank", "model": str(model_dir)}
    found = [
        Contender(REFERENCE, common | {"kind": "sentence-transformers", "model": str(model_dir)}, peers_python),
        Contender("flashrank-int8", common | {"kind": "flashrank", "cache_dir": str(scratch / "flashrank"),
                                             "name": "crossrank-int8", "file": onnx_int8.name},
                  peers_python, precision="int8"),
        # The quality reference: the joint pass, as the model was trained.
        Contender(QUALITY_REFERENCE, crossrank | {"backend": "torch", "factorise": False}, sys.executable),
        Contender("crossrank-onnx-fp32", crossrank | {"backend": "onnx"}, sys.executable),
        Contender("crossrank-onnx-int8", crossrank | {"backend": "onnx", "quantize": "int8"}, sys.executable,
                  precision="int8"),
        Contender("crossrank-torch-bf16", crossrank | {"backend": "torch", "quantize": "bf16"}, sys.executable,
                  precision="bf16"),
        Contender("crossrank-torch-bf16-eager", crossrank | {"backend": "torch", "quantize": "bf16", "compile": False},
                  sys.executable, precision="bf16"),
    ]
    if gates_closed(checkpoint):  # the engine factorises this model; show the joint graph it replaces beside it
        found += [Contender(f"crossrank-onnx-{precision}-joint", crossrank | {"backend": "onnx", "factorise": False}
                            | ({"quantize": "int8"} if precision == "int8" else {}), sys.executable,
                            precision=precision) for precision in ("fp32", "int8")]
        # What `crossrank search` does over an index built with `crossrank index` (segments stored by default), on
        # the default backend: the candidates' windows were encoded at index time, the query is encoded now.
        backend, quantize = default_backend()
        found.append(Contender(f"crossrank-{backend}-{quantize or 'fp32'}-indexed",
                               crossrank | {"backend": backend, "quantize": quantize, "stored_segments": True},
                               sys.executable, precision=quantize or "fp32"))
    for length in lengths:  # fewer tokens: a shorter pair window (long documents get more windows)
        found.append(Contender(f"crossrank-onnx-int8-len{length}",
                               crossrank | {"backend": "onnx", "quantize": "int8", "max_length": length},
                               sys.executable, precision="int8"))
    return found


def default_backend() -> tuple[str, str | None]:
    """The (backend, precision) `CrossEncoder.from_pretrained(path)` with no options runs on this machine."""
    import inspect

    from crossrank.model.backends import resolve_backend
    from crossrank.model.cross_encoder import CrossEncoder

    defaults = inspect.signature(CrossEncoder.from_pretrained).parameters
    return resolve_backend(defaults["backend"].default, defaults["quantize"].default)


def default_contender() -> str:
    backend, quantize = default_backend()
    return f"crossrank-{backend}-{quantize or 'fp32'}"


def summarise(found: list[Contender], queries: list[dict], qrels: dict, gated: bool) -> dict:
    rows = {}
    for contender in found:
        times = np.asarray(contender.seconds) * 1e3  # [repeat, query] ms
        quality = ndcg_at_10(queries, contender.scores, qrels)
        rows[contender.name] = {
            "precision": contender.precision,
            "p50_ms": round(float(np.percentile(times, 50)), 1),
            "p95_ms": round(float(np.percentile(times, 95)), 1),
            "p50_ms_per_repeat": np.percentile(times, 50, axis=1).round(1).tolist(),
            "ndcg@10": None if gated and contender.name == REFERENCE else round(quality, 4),
            "peak_rss_mb": round(contender.peak_rss_mb, 1),
        }
    reference = rows[REFERENCE]
    by_name = {contender.name: contender for contender in found}
    for name, row in rows.items():
        row["speedup_vs_st"] = round(reference["p50_ms"] / row["p50_ms"], 2)
        paired = np.asarray(by_name[REFERENCE].seconds) / np.asarray(by_name[name].seconds)
        row["speedup_vs_st_paired_median"] = round(float(np.median(paired)), 2)
    quality_reference = QUALITY_REFERENCE if gated else REFERENCE
    for row in rows.values():
        if row["ndcg@10"] is not None:
            row["ndcg@10_vs_reference"] = round(row["ndcg@10"] - rows[quality_reference]["ndcg@10"], 4)
    return {"contenders": rows, "quality_reference": quality_reference, "queries": len(queries),
            "pairs_per_query": float(np.mean([len(query["documents"]) for query in queries]))}


def plot(results: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for axis, (dataset, summary) in zip(axes[0], results.items(), strict=True):
        for name, row in summary["contenders"].items():
            if row["ndcg@10"] is None:
                axis.axvline(row["p50_ms"], color="grey", linestyle=":", label=f"{name} (latency only)")
                continue
            axis.scatter(row["p50_ms"], row["ndcg@10"], s=40)
            axis.annotate(name.removeprefix("crossrank-"), (row["p50_ms"], row["ndcg@10"]), fontsize=7,
                          xytext=(4, 3), textcoords="offset points")
        axis.set_xscale("log")
        axis.set_xlabel("p50 ms per query (log)")
        axis.set_ylabel("nDCG@10")
        axis.set_title(f"{dataset}: BM25 top-100, {summary['queries']} queries")
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(target, dpi=120)


def print_table(dataset: str, summary: dict) -> None:
    print(f"\n{dataset}: {summary['queries']} queries × {summary['pairs_per_query']:.0f} candidates "
          f"(quality reference: {summary['quality_reference']})")
    header = f"{'contender':30} {'p50 ms':>8} {'p95 ms':>8} {'x ST':>6} {'x ST paired':>11} {'nDCG@10':>8} {'Δ ref':>7}"
    print(header)
    print("-" * len(header))
    for name, row in summary["contenders"].items():
        quality = "n/a" if row["ndcg@10"] is None else f"{row['ndcg@10']:.4f}"
        delta = row.get("ndcg@10_vs_reference")
        print(f"{name + (' (default)' if row.get('default') else ''):30} {row['p50_ms']:8.0f} {row['p95_ms']:8.0f} "
              f"{row['speedup_vs_st']:6.2f} {row['speedup_vs_st_paired_median']:11.2f} {quality:>8} "
              f"{'' if delta is None else f'{delta:+.4f}':>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 queries per dataset, 3 repeats")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, from: " + ", ".join(DATASETS))
    parser.add_argument("--queries", type=int, default=None, help="evenly spread judged queries per dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="128", help="extra int8 contenders at these max_length values")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--contenders", default=None,
                        help="comma-separated names to run (default: all); the latency and quality references "
                             "always run")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (medians of fewer are not medians)")
    datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    if unknown := sorted(set(datasets) - set(DATASETS)):
        parser.error(f"unknown datasets {unknown}; choose from {list(DATASETS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python benchmarks/per_query.py " + " ".join(sys.argv[1:])
    trained = args.model or default_model_dir()
    if trained is None:
        parser.error("no trained model: pass --model DIR (quality needs a trained checkpoint)")

    from crossrank.model.gated import is_gated

    peers_python = setup_peers()
    default = default_contender()
    results, started, load_before = {}, time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="per-query-") as scratch_dir:
        scratch = Path(scratch_dir)
        os.environ.setdefault("CROSSRANK_CACHE", str(scratch / "cache"))
        model_dir = Path(shutil.copytree(trained, scratch / "model"))  # a snapshot: retraining cannot interfere
        gated = is_gated(json.loads((model_dir / "config.json").read_text()))
        for dataset in datasets:
            count = 4 if args.quick else args.queries or DATASETS[dataset]
            queries, qrels = load_queries(count, dataset)
            (scratch / "pairs.json").write_text(json.dumps(queries))
            found = contenders(model_dir, scratch, peers_python, args.threads,
                               [int(length) for length in args.lengths.split(",") if length])
            if args.contenders:
                wanted = {name.strip() for name in args.contenders.split(",") if name.strip()}
                if unknown := sorted(wanted - {contender.name for contender in found}):
                    parser.error(f"unknown contenders {unknown}; choose from {[c.name for c in found]}")
                found = [c for c in found if c.name in wanted | {REFERENCE, QUALITY_REFERENCE}]
            print(f"{dataset}: {len(queries)} queries, {len(found)} contenders", file=sys.stderr, flush=True)
            measure(found, len(queries), args.repeats)
            results[dataset] = summarise(found, queries, qrels, gated)
            if default in results[dataset]["contenders"]:
                results[dataset]["contenders"][default]["default"] = True
            shutil.rmtree(scratch / "flashrank")
    summary = {
        "command": command, "results": results, "model": str(trained), "gated_model": gated,
        "default_configuration": default, "repeats": args.repeats, "threads": args.threads or "library defaults",
        "wall_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "versions": package_versions(peers_python, ["flashrank", "sentence-transformers", "torch", "onnxruntime"]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    plot(results, args.output.with_suffix(".png"))
    print(f"\n$ {command}")
    for dataset, dataset_summary in results.items():
        print_table(dataset, dataset_summary)
    print(f"\nwrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
