"""Reranking throughput: crossrank (torch, ONNX fp32, ONNX int8) against sentence-transformers and FlashRank.

One command (`python benchmarks/rerank_throughput.py [--quick]`): every contender scores the same pairs — the
TREC DL 2020 queries × their BM25 top-100 passages — with the same checkpoint, each in its own process (peak RSS
is its own; peers run from `benchmarks/.venv-peers`, which this script creates). The machine is shared, so the
contenders are interleaved query by query (the order rotates each query), every one of them sees the same load,
and the figures are medians over repeats plus per-query paired ratios. Prints a table; writes
benchmarks/results/rerank_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_VENV = HERE / ".venv-peers"
PEER_REQUIREMENTS = ("flashrank==0.2.10", "sentence-transformers>=3")
RESULTS = HERE / "results" / "rerank_throughput.json"
DATASET = "trec-dl-2020"
FLASHRANK_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@dataclass
class Contender:
    name: str
    spec: dict
    python: str
    baseline: str | None = None  # the FlashRank contender on the same graph, for the ratio
    precision: str = "fp32"
    seconds: list[list[float]] = field(default_factory=list)  # [repeat][query]
    scores: list[list[float]] = field(default_factory=list)
    load_seconds: float = 0.0
    peak_rss_mb: float = 0.0


def setup_peers() -> str:
    """Create benchmarks/.venv-peers with FlashRank and sentence-transformers; return its python.

    The venv sees the dev venv's site-packages through a .pth file, so torch and onnxruntime are the very
    builds crossrank uses (a fair comparison); pip then installs whatever the peers need beyond those.
    """
    python = PEERS_VENV / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "_crossrank_dev_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
    return str(python)


def package_versions(python: str, packages: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
    return json.loads(subprocess.run([python, "-c", code, *packages], check=True, capture_output=True,
                                     text=True).stdout)


def default_model_dir() -> Path | None:
    from crossrank.model.checkpoint import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME

    bundled = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
    return bundled if (bundled / "config.json").is_file() else None


def minilm_cross_encoder(target: Path) -> Path:
    """all-MiniLM-L6-v2's body under a seeded, untrained one-logit head: the right size and shape for speed. Made
    once: a `target` that already holds it is returned as is."""
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import BertForSequenceClassification

    from crossrank.model.checkpoint import bi_encoder_path

    torch.manual_seed(0)
    source = bi_encoder_path()
    BertForSequenceClassification.from_pretrained(str(source), num_labels=1).save_pretrained(target)
    for name in FLASHRANK_FILES[1:]:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    return target


def load_queries(count: int | None, dataset_name: str = DATASET, depth: int = 100) -> tuple[list[dict], dict]:
    """[{qid, query, doc_ids, documents}] for `count` evenly spread judged test queries (all when None), and the
    qrels. Candidates: the shipped BM25 top-`depth` run where the set has one, else BM25 over its corpus (the
    evaluation's cached index); documents are whole (title + text), so long ones cost what they cost."""
    from crossrank.datasets import BeirDataset, ranked
    from crossrank.evaluate.corpus_index import corpus_index
    from crossrank.store.index import IndexConfig
    from crossrank.types import Query

    dataset = BeirDataset(dataset_name, "test")
    qids = sorted(qid for qid in dataset.qrels if qid in dataset.queries)
    if count is not None and count < len(qids):
        qids = [qids[i] for i in np.linspace(0, len(qids) - 1, count).round().astype(int)]
    texts = {qid: getattr(dataset.queries[qid], "text", dataset.queries[qid]) for qid in qids}
    if "bm25-top100" in dataset.runs:
        run = dataset.run("bm25-top100")
        candidates = {qid: ranked(run[qid])[:depth] for qid in qids}
    else:
        with corpus_index(dataset, IndexConfig(dense=False)) as index:
            hits = index.retrieve("bm25", [Query(texts[qid], qid) for qid in qids], depth * 4)
        candidates = {qid: list(dict.fromkeys(hit.doc_id for hit in found))[:depth]
                      for qid, found in zip(qids, hits, strict=True)}
    queries = [{"qid": qid, "query": texts[qid], "doc_ids": candidates[qid],
                "documents": [dataset.corpus[doc_id].content for doc_id in candidates[qid]]} for qid in qids]
    return queries, dataset.qrels


def flashrank_cache(model_dir: Path, onnx_files: dict[str, Path], root: Path) -> None:
    """Lay our exports out as FlashRank expects: <cache>/<name>/<file>.onnx beside the tokenizer files."""
    for name, onnx_file in onnx_files.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / onnx_file.name).symlink_to(onnx_file)
        for file in FLASHRANK_FILES:
            if (model_dir / file).is_file():
                shutil.copy(model_dir / file, folder / file)


def useful_flops(model_dir: Path, queries: list[dict]) -> float:
    """Forward-pass FLOPs of every pair at its own (unpadded) length: the work any contender must do."""
    from crossrank.model.cross_encoder import CrossEncoder

    config = json.loads((model_dir / "config.json").read_text())
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    encoder = CrossEncoder.from_pretrained(model_dir, backend="torch").pair_encoder
    total = 0.0
    for query in queries:
        rows, _ = encoder.encode([query["query"]] * len(query["documents"]), query["documents"])
        for row in rows:
            n = len(row)
            per_layer = 2 * n * (4 * hidden * hidden + 2 * hidden * inner) + 4 * n * n * hidden
            total += layers * per_layer + 2 * hidden * hidden
    return total


def start(contender: Contender) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(HERE)}
    return subprocess.Popen([contender.python, str(HERE / "rerank_worker.py"), json.dumps(contender.spec)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def ask(process: subprocess.Popen, request: dict) -> dict:
    process.stdin.write(json.dumps(request) + "\n")
    process.stdin.flush()
    return receive(process)


def receive(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {process.args[2][:80]} exited with {process.wait()}")
    return json.loads(line)


def measure(contenders: list[Contender], n_queries: int, repeats: int) -> None:
    """Interleave contenders query by query so load on the shared machine falls on all of them alike."""
    processes = {}
    for contender in contenders:  # loaded one at a time: loading is not what is measured
        processes[contender.name] = process = start(contender)
        contender.load_seconds = receive(process)["ready"]
        print(f"  loaded {contender.name} in {contender.load_seconds:.1f}s", file=sys.stderr, flush=True)
    for repeat in range(repeats):
        for contender in contenders:
            contender.seconds.append([])
        for q in range(n_queries):
            shift = (q + repeat) % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                answer = ask(processes[contender.name], {"query": q, "scores": repeat == 0})
                contender.seconds[repeat].append(answer["seconds"])
                if repeat == 0:
                    contender.scores.append(answer["scores"])
        print(f"  repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    for contender in contenders:
        contender.peak_rss_mb = ask(processes[contender.name], {"quit": True})["peak_rss_mb"]
        processes[contender.name].wait()


def kendall_tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def ndcg_at_10(queries: list[dict], scores: list[list[float]], qrels: dict) -> float:
    import ir_measures

    run = {query["qid"]: dict(zip(query["doc_ids"], map(float, query_scores), strict=True))
           for query, query_scores in zip(queries, scores, strict=True)}
    judged = {qid: qrels[qid] for qid in run if qid in qrels}
    return float(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], judged, run)[ir_measures.nDCG @ 10])


def summarise(contenders: list[Contender], queries: list[dict], flops: float, qrels: dict | None) -> dict:
    pairs = sum(len(query["documents"]) for query in queries)
    by_name = {contender.name: contender for contender in contenders}
    rows = {}
    for contender in contenders:
        times = np.asarray(contender.seconds)  # [repeat, query]
        rates = pairs / times.sum(axis=1)
        rows[contender.name] = {
            "precision": contender.precision,
            "pairs_per_s": float(np.median(rates)),
            "pairs_per_s_repeats": rates.round(2).tolist(),
            "p50_ms_per_query": float(np.percentile(times, 50) * 1e3),
            "p95_ms_per_query": float(np.percentile(times, 95) * 1e3),
            "peak_rss_mb": round(contender.peak_rss_mb, 1),
            "load_s": round(contender.load_seconds, 2),
        }
    for name, row in rows.items():
        contender = by_name[name]
        row["useful_gflops"] = round(flops / (pairs / row["pairs_per_s"]) / 1e9, 1)
        for reference in ("sentence-transformers", contender.baseline):
            if reference and reference in rows:
                row[f"x_{reference}"] = round(row["pairs_per_s"] / rows[reference]["pairs_per_s"], 2)
                paired = np.asarray(by_name[reference].seconds) / np.asarray(contender.seconds)
                row[f"x_{reference}_paired_median"] = round(float(np.median(paired)), 2)
    agreement = {}
    fp32, int8 = by_name.get("crossrank-onnx-fp32"), by_name.get("crossrank-onnx-int8")
    if fp32 and int8:
        taus = [kendall_tau(a, b) for a, b in zip(fp32.scores, int8.scores, strict=True)]
        agreement["kendall_tau_int8_vs_fp32_mean"] = round(float(np.mean(taus)), 4)
        agreement["kendall_tau_int8_vs_fp32_min"] = round(float(np.min(taus)), 4)
        agreement["max_abs_score_diff_int8_vs_fp32"] = float(
            max(np.abs(np.subtract(a, b)).max() for a, b in zip(fp32.scores, int8.scores, strict=True)))
        if qrels is not None:
            for contender in (fp32, int8):
                agreement[f"ndcg@10_{contender.name}"] = round(ndcg_at_10(queries, contender.scores, qrels), 4)
    return {"contenders": rows, "agreement": agreement, "pairs": pairs,
            "useful_gflop_per_pass": round(flops / 1e9, 1)}


def print_table(summary: dict, command: str) -> None:
    print(f"\n$ {command}")
    print(f"{summary['pairs']} pairs/pass; useful work {summary['useful_gflop_per_pass']} GFLOP/pass")
    header = (f"{'contender':24} {'pairs/s':>8} {'repeats':>20} {'p50 ms':>8} {'p95 ms':>8} {'RSS MB':>7} "
              f"{'GFLOP/s':>8} {'x ST':>6} {'x FR':>6} {'x FR paired':>11}")
    print(header)
    print("-" * len(header))
    for name, row in summary["contenders"].items():
        fr = next((key for key in row if key.startswith("x_flashrank") and not key.endswith("paired_median")), None)
        print(f"{name:24} {row['pairs_per_s']:8.1f} {str(row['pairs_per_s_repeats']):>20} "
              f"{row['p50_ms_per_query']:8.0f} {row['p95_ms_per_query']:8.0f} {row['peak_rss_mb']:7.0f} "
              f"{row['useful_gflops']:8.1f} "
              f"{row.get('x_sentence-transformers', float('nan')):6.2f} "
              f"{row[fr] if fr else float('nan'):6.2f} {row[fr + '_paired_median'] if fr else float('nan'):11.2f}")
    for key, value in summary["agreement"].items():
        print(f"{key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 queries (400 pairs), 3 repeats")
    parser.add_argument("--queries", type=int, default=None, help="evenly spread subset of the 54 queries")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for every contender (default: each library's own default)")
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint (default: the bundled default model, else MiniLM + untrained head)")
    parser.add_argument("--also-batch-tokens", type=int, default=None, metavar="N",
                        help="add a crossrank-onnx-int8 contender with batch_tokens=N (the padding lever)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (medians of fewer are not medians)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python benchmarks/rerank_throughput.py " + " ".join(sys.argv[1:])
    count = 4 if args.quick else args.queries

    peers_python = setup_peers()
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        os.environ.setdefault("CROSSRANK_CACHE", str(scratch / "cache"))
        trained = args.model or default_model_dir()
        if trained:  # a snapshot, so a model being retrained meanwhile cannot change under the contenders
            model_dir = Path(shutil.copytree(trained, scratch / "model"))
        else:
            model_dir = minilm_cross_encoder(scratch / "minilm-ce")
        queries, qrels = load_queries(count)
        (scratch / "pairs.json").write_text(json.dumps(queries))

        from crossrank.model.checkpoint import Checkpoint
        from crossrank.model.export import export_dir, onnx_model_path

        checkpoint = Checkpoint.open(model_dir)
        onnx_files = {f"crossrank-{q or 'fp32'}": onnx_model_path(checkpoint, "classification", q)
                      for q in (None, "int8")}
        flashrank_cache(model_dir, onnx_files, scratch / "flashrank")
        common = {"pairs_file": str(scratch / "pairs.json"), "threads": args.threads}
        crossrank = {"kind": "crossrank", "model": str(model_dir)}
        flashrank = {"kind": "flashrank", "cache_dir": str(scratch / "flashrank")}
        contenders = [
            Contender("sentence-transformers", common | {"kind": "sentence-transformers", "model": str(model_dir)},
                      peers_python),
            Contender("flashrank-fp32", common | flashrank | {"name": "crossrank-fp32", "file": "model.onnx"},
                      peers_python),
            Contender("flashrank-int8", common | flashrank | {"name": "crossrank-int8", "file": "model.int8.onnx"},
                      peers_python, precision="int8"),
            Contender("crossrank-torch", common | crossrank | {"backend": "torch"}, sys.executable),
            Contender("crossrank-onnx-fp32", common | crossrank | {"backend": "onnx"}, sys.executable,
                      baseline="flashrank-fp32"),
            Contender("crossrank-onnx-int8", common | crossrank | {"backend": "onnx", "quantize": "int8"},
                      sys.executable, baseline="flashrank-int8", precision="int8"),
        ]
        if args.also_batch_tokens:
            contenders.append(Contender(
                f"crossrank-onnx-int8-bt{args.also_batch_tokens}",
                common | crossrank | {"backend": "onnx", "quantize": "int8", "batch_tokens": args.also_batch_tokens},
                sys.executable, baseline="flashrank-int8", precision="int8"))
        flops = useful_flops(model_dir, queries)
        load_before = os.getloadavg()
        started = time.time()
        measure(contenders, len(queries), args.repeats)
        summary = summarise(contenders, queries, flops, qrels if trained else None)
        summary |= {
            "command": command,
            "model": str(trained) if trained else "all-MiniLM-L6-v2 body + untrained 1-logit head (seed 0)",
            "export": json.loads((export_dir(checkpoint, "classification") / "manifest.json").read_text()),
            "dataset": f"{DATASET} test, bm25-top100, {len(queries)} queries",
            "repeats": args.repeats,
            "threads": args.threads or "library defaults",
            "wall_s": round(time.time() - started, 1),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                        "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "versions": package_versions(peers_python, ["flashrank", "sentence-transformers", "torch",
                                                        "onnxruntime", "transformers"]),
            "noise": "shared machine: contenders interleaved query by query; see pairs_per_s_repeats and the "
                     "paired (per-query) ratios",
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    print_table(summary, command)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
