"""Offline reranking of a large JSONL file with Ray Data: lines stream through `map_batches` into a pool of
actors that each hold one CrossEncoder and call `rank_many` (the engine batches pairs across queries).

Input, one JSON object a line: {"id"?: ..., "query": str, "documents": [str | {"text", "title"?, "id"?}]}.
Output, same order: {"id", "query", "results": [{"index", "id"?, "score", "relevance_score"}]}, best first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class RerankActor:
    """Holds one model per actor process; scores a batch of input lines."""

    def __init__(self, model: str | None, backend: str, threads: int | None, top_k: int | None) -> None:
        from crossrank.model.cross_encoder import CrossEncoder

        self.encoder = CrossEncoder.from_pretrained(model, backend=backend, threads=threads)  # type: ignore[arg-type]
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [parse_record(line) for line in batch["text"]]
        rankings = self.encoder.rank_many([r["query"] for r in records], [r["documents"] for r in records],
                                          top_k=self.top_k, return_documents=False)
        out = []
        for record, ranking in zip(records, rankings, strict=True):
            results = []
            for result in ranking:
                document = record["documents"][result.index]
                item: dict[str, Any] = {"index": result.index, "score": result.score,
                                        "relevance_score": result.probability}
                if isinstance(document, dict) and document.get("id") is not None:
                    item["id"] = document["id"]
                results.append(item)
            out.append(json.dumps({"id": record.get("id"), "query": record["query"], "results": results},
                                  ensure_ascii=False))
        return {"line": np.array(out, dtype=object)}


def parse_record(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON line ({exc.msg}): {line[:80]!r}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("query"), str) or not isinstance(
            record.get("documents"), list):
        raise ValueError(f"each line needs a string 'query' and a 'documents' list: {line[:80]!r}")
    return record


def rerank_file(source: Path, target: Path, *, model: str | None, actors: int = 1, batch_size: int = 16,
                top_k: int | None = None, backend: str = "auto", threads: int | None = None,
                cpus_per_actor: float = 1.0) -> int:
    """Score `source` into `target` (JSONL, input order) on the current Ray cluster; return the record count."""
    import ray

    if not source.is_file():
        raise ValueError(f"no such file: {source}")
    if actors <= 0 or batch_size <= 0:
        raise ValueError("actors and batch_size must be positive")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    dataset = ray.data.read_text(str(source.resolve()), drop_empty_lines=True).map_batches(
        RerankActor, batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"model": model, "backend": backend, "threads": threads, "top_k": top_k},
    )
    count = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for batch in dataset.iter_batches(batch_format="numpy", batch_size=256):
            for line in batch["line"]:
                out.write(f"{line}\n")
                count += 1
    return count
