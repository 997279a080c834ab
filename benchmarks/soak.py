"""Soak: 16 clients mix rerank, search, add, update and delete against one `crossrank serve` on loopback for a
fixed time, with a kill -9 and a restart half-way; then an audit of the index against every acknowledged write.

    python benchmarks/soak.py                   # 10 minutes, the bundled default model
    python benchmarks/soak.py --minutes 2       # a shorter run

Each client owns its document ids, so the expected final state is known exactly: an id's last acknowledged
operation decides it, except that an operation whose answer never arrived (the kill) may or may not have
happened — both outcomes are accepted for that id, nothing else. The server's RSS and open file descriptors are
sampled every second. Prints a table, writes benchmarks/results/soak.json and soak.png (RSS and fds over time).
Bounded: loopback only, a fixed number of clients, requests of at most 40 documents.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORDS = ("owl hawk river bridge tensor ranking engine coffee market glacier violin harbor circuit meadow "
         "lantern quartz orbit falcon canyon ember maple signal thunder velvet").split()
OPERATIONS = {"rerank": 0.35, "search": 0.25, "add": 0.15, "update": 0.15, "delete": 0.10}


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass
class Ledger:
    """What a client was told: per id, the states the index may hold (one, unless an answer was lost)."""

    allowed: dict[str, set[str | None]] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)  # ids whose last acknowledged state is a document

    def acknowledged(self, doc_id: str, state: str | None) -> None:
        self.allowed[doc_id] = {state}
        if state is None:
            self.live = [d for d in self.live if d != doc_id]
        elif doc_id not in self.live:
            self.live.append(doc_id)

    def unknown(self, doc_id: str, state: str | None) -> None:
        """The request may or may not have been applied (no answer arrived)."""
        self.allowed[doc_id] = self.allowed.get(doc_id, {None}) | {state}


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, status: str, seconds: float) -> None:
        with self.lock:
            self.statuses[(op, status)] += 1
            if status.startswith("2"):
                self.latencies[op].append(seconds)


class Server:
    def __init__(self, root: Path, model: str | None, port: int, log: Path) -> None:
        self.root, self.model, self.port, self.log = root, model, port, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-c", "from crossrank.cli import main; main()", "serve", "--port", str(self.port),
                   "--index-root", str(self.root), "--timeout", "30"]
        if self.model:
            command += ["--model", self.model]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log.open("a"),
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"server did not become ready; see {self.log}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)

    def sample(self) -> tuple[float, int] | None:
        """(RSS MiB, open fds) of the server process."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
            return rss / 1024, len(os.listdir(f"/proc/{self.process.pid}/fd"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            return None


def client_loop(number: int, server: Server, stop: threading.Event, ledger: Ledger, stats: Stats) -> None:
    rng = random.Random(number)
    operations, weights = zip(*OPERATIONS.items(), strict=True)
    counter = 0
    with httpx.Client(base_url=server.url, timeout=60) as http:
        while not stop.is_set():
            op = rng.choices(operations, weights)[0]
            if op in ("update", "delete") and not ledger.live:
                op = "add"
            doc_id, state, request = None, None, None
            if op == "rerank":
                docs = [sentence(rng, rng.randint(5, 60)) for _ in range(rng.randint(5, 40))]
                request = ("POST", "/v1/rerank", {"query": sentence(rng, 4), "documents": docs})
            elif op == "search":
                request = ("POST", "/search", {"index": "soak", "query": sentence(rng, 3), "rerank_k": 20, "k": 5})
            elif op == "add":
                counter += 1
                doc_id, state = f"c{number}-{counter}", f"v{counter} {sentence(rng)}"
                request = ("POST", "/indexes/soak/documents", {"documents": [{"id": doc_id, "text": state}]})
            elif op == "update":
                counter += 1
                doc_id, state = rng.choice(ledger.live), f"v{counter} {sentence(rng)}"
                request = ("PUT", f"/indexes/soak/documents/{doc_id}", {"text": state})
            else:
                doc_id = rng.choice(ledger.live)
                request = ("DELETE", f"/indexes/soak/documents/{doc_id}", None)
            method, path, body = request
            start = time.perf_counter()
            try:
                response = http.request(method, path, json=body)
                status = str(response.status_code)
            except httpx.ConnectError:
                status = "refused"  # never reached a server (it was restarting): certainly not applied
            except httpx.TransportError:
                status = "connection"  # sent, answer lost: may or may not have been applied
            elapsed = time.perf_counter() - start
            stats.record(op, status, elapsed)
            if doc_id is not None:
                if status == "200":
                    ledger.acknowledged(doc_id, state)
                elif status == "connection" or status.startswith("5"):
                    ledger.unknown(doc_id, state)
            if status in ("refused", "connection", "503"):
                time.sleep(0.2)  # the server is restarting or shedding load: back off like a real client


def audit(index_path: Path, ledgers: list[Ledger]) -> dict[str, int]:
    from crossrank.store import Index

    with Index.open(index_path) as index:
        rows = index.db.execute("SELECT doc_id, text FROM passages WHERE deleted IS NULL AND position = 0").fetchall()
    live = dict(rows)
    result = Counter()
    for ledger in ledgers:
        for doc_id, allowed in ledger.allowed.items():
            actual = live.pop(doc_id, None)
            if actual in allowed:
                result["as acknowledged" if len(allowed) == 1 else "lost answer, either state"] += 1
            elif actual is None:
                result["LOST (acknowledged write missing)"] += 1
            elif None in allowed and len(allowed) == 1:
                result["RESURRECTED (acknowledged delete undone)"] += 1
            else:
                result["WRONG VERSION"] += 1
    result["UNEXPECTED (never written)"] += len(live)
    return dict(result)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plot(samples: list[tuple[float, float, int]], kill_at: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, rss, fds = zip(*samples, strict=True)
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    top.plot(t, rss)
    top.set_ylabel("server RSS (MiB)")
    bottom.plot(t, fds, color="tab:orange")
    bottom.set_ylabel("open fds")
    bottom.set_xlabel("seconds")
    for axis in (top, bottom):
        axis.axvline(kill_at, color="red", linestyle="--", label="kill -9 + restart")
    top.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crossrank-soak-"))
    server = Server(work / "indexes", args.model, free_port(), work / "server.log")
    server.start()
    assert httpx.put(f"{server.url}/indexes/soak", json={"dense": True}, timeout=60).status_code == 201
    ledgers = [Ledger() for _ in range(args.clients)]
    stats, stop = Stats(), threading.Event()
    clients = [threading.Thread(target=client_loop, args=(i, server, stop, ledgers[i], stats))
               for i in range(args.clients)]
    samples: list[tuple[float, float, int]] = []
    begin = time.time()
    for thread in clients:
        thread.start()
    duration, killed_at, restart_seconds = args.minutes * 60, None, None
    while (elapsed := time.time() - begin) < duration:
        if killed_at is None and elapsed >= duration / 2:
            killed_at = elapsed
            server.kill()
            restart = time.time()
            server.start()
            restart_seconds = time.time() - restart
        if (sample := server.sample()) is not None:
            samples.append((round(elapsed, 1), *sample))
        time.sleep(1.0)
    stop.set()
    for thread in clients:
        thread.join(120)
    server.stop()
    result = audit(work / "indexes" / "soak", ledgers)

    RESULTS.mkdir(exist_ok=True)
    rows = []
    for op in OPERATIONS:
        latencies = sorted(stats.latencies[op])
        statuses = {status: n for (name, status), n in stats.statuses.items() if name == op}
        rows.append({"operation": op, "requests": sum(statuses.values()), "statuses": statuses,
                     "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
                     "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None})
    before = [s for s in samples if s[0] < (killed_at or duration)]
    after = [s for s in samples if s[0] > (killed_at or duration) + (restart_seconds or 0) + 5]

    def span(part: list[tuple[float, float, int]]) -> dict[str, float]:
        return {"rss_mib_first": part[0][1], "rss_mib_last": part[-1][1], "rss_mib_max": max(p[1] for p in part),
                "fds_first": part[0][2], "fds_last": part[-1][2], "fds_max": max(p[2] for p in part)} if part else {}

    report = {"command": " ".join(["python", "benchmarks/soak.py", *sys.argv[1:]]), "minutes": args.minutes,
              "clients": args.clients, "killed_at_s": killed_at, "restart_s": restart_seconds, "operations": rows,
              "resources_before_kill": span(before), "resources_after_restart": span(after), "audit": result,
              "samples": samples}
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=1))
    plot(samples, killed_at or 0, RESULTS / "soak.png")

    print(f"soak: {args.clients} clients, {args.minutes:g} min, kill -9 at {killed_at:.0f}s, "
          f"restart {restart_seconds:.1f}s")
    print(f"{'operation':<10}{'requests':>10}  {'p50 ms':>8}{'p99 ms':>9}  statuses")
    for row in rows:
        print(f"{row['operation']:<10}{row['requests']:>10}  {row['p50_ms'] or '-':>8}{row['p99_ms'] or '-':>9}  "
              + ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items())))
    for name, part in (("before kill", span(before)), ("after restart", span(after))):
        print(f"{name}: " + ", ".join(f"{k} {v:.0f}" for k, v in part.items()))
    print("audit: " + ", ".join(f"{k}: {v}" for k, v in sorted(result.items())))
    print(f"-> {RESULTS / 'soak.json'}, {RESULTS / 'soak.png'}")


if __name__ == "__main__":
    main()
