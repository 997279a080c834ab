"""The evaluation's cached corpus index: built once even when several processes ask for it at the same moment."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from crossrank.datasets import BeirDataset
from crossrank.evaluate import corpus_index as module
from crossrank.evaluate.corpus_index import COMPLETE, corpus_index, index_path
from crossrank.store.index import Index, IndexConfig

BM25_ONLY = IndexConfig(dense=False)


@pytest.fixture()
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BeirDataset:
    monkeypatch.setenv("CROSSRANK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "toy"
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as handle:
        for i in range(30):
            handle.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i} about topic {i % 3}"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "topic 1"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\n")
    return BeirDataset(root, "test")


def test_builders_asking_at_once_build_one_complete_index(dataset: BeirDataset,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    builds, create = [], Index.create

    def counting_create(path, config=None):
        builds.append(path)
        return create(path, config)

    monkeypatch.setattr(module.Index, "create", counting_create)
    counts, errors = [], []

    def ask() -> None:
        try:
            with corpus_index(dataset, BM25_ONLY, progress=False) as index:
                counts.append(index.count()["documents"])
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and counts == [30, 30, 30]
    assert len(builds) == 1  # the others waited for it and opened the finished index
    path = index_path(dataset, BM25_ONLY)
    assert (path / COMPLETE).is_file() and not path.with_name(f".{path.name}.building").exists()


def test_a_killed_build_is_neither_used_nor_kept(dataset: BeirDataset) -> None:
    path = index_path(dataset, BM25_ONLY)
    building = path.with_name(f".{path.name}.building")
    with Index.create(building, BM25_ONLY) as index:  # what a build killed before its commit leaves
        index.add(list(dataset.corpus.values())[:3])
    with corpus_index(dataset, BM25_ONLY, progress=False) as index:
        assert index.count()["documents"] == 30
    assert not building.exists()
