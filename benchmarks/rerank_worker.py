"""One benchmark contender in its own process, driven by `rerank_throughput.py` over stdin/stdout JSON lines.

Own process so that peak RSS is the contender's own and so that peers run from their own venv
(`benchmarks/.venv-peers`). Protocol: the worker loads, warms up on query 0 and answers
{"ready": load_seconds}; each {"query": i} is answered with {"seconds": elapsed, "scores": [...]} (scores in
candidate order; larger = more relevant); {"quit": true} is answered with {"peak_rss_mb": ...}.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Scorer = Callable[[str, list[str]], np.ndarray]


def crossrank_scorer(spec: dict) -> Scorer:
    from crossrank.model.cross_encoder import CrossEncoder

    options = {name: spec[name] for name in ("batch_tokens", "max_length") if spec.get(name)}
    if "factorise" in spec:  # False: the joint graph even where the model factorises
        options["factorise"] = spec["factorise"]
    if spec.get("compile") is False:  # bf16 eager, as before the graph was compiled ahead of time for the CPU
        from crossrank.model.backends.compiled import ENVIRONMENT_SWITCH

        os.environ[ENVIRONMENT_SWITCH] = "0"
    model = CrossEncoder.from_pretrained(spec["model"], backend=spec["backend"], quantize=spec.get("quantize"),
                                         threads=spec.get("threads"), **options)
    if spec.get("stored_segments"):  # as `crossrank index` does: every document's windows encoded before any query
        store_segments(model, spec)

    def score(query: str, documents: list[str]) -> np.ndarray:
        scores = np.empty(len(documents), dtype=np.float32)
        for result in model.rank(query, documents, return_documents=False):
            scores[result.index] = result.score
        return scores

    return score


def store_segments(model: object, spec: dict) -> None:
    """Encode every distinct candidate's windows into a segment store (untimed: index-time work, reported on
    stderr) and have the model read it."""
    import tempfile

    from crossrank.model.segment_store import write_segment_store

    queries = json.loads(Path(spec["pairs_file"]).read_text(encoding="utf-8"))
    documents = list(dict.fromkeys(document for query in queries for document in query["documents"]))
    started = time.perf_counter()
    store, encoded = write_segment_store(model, [documents], Path(tempfile.mkdtemp(prefix="segments-")) / "store")
    seconds = time.perf_counter() - started
    print(f"  stored {encoded} window vectors of {len(documents)} documents in {seconds:.1f}s "
          f"({len(documents) / seconds:.0f} documents/s, index-time work)", file=sys.stderr, flush=True)
    model.use_segment_store("benchmark", store)


def sentence_transformers_scorer(spec: dict) -> Scorer:
    import torch
    from sentence_transformers import CrossEncoder

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    # torch fp32 like every other contender (a checkpoint saved in fp16 would otherwise load as fp16).
    model = CrossEncoder(spec["model"], device="cpu", local_files_only=True, model_kwargs={"dtype": torch.float32})

    def score(query: str, documents: list[str]) -> np.ndarray:
        return np.asarray(model.predict([(query, document) for document in documents], batch_size=32))

    return score


def flashrank_scorer(spec: dict) -> Scorer:
    import flashrank.Config
    from flashrank import Ranker, RerankRequest

    # FlashRank only opens models it knows by name; register ours (the dict Ranker reads is this one).
    flashrank.Config.model_file_map[spec["name"]] = spec["file"]
    ranker = Ranker(model_name=spec["name"], cache_dir=spec["cache_dir"], log_level="WARNING")

    def score(query: str, documents: list[str]) -> np.ndarray:
        passages = [{"id": i, "text": document} for i, document in enumerate(documents)]
        scores = np.empty(len(documents), dtype=np.float32)
        for passage in ranker.rerank(RerankRequest(query=query, passages=passages)):
            scores[passage["id"]] = passage["score"]
        return scores

    return score


def main() -> None:
    reply = protocol_channel()
    spec = json.loads(sys.argv[1])
    queries = json.loads(Path(spec["pairs_file"]).read_text(encoding="utf-8"))
    started = time.perf_counter()
    scorer = {"crossrank": crossrank_scorer, "sentence-transformers": sentence_transformers_scorer,
              "flashrank": flashrank_scorer}[spec["kind"]](spec)
    scorer(queries[0]["query"], queries[0]["documents"])  # warm-up: first-run allocations are not throughput
    reply({"ready": time.perf_counter() - started})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        query = queries[request["query"]]
        start = time.perf_counter()
        scores = scorer(query["query"], query["documents"])
        elapsed = time.perf_counter() - start
        reply({"seconds": elapsed, "scores": scores.astype(float).tolist() if request.get("scores") else None})
    reply({"peak_rss_mb": peak_rss_mb()})


def peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM); ru_maxrss would include the parent's RSS at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def protocol_channel() -> Callable[[dict], None]:
    """Keep the real stdout for protocol messages; whatever a library prints goes to stderr instead."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    return reply


if __name__ == "__main__":
    main()
