"""Crash safety: a writer killed with SIGKILL mid-ingest leaves exactly the committed batches, with BM25 and
vectors in agreement; a BM25 index that missed a commit is replayed from the passage store; readers search
while the writer runs."""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from crossrank.store import Index, IndexConfig
from crossrank.types import Document, Query

BATCH = 40
WRITER = """
import json, sys
from crossrank.store import Index, IndexConfig
from crossrank.types import Document
path, config = sys.argv[1], IndexConfig(**json.loads(sys.argv[2]))
index = Index.open_or_create(path, config)
for batch in range(10_000):
    index.add([Document(f"batch {batch} item {i} mentions topic{batch} and shared words " * 3, id=f"b{batch}-{i}")
               for i in range(BATCH_SIZE)])
    if batch % 3 == 2:
        index.delete([f"b{batch - 2}-0"])  # deletes ride along in some commits
    generation = index.commit()
    print(json.dumps({"generation": generation, "passages": index.count()["passages"]}), flush=True)
"""


def check_consistent(index: Index) -> int:
    """BM25 and vectors hold exactly the live passages; returns their number."""
    live = index.count()["passages"]
    assert index.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(index.bm25) == live
    assert index.bm25.generation == index.generation
    assert index.dense is not None and len(index.dense) == live
    rows = {r for (r,) in index.db.execute("SELECT row FROM passages WHERE deleted IS NULL")}
    assert set(index.dense.rows.tolist()) == rows
    assert index.db.execute("SELECT COUNT(*) FROM passages WHERE deleted IS NULL AND vector IS NULL").fetchone()[0] == 0
    return live


def expected_passages(generation: int) -> int:
    """Batches 0..generation-1 of BATCH docs (one passage each), minus one per completed group of three."""
    return generation * BATCH - generation // 3


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_kill_minus_nine_mid_ingest_keeps_exactly_the_committed_batches(tmp_path: Path,
                                                                         tiny_index_config: IndexConfig,
                                                                         delay: float):
    path = tmp_path / "index"
    script = WRITER.replace("BATCH_SIZE", str(BATCH))
    child = subprocess.Popen([sys.executable, "-c", script, str(path), json.dumps(asdict(tiny_index_config))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    commits = []
    reader = None
    try:
        while len(commits) < 4:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {child.stderr.read()[-2000:]}")
            commits.append(json.loads(line))
            if reader is None:
                reader = Index.open(path)  # a reader in this process while the writer keeps going
            hits = reader.retrieve("bm25", [Query("topic0")], 100)[0]
            assert len(hits) in (BATCH, BATCH - 1)  # batch 0, minus its deleted doc once that commit lands
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        if reader is not None:
            reader.close()
    last = commits[-1]
    assert last["passages"] == expected_passages(last["generation"])
    with Index.open(path, writable=True) as index:  # the writer's recovery runs here
        generation = index.generation
        assert generation >= last["generation"]  # everything reported committed survived
        assert check_consistent(index) == expected_passages(generation)  # and nothing half-written
        assert len(index.retrieve("dense", [Query("topic1")], 10)[0]) == 10
        index.add([Document("after the crash", id="new")])
        assert index.commit() == generation + 1


def test_bm25_that_missed_a_commit_is_replayed_on_open(tmp_path: Path, tiny_index_config: IndexConfig):
    """The state a crash between the passage-store commit and the BM25 commit leaves behind."""
    path = tmp_path / "index"
    with Index.create(path, tiny_index_config) as index:
        index.add([Document(f"document {i} about owls", id=str(i)) for i in range(5)])
        index.commit()
        shutil.copytree(path / "bm25", tmp_path / "bm25-gen1")
        index.delete(["0", "1"])
        index.add([Document("replacement about hawks", id="2"), Document("new one about owls", id="9")])
        index.commit()
    def crash_state() -> None:
        shutil.rmtree(path / "bm25")
        shutil.copytree(tmp_path / "bm25-gen1", path / "bm25")  # BM25 as of generation 1

    crash_state()
    with open(path / "writer.lock", "a") as lock:  # a live writer: it replays BM25 itself; the reader only
        fcntl.flock(lock, fcntl.LOCK_EX)  # drops stale hits of deleted passages and looks again next time
        with Index.open(path) as reader:
            assert sorted(c.doc_id for c in reader.retrieve("bm25", [Query("owls")], 10)[0]) == ["3", "4"]
            fcntl.flock(lock, fcntl.LOCK_UN)  # the writer went away without catching up
            assert sorted(c.doc_id for c in reader.retrieve("bm25", [Query("owls")], 10)[0]) == ["3", "4", "9"]
    crash_state()
    with Index.open(path) as reader:  # no writer alive: the reader replays what the dead writer missed
        assert sorted(c.doc_id for c in reader.retrieve("bm25", [Query("owls")], 10)[0]) == ["3", "4", "9"]
    crash_state()
    with Index.open(path, writable=True) as index:
        assert check_consistent(index) == 4  # 2 (replaced), 3, 4, 9
        assert sorted(c.doc_id for c in index.retrieve("bm25", [Query("owls")], 10)[0]) == ["3", "4", "9"]
        assert [c.doc_id for c in index.retrieve("bm25", [Query("hawks")], 10)[0]] == ["2"]


def test_a_failed_commit_leaves_nothing_behind(tmp_path: Path, tiny_index_config: IndexConfig, monkeypatch):
    with Index.create(tmp_path / "index", tiny_index_config) as index:
        index.add([Document("kept text", id="a")])
        index.commit()
        index.add([Document("never committed", id="b")])

        def broken(texts, **kwargs):
            raise RuntimeError("encoder failed")

        monkeypatch.setattr(index.encoder, "encode", broken)
        with pytest.raises(RuntimeError, match="encoder failed"):
            index.commit()
        assert index.count()["passages"] == 1 and index.generation == 1
        assert check_consistent(index) == 1
        assert np.array_equal(index.dense.rows, np.array([1]))
