"""Load test: crossrank's server vs infinity-emb vs a plain FastAPI + sentence-transformers endpoint, same
checkpoint (the bundled model by default: crossrank serves it as `crossrank serve` does, the peers load the
plain BERT of the same shape inside it), same requests, loopback only.

    python benchmarks/server_load.py            # sets up benchmarks/.venv-infinity if missing, then measures

Requests are TREC DL 2020 queries with their BM25 top-20 / top-100 passages (../shared; a synthetic pool if it is
absent). For every (clients, docs per request) cell, each contender gets one time-boxed run per repeat, in
rotating order, interleaved so that the shared machine's noise hits all of them alike; the table reports medians
over repeats and crossrank's ratios to infinity. JSON goes to benchmarks/results/server_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel
from rerank_throughput import default_model_dir, minilm_cross_encoder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
INFINITY_VENV = HERE / ".venv-infinity"
WORK = HERE / "work"
RESULTS = HERE / "results"


def setup_infinity() -> float:
    """The recipe that works here: torch 2.13 + infinity-emb[all], minus the torchvision it pulls in."""
    start = time.time()
    if not (INFINITY_VENV / "bin" / "infinity_emb").exists():
        subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
        pip = str(INFINITY_VENV / "bin" / "pip")
        subprocess.run([pip, "install", "-q", "torch==2.13.0", "infinity-emb[all]"], check=True)
        subprocess.run([pip, "uninstall", "-y", "torchvision"], check=True)
    return time.time() - start


def request_pool(docs: int, count: int, seed: int = 0) -> list[dict]:
    """(query, top-`docs` BM25 passages) from TREC DL 2020, or synthetic passages if ../shared is absent."""
    root = Path(os.environ.get("CROSSRANK_DATASETS", REPO.parent / "shared" / "datasets")) / "trec-dl-2020"
    rng = random.Random(seed)
    if root.is_dir():
        corpus = {}
        with (root / "corpus.jsonl").open() as f:
            for line in f:
                record = json.loads(line)
                corpus[record["_id"]] = (record.get("title", "") + " " + record["text"]).strip()
        queries = {}
        with (root / "queries.jsonl").open() as f:
            for line in f:
                record = json.loads(line)
                queries[record["_id"]] = record["text"]
        runs: dict[str, list[str]] = {}
        for line in (root / "runs" / "bm25-top100.trec").read_text().splitlines():
            qid, _, docid, *_ = line.split()
            runs.setdefault(qid, []).append(docid)
        pool = [{"query": queries[q], "documents": [corpus[d] for d in ids[:docs]]}
                for q, ids in runs.items() if q in queries and len(ids) >= docs]
    else:
        words = "search ranking neural model query passage document relevance score river city music".split()
        pool = [{"query": " ".join(rng.choices(words, k=6)),
                 "documents": [" ".join(rng.choices(words, k=60)) for _ in range(docs)]} for _ in range(50)]
    return [pool[i % len(pool)] for i in rng.sample(range(max(count, len(pool))), count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Contender:
    name: str
    command: list[str]
    path: str
    env: dict[str, str]
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> None:
        log = (WORK / f"{self.name}.log").open("w")
        self.process = subprocess.Popen(self.command, env={**os.environ, **self.env, "HF_HUB_OFFLINE": "1"},
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, probe: dict, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {WORK / (self.name + '.log')}")
            try:
                if httpx.post(self.url, json=probe, timeout=60).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def plain_copy(model: Path, target: Path) -> Path:
    """The checkpoint as the peers can load it: infinity picks reranking only for a config that names a
    sequence-classification architecture, which a gated checkpoint's does not (same weights, same shape)."""
    config = json.loads((model / "config.json").read_text())
    if config.get("architectures"):
        return model
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model, target)
    config["architectures"] = ["BertForSequenceClassification"]
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def contenders(model: Path, which: list[str]) -> list[Contender]:
    python = sys.executable
    peer_model = plain_copy(model, WORK / "peer-model")
    all_ = {
        # A generous timeout: under this benchmark's overload crossrank's default 60 s would shed requests
        # (503 + Retry-After) where the peers, which have no timeout, just keep them waiting. No score or segment
        # cache: the load cycles a finite pool of requests, and answering its repeats from memory would time the
        # cache.
        **{name: Contender(name, [python, "-c", "from crossrank.cli import main; main()", "serve", "--model",
                                   str(model), "--log-level", "warning", "--timeout", "900", "--score-cache", "0",
                                   "--segment-cache", "0", *flags], "/v1/rerank", env)
           for name, flags, env in (("crossrank", [], {}), ("crossrank-fp32", ["--backend", "onnx"], {}),
                                    ("crossrank-int8", ["--int8"], {}), ("crossrank-bf16", ["--bf16"], {}),
                                    # the engine's batch budget: 4096 tokens in bf16 against half of it
                                    ("crossrank-2048", ["--engine-batch-tokens", "2048"], {}),
                                    # the default before bf16 was compiled for the CPU: the same server, eager
                                    ("crossrank-eager", [], {"CROSSRANK_COMPILE": "0"}))},
        "infinity": Contender("infinity", [str(INFINITY_VENV / "bin" / "infinity_emb"), "v2", "--model-id",
                                           str(peer_model), "--engine", "torch", "--device", "cpu", "--dtype",
                                           "float32", "--host",
                                           "127.0.0.1"], "/rerank",
                              {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}),
        "st-fastapi": Contender("st-fastapi", [python, str(Path(__file__).resolve()), "--serve-plain",
                                               str(peer_model)], "/rerank", {}),
    }
    chosen = [all_[name] for name in which]
    for contender in chosen:
        contender.port = free_port()
        contender.command += ["--port", str(contender.port)]
    return chosen


async def load(url: str, requests: list[dict], clients: int, seconds: float) -> dict:
    """`clients` closed-loop clients for `seconds`; requests still in flight at the end are awaited and counted."""
    latencies: list[float] = []
    pairs = 0
    errors = 0
    cursor = 0
    stop_at = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal pairs, errors, cursor
        while time.perf_counter() < stop_at:
            body = requests[cursor % len(requests)]
            cursor += 1
            start = time.perf_counter()
            response = await http.post(url, json=body)
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            pairs += len(body["documents"])

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"requests": len(latencies), "errors": errors, "seconds": elapsed, "rps": len(latencies) / elapsed,
            "pairs_per_s": pairs / elapsed, "p50_ms": 1000 * quantile(0.5), "p99_ms": 1000 * quantile(0.99)}


class PlainRequest(BaseModel):
    query: str
    documents: list[str]


def serve_plain(model: str, port: int) -> None:
    """The baseline most people write: FastAPI calling sentence-transformers' CrossEncoder.predict per request."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import CrossEncoder

    # fp32 like every contender (the bundled checkpoint is stored in float16)
    encoder = CrossEncoder(model, device="cpu", local_files_only=True, model_kwargs={"dtype": torch.float32})
    app = FastAPI()

    @app.post("/rerank")
    def rerank(body: PlainRequest) -> dict:
        scores = encoder.predict([(body.query, d) for d in body.documents])
        order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
        return {"results": [{"index": i, "relevance_score": float(scores[i])} for i in order]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        help="checkpoint dir (default: the bundled model, as `crossrank serve` runs it; the peers load "
                             "the plain BERT of the same shape inside it)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--docs", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="time box per run (in-flight requests finish)")
    parser.add_argument("--max-inflight-pairs", type=int, default=1000,
                        help="skip cells with clients x docs above this (2 shared cores cannot drain more in time)")
    parser.add_argument("--contenders", nargs="+",
                        default=["crossrank", "crossrank-fp32", "crossrank-int8", "infinity", "st-fastapi"],
                        help="crossrank is `crossrank serve` as it starts with no flags (--backend auto: torch bf16 on "
                             "a CPU with AMX, else ONNX fp32); crossrank-fp32 is --backend onnx")
    parser.add_argument("--summarize", action="store_true", help="reprint the table from the last results JSON")
    parser.add_argument("--serve-plain", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plain:
        serve_plain(args.serve_plain, args.port)
        return
    if args.summarize:
        runs = json.loads((RESULTS / "server_load.json").read_text())["runs"]
        names = list(dict.fromkeys(r["contender"] for r in runs))
        print_table(summarize(runs, names, sorted({r["docs"] for r in runs}), sorted({r["clients"] for r in runs})))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` stops the servers
    WORK.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    setup_seconds = setup_infinity() if "infinity" in args.contenders else 0.0
    model = args.model or default_model_dir() or minilm_cross_encoder(WORK / "minilm-ce")
    pools = {docs: request_pool(docs, 200, seed=docs) for docs in args.docs}
    servers = contenders(model, args.contenders)
    runs: list[dict] = []
    table: list[dict] = []
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(pools[min(args.docs)][0])
            asyncio.run(load(server.url, pools[min(args.docs)], 2, 3))  # warm up
        for repeat in range(args.repeats):
            for docs in args.docs:
                for clients in args.clients:
                    if clients * docs > args.max_inflight_pairs:
                        continue
                    order = servers[repeat % len(servers):] + servers[: repeat % len(servers)]
                    for server in order:
                        result = asyncio.run(load(server.url, pools[docs], clients, args.seconds))
                        result.update(contender=server.name, docs=docs, clients=clients, repeat=repeat)
                        runs.append(result)
                        print(json.dumps(result), flush=True)
                        table = write_results(runs, servers, args, model, setup_seconds)
    finally:
        for server in servers:
            server.stop()
    print_table(table)


def write_results(runs: list[dict], servers: list[Contender], args: argparse.Namespace, model: Path,
                  setup_seconds: float) -> list[dict]:
    """Rewritten after every run, so an interrupted benchmark still leaves its completed cells."""
    table = summarize(runs, [s.name for s in servers], args.docs, args.clients)
    meta = {"command": " ".join(sys.argv), "model": str(model), "infinity_setup_s": round(setup_seconds, 1),
            "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "repeats": args.repeats, "seconds": args.seconds}
    (RESULTS / "server_load.json").write_text(json.dumps({"meta": meta, "summary": table, "runs": runs}, indent=2))
    return table


def summarize(runs: list[dict], names: list[str], docs_list: list[int], clients_list: list[int]) -> list[dict]:
    table = []
    for docs in docs_list:
        for clients in clients_list:
            cells = {name: [r for r in runs if (r["contender"], r["docs"], r["clients"]) == (name, docs, clients)]
                     for name in names}
            if not all(cells.values()):
                continue
            row: dict = {"docs": docs, "clients": clients}
            for name, cell in cells.items():
                for key in ("rps", "pairs_per_s", "p50_ms", "p99_ms"):
                    row[f"{name}.{key}"] = statistics.median(r[key] for r in cell)
                row[f"{name}.errors"] = sum(r["errors"] for r in cell)
            for name in names:
                if name.startswith("crossrank") and "infinity" in names:
                    row[f"{name}.throughput_x_infinity"] = row[f"{name}.pairs_per_s"] / row["infinity.pairs_per_s"]
                    row[f"{name}.p99_x_infinity"] = row[f"{name}.p99_ms"] / row["infinity.p99_ms"]
            table.append(row)
    return table


def print_table(table: list[dict]) -> None:
    """One line per (docs, clients, contender): medians, and crossrank's ratios to infinity."""
    print(f"\n{'docs':>4} {'clients':>7} {'contender':<15} {'req/s':>7} {'pairs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'thr x inf':>9} {'p99 x inf':>9}")
    for row in table:
        names = [key[: -len(".rps")] for key in row if key.endswith(".rps")]
        for name in names:
            ratio = (f"{row[name + '.throughput_x_infinity']:>9.2f} {row[name + '.p99_x_infinity']:>9.2f}"
                     if name + ".throughput_x_infinity" in row else "")
            print(f"{row['docs']:>4} {row['clients']:>7} {name:<15} {row[name + '.rps']:>7.2f} "
                  f"{row[name + '.pairs_per_s']:>8.1f} {row[name + '.p50_ms']:>8.0f} {row[name + '.p99_ms']:>8.0f} "
                  f"{ratio}")


if __name__ == "__main__":
    main()
