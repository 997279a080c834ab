"""The full-retrieval index of a BEIR corpus: built once with the store's own Index (BM25 + dense passages) and
cached under the cache dir, keyed by the corpus file's content hash, so a changed corpus gets a new index."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from crossrank.datasets import BeirDataset
from crossrank.file_lock import exclusive_lock
from crossrank.model.checkpoint import cache_dir
from crossrank.store.index import Index, IndexConfig

COMPLETE = "crossrank-eval-complete.json"  # written after the last commit: an index without it is rebuilt


def corpus_key(dataset: BeirDataset) -> str:
    digest = hashlib.sha256()
    with (dataset.path / "corpus.jsonl").open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def index_path(dataset: BeirDataset, config: IndexConfig) -> Path:
    config_key = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:8]
    return cache_dir() / "eval-indexes" / f"{dataset.name}-{corpus_key(dataset)}-{config_key}"


def corpus_index(dataset: BeirDataset, config: IndexConfig | None = None, *, progress: bool = True) -> Index:
    """Open the cached index of the dataset's corpus, building it first if there is none.

    The build runs under a lock in a hidden sibling folder renamed into place when complete: a second process asking
    for the same index (two evaluations started together) waits for the first build instead of racing it — racing
    builders deleted each other's folders and marked a near-empty index complete — and a killed build leaves nothing
    that looks complete."""
    config = config or IndexConfig()
    path = index_path(dataset, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(f".{path.name}.lock")):
        if not (path / COMPLETE).is_file():
            building = path.with_name(f".{path.name}.building")
            for leftover in (building, path):  # a killed build; an entry from before the completeness marker
                if leftover.exists():
                    shutil.rmtree(leftover)
            with Index.create(building, config) as index:
                index.add(dataset.corpus.values())
                index.commit(show_progress=progress)
            (building / COMPLETE).write_text(json.dumps({"dataset": dataset.name, "documents": len(dataset.corpus)}))
            building.rename(path)
    return Index.open(path)
