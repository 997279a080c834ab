"""First-stage retrieval benchmark on BEIR SciFact and NPL (../shared/datasets): ingest throughput, query latency
and full-corpus nDCG@10 for BM25, dense, hybrid (RRF) and hybrid + rerank (for a factorised model also with the
passages' vectors stored in the index, as `crossrank index` does), side by side with bm25s.

    python benchmarks/retrieval.py --setup      # once: benchmarks/.venv-retrieval with bm25s + PyStemmer
    python benchmarks/retrieval.py [--datasets scifact npl] [--model CROSS_ENCODER_DIR] [--rerank-queries 20]

Prints a table and writes benchmarks/results/retrieval.json (--output). Indexes go to benchmarks/work/ (gitignored) and
are reused with --reuse. Documents are indexed whole (passage_tokens 512; the bi-encoder reads the first 256
tokens, as in BEIR's dense runs), and passage rankings are collapsed to documents for nDCG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-retrieval"
PEERS = ["bm25s==0.3.16", "PyStemmer>=2.2"]


def setup() -> None:
    """A venv that sees this environment's packages (via a .pth) and adds the peers, kept out of the package."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    target = subprocess.run([str(VENV / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                            check=True, capture_output=True, text=True).stdout.strip()
    project = sysconfig.get_path("purelib")  # the environment running --setup, crossrank included
    (Path(target) / "crossrank-env.pth").write_text(f"import site; site.addsitedir({project!r})\n")
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *PEERS], check=True)
    print(f"peers installed in {VENV}; run: python {Path(__file__).name}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_queries(run_one, queries: dict[str, str]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Run one query at a time; return the doc-level run and latency p50/p95 in ms."""
    run, latencies = {}, []
    for qid, text in queries.items():
        start = time.perf_counter()
        run[qid] = run_one(text)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, {"p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95)}


def doc_run(candidates) -> dict[str, float]:
    """Best passage per document, scored by descending rank so ties cannot reorder them."""
    out: dict[str, float] = {}
    for rank, candidate in enumerate(candidates):
        out.setdefault(candidate.doc_id, float(len(candidates) - rank))
    return out


def ndcg10(qrels, run) -> float:
    import ir_measures
    from ir_measures import nDCG

    judged = {q: run.get(q, {}) for q in qrels}
    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, judged)[nDCG @ 10])


def bench_bm25s(dataset, queries: dict[str, str], depth: int) -> dict:
    import bm25s

    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        stemmer = None
    ids = list(dataset.corpus)
    texts = [f"{d.title} {d.text}" for d in dataset.corpus.values()]
    start = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    index_s = time.perf_counter() - start

    def one(text: str) -> dict[str, float]:
        query = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False)
        if not query.vocab:
            return {}
        found, scores = retriever.retrieve(query, k=min(depth, len(ids)), show_progress=False, n_threads=1)
        return {ids[i]: float(s) for i, s in zip(found[0], scores[0], strict=True)}

    run, latency = timed_queries(one, queries)
    return {"index_s": index_s, "docs_per_s": len(ids) / index_s, **latency, "ndcg@10": ndcg10(dataset.qrels, run),
            "stemmer": "PyStemmer english" if stemmer else "none"}


def ann_recall(index, queries: dict[str, str]) -> dict:
    """HNSW (forced on) recall@10 against exact search over this index's real vectors."""
    import numpy as np

    from crossrank.retrieve.dense import DenseIndex

    assert index.dense is not None
    ann = DenseIndex(index.dense.dimension, exact_threshold=0)
    ann.add(index.dense.rows, index.dense.vectors)
    rng = np.random.default_rng(0)
    probe = index.dense.vectors[rng.choice(len(index.dense), size=min(500, len(index.dense)), replace=False)]
    vectors = np.concatenate([index.encoder.encode(list(queries.values())), probe])
    start = time.perf_counter()
    found = ann.search(vectors, 10)
    ann_ms = (time.perf_counter() - start) * 1000 / len(vectors)
    recall = [len({r for r, _ in hits} & {r for r, _ in ann.search_exact(v, 10)}) / 10
              for v, hits in zip(vectors, found, strict=True)]
    return {"vectors": len(ann), "probes": len(vectors), "recall@10": float(np.mean(recall)), "hnsw_ms": ann_ms}


def bench_dataset(name: str, args) -> dict:
    from crossrank.datasets import BeirDataset
    from crossrank.pipeline import Collapse, Cut, Fuse, Pipeline, Rerank, Retrieve
    from crossrank.store import FieldMapping, Index, IndexConfig

    dataset = BeirDataset(name, "test")
    queries = dataset.queries
    corpus_file = dataset.path / "corpus.jsonl"
    work = HERE / "work" / "retrieval"
    out: dict = {"documents": len(dataset.corpus), "queries": len(queries)}

    def build(path: Path, dense: bool) -> tuple[Index, float]:
        if args.reuse and path.is_dir():
            return Index.open(path, writable=True), float("nan")
        if path.exists():
            import shutil

            shutil.rmtree(path)
        index = Index.create(path, IndexConfig(passage_tokens=512, overlap=32, dense=dense))
        if dense:
            index.encoder.encode(["warm up"])  # model load is not ingest
        start = time.perf_counter()
        index.ingest([corpus_file], mapping=FieldMapping(), commit_every=2000, show_progress=True)
        return index, time.perf_counter() - start

    bm25_only, bm25_s = build(work / f"{name}-bm25", dense=False)
    passages = bm25_only.count()["passages"]
    print(f"[{name}] BM25 ingest {bm25_s:.1f}s", flush=True)
    out["ingest"] = {"passages": passages, "bm25_s": bm25_s, "bm25_passages_per_s": passages / bm25_s}
    depth = args.depth
    systems = {"bm25": Pipeline([Retrieve(bm25_only, "bm25", k=depth), Collapse()])}
    if args.bm25_only:
        index = bm25_only
    else:
        bm25_only.close()
        index, full_s = build(work / f"{name}-full", dense=True)
        print(f"[{name}] full ingest {full_s:.1f}s", flush=True)
        out["ingest"].update(full_s=full_s, dense_passages_per_s=passages / (full_s - bm25_s))
        systems = {
            "bm25": Pipeline([Retrieve(index, "bm25", k=depth), Collapse()]),
            "dense": Pipeline([Retrieve(index, "dense", k=depth), Collapse()]),
            "hybrid": Pipeline([Retrieve(index, ["bm25", "dense"], k=depth), Fuse("rrf"), Collapse()]),
        }
        index.retrieve("dense", [dataset_query(queries)], 1)  # load the bi-encoder before timing
    for system, pipeline in systems.items():
        run, latency = timed_queries(lambda text, p=pipeline: doc_run(p.search(text).candidates), queries)
        out[system] = {**latency, "ndcg@10": ndcg10(dataset.qrels, run)}
        print(f"[{name}] {system}: {out[system]}", flush=True)
    if (args.model or args.untrained) and not args.bm25_only:
        from crossrank.model.cross_encoder import CrossEncoder

        model = CrossEncoder.from_pretrained(args.model or untrained_cross_encoder())
        rerank = Pipeline([Retrieve(index, ["bm25", "dense"], k=depth), Fuse("rrf"), Collapse(),
                           Rerank(model, k=args.rerank_k), Cut(10)])
        subset = dict(list(queries.items())[: args.rerank_queries]) if args.rerank_queries else queries
        run, latency = timed_queries(lambda text: doc_run(rerank.search(text).candidates), subset)
        out["hybrid+rerank"] = {**latency, "model": model.name, "queries": len(subset), "rerank_k": args.rerank_k,
                                "ndcg@10": ndcg10({q: dataset.qrels[q] for q in subset if q in dataset.qrels}, run)
                                if args.model else None}
        print(f"[{name}] hybrid+rerank: {out['hybrid+rerank']}", flush=True)
        if model.factorised is not None:  # what `crossrank index` does by default: store the passages' vectors
            start = time.perf_counter()
            stored = index.store_segments(model, show_progress=True)
            out["ingest"].update(segments_s=time.perf_counter() - start, segments=stored.segments,
                                 segments_encoded=stored.encoded)
            index.lend_segments(model)  # as `search_pipeline` does: the same pipeline now reads them
            run, latency = timed_queries(lambda text: doc_run(rerank.search(text).candidates), subset)
            out["hybrid+rerank, stored segments"] = {**out["hybrid+rerank"], **latency,
                                                     "ndcg@10": ndcg10({q: dataset.qrels[q] for q in subset
                                                                        if q in dataset.qrels}, run)}
            print(f"[{name}] hybrid+rerank, stored segments: {out['hybrid+rerank, stored segments']} "
                  f"({stored.segments} window vectors, {out['ingest']['segments_s']:.0f}s)", flush=True)
    if not args.bm25_only:
        out["ann"] = ann_recall(index, queries)
    index.close()
    out["bm25s"] = bench_bm25s(dataset, queries, depth)
    print(f"[{name}] bm25s: {out['bm25s']}", flush=True)
    return out


def dataset_query(queries: dict[str, str]):
    from crossrank.types import Query

    return Query(next(iter(queries.values())))


def untrained_cross_encoder() -> Path:
    """MiniLM body under an untrained one-logit head: real-size latency, meaningless scores."""
    target = HERE / "work" / "minilm-untrained-ce"
    if not (target / "config.json").is_file():
        import shutil

        import torch
        from transformers import BertForSequenceClassification

        from crossrank.model.checkpoint import bi_encoder_path

        torch.manual_seed(0)
        BertForSequenceClassification.from_pretrained(str(bi_encoder_path()), num_labels=1).save_pretrained(target)
        for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(bi_encoder_path() / file, target / file)
    return target


def table(results: dict) -> str:
    lines = ["| set | system | ingest passages/s | p50 ms | p95 ms | nDCG@10 |", "|---|---|---|---|---|---|"]
    for name, r in results["datasets"].items():
        ingest = r["ingest"]
        rows = [("bm25 (tantivy)", f"{ingest['bm25_passages_per_s']:.0f}", r["bm25"])]
        if "dense" in r:
            rows += [("dense (MiniLM ONNX, FAISS)", f"{ingest['dense_passages_per_s']:.0f}", r["dense"]),
                     ("hybrid RRF", "", r["hybrid"])]
        for system in ("hybrid+rerank", "hybrid+rerank, stored segments"):
            if system in r:
                rerank = r[system]
                stored = system.endswith("segments")
                rate = f"{ingest['segments'] / ingest['segments_s']:.0f} windows/s" if stored else ""
                rows.append((f"hybrid + rerank {rerank['rerank_k']} ({rerank['queries']} q)"
                             + (", stored passage vectors" if stored else ""), rate, rerank))
        rows.append(("bm25s (peer)", f"{r['bm25s']['docs_per_s']:.0f}", r["bm25s"]))
        for system, rate, m in rows:
            ndcg = "—" if m.get("ndcg@10") is None else f"{m['ndcg@10']:.4f}"
            lines.append(f"| {name} | {system} | {rate} | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} | {ndcg} |")
        if "ann" not in r:
            continue
        ann = r["ann"]
        lines.append(f"| {name} | HNSW recall@10 vs exact ({ann['vectors']} vectors, {ann['probes']} probes) | | "
                     f"{ann['hnsw_ms']:.2f} | | {ann['recall@10']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="create benchmarks/.venv-retrieval with the peers")
    parser.add_argument("--datasets", nargs="+", default=["scifact", "npl"])
    parser.add_argument("--depth", type=int, default=1000, help="candidates per retriever")
    parser.add_argument("--model", help="cross-encoder for hybrid + rerank (nDCG reported)")
    parser.add_argument("--untrained", action="store_true", help="rerank latency with an untrained MiniLM head")
    parser.add_argument("--rerank-k", type=int, default=100)
    parser.add_argument("--rerank-queries", type=int, default=20, help="0 = all queries")
    parser.add_argument("--reuse", action="store_true", help="reuse indexes under benchmarks/work/")
    parser.add_argument("--bm25-only", action="store_true", help="skip dense vectors (and so hybrid, rerank, ANN)")
    parser.add_argument("--output", default="retrieval.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    if VENV.is_dir() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), *sys.argv])
    try:
        import bm25s  # noqa: F401
    except ImportError:
        sys.exit("bm25s is missing: run `python benchmarks/retrieval.py --setup` first")
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_avg_at_start": os.getloadavg()},
               "depth": args.depth, "datasets": {}}
    for name in args.datasets:
        results["datasets"][name] = bench_dataset(name, args)
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / args.output).write_text(json.dumps(results, indent=2))
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    (HERE / "results" / args.output).write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
