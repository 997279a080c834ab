"""Item 9: crash edges. A reader sees every committed generation even when the writer died between its database
commit and its BM25 update; an index creation killed half-way leaves nothing behind; the losing side of a
creation race is told the truth (the other index is valid), and `open_or_create` simply opens it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest

from crossrank.store import Index
from crossrank.store.index import IndexExistsError
from crossrank.types import Query

pytestmark = pytest.mark.reliability  # tests/reliability: each reproduces an operator-found defect

DIE_AFTER_COMMIT = """
import json, os, signal, sys
from crossrank.store import Index, IndexConfig
from crossrank.types import Document
path, config = sys.argv[1], IndexConfig(**json.loads(sys.argv[2]))
index = Index.create(path, config)
index.add([Document("first batch about owls", id="first")])
index.commit()
index._sync_bm25 = lambda: os.kill(os.getpid(), signal.SIGKILL)  # dies right after the database commit
index.add([Document("second batch about owls", id="second")])
index.commit()
"""

DIE_WHILE_CREATING = """
import json, os, signal, sys
from crossrank.store import Index, IndexConfig
os.rename = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # dies just before the index appears
Index.create(sys.argv[1], IndexConfig(**json.loads(sys.argv[2])))
"""


def run_until_killed(script: str, path: Path, config) -> None:  # noqa: ANN001
    process = subprocess.run([sys.executable, "-c", script, str(path), json.dumps(asdict(config))], timeout=120,
                             capture_output=True, text=True)
    assert process.returncode == -signal.SIGKILL, process.stderr


@pytest.mark.slow
def test_readers_see_the_last_commit_of_a_writer_killed_before_its_bm25_update(tmp_path, tiny_index_config):
    run_until_killed(DIE_AFTER_COMMIT, tmp_path / "index", tiny_index_config)
    with Index.open(tmp_path / "index") as reader:
        assert reader.generation == 2
        hits = reader.retrieve("bm25", [Query("owls")], 10)[0]
        assert sorted(c.doc_id for c in hits) == ["first", "second"]
        assert reader.bm25.generation == 2


@pytest.mark.slow
def test_a_creation_killed_half_way_leaves_nothing_at_the_path(tmp_path, tiny_index_config):
    run_until_killed(DIE_WHILE_CREATING, tmp_path / "index", tiny_index_config)
    assert not (tmp_path / "index").exists()
    with Index.create(tmp_path / "index", tiny_index_config) as index:  # the path is usable right away
        assert index.count() == {"documents": 0, "passages": 0}


def test_the_loser_of_a_creation_race_is_told_the_other_index_is_valid(tmp_path, tiny_index_config, monkeypatch):
    target = tmp_path / "index"
    real_mkdtemp = tempfile.mkdtemp

    def rival_wins(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        staging = real_mkdtemp(*args, **kwargs)
        monkeypatch.setattr(tempfile, "mkdtemp", real_mkdtemp)
        Index.create(target, tiny_index_config).close()  # the other process renames first
        return staging

    monkeypatch.setattr(tempfile, "mkdtemp", rival_wins)
    with pytest.raises(IndexExistsError) as raised:
        Index.create(target, tiny_index_config)
    assert "open that one (it is valid)" in str(raised.value) and "delete" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # the loser's staging folder is gone
    shutil.rmtree(target)
    monkeypatch.setattr(tempfile, "mkdtemp", rival_wins)
    with Index.open_or_create(target, tiny_index_config) as index:  # the same race: it opens the rival's index
        assert index.writable and tempfile.mkdtemp is real_mkdtemp
