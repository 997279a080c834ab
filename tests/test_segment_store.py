"""Passage vectors stored in the index for a factorised cross-encoder: a search that reads them encodes only its
query and scores exactly as without them; stores are written whole, reused across ingests, shared between fp32 and
bf16 of the same weights, refused for another model, and a damaged one is a clear error."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest
from conftest import count_segment_rows

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.segment_store import (
    SegmentStore,
    SegmentStoreError,
    SegmentStoreWriter,
    readable_in_place,
    segment_key,
)
from crossrank.pipeline import search_pipeline
from crossrank.store import Index, IndexConfig

if TYPE_CHECKING:
    from pathlib import Path

LONG = " ".join(f"Barge {i} carried grain down the river past mill {i}." for i in range(40))  # several windows
DOCUMENTS = [
    {"id": "paris", "title": "France", "text": "Paris is the capital and largest city of France."},
    {"id": "cell", "text": "The mitochondrion is the powerhouse of the cell."},
    {"id": "vaccines", "title": "Immunology", "text": "Vaccines train the immune system to recognise a pathogen."},
    {"id": "river", "title": "Barges", "text": LONG},
]
QUERIES = ["what is the capital of france", "how do vaccines work", "river barges carrying grain"]


@pytest.fixture
def index(tmp_path: Path) -> Path:
    with Index.create(tmp_path / "index", IndexConfig(dense=False)) as created:
        created.add(DOCUMENTS)
        created.commit()
    return tmp_path / "index"


def test_a_store_round_trips_its_vectors_and_misses_what_it_lacks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys = [segment_key(rng.integers(0, 30000, size=n).tobytes()) for n in (5, 9, 3, 12)]
    keys.append(b"\x00" * 15 + b"\x01")  # digests may hold NUL bytes anywhere
    vectors = rng.normal(size=(len(keys), 7)).astype(np.float32)
    writer = SegmentStoreWriter(tmp_path / "store", "model-x")
    writer.add(keys, vectors)
    writer.add(keys[:1], vectors[1:2])  # a key written twice keeps its first vector
    store = writer.commit(note="test")
    assert len(store) == len(keys) and store.fingerprint == "model-x" and store.meta["note"] == "test"
    unknown = segment_key(b"never stored")
    found = store.get_many([keys[3], unknown, *keys])
    assert found[1] is None
    np.testing.assert_array_equal(np.stack([found[0], *found[2:]]), vectors[[3, 0, 1, 2, 3, 4]])
    assert store.stats().hits == len(keys) + 1 and store.stats().misses == 1
    empty = SegmentStoreWriter(tmp_path / "empty", "model-x").commit()
    assert len(empty) == 0 and empty.get_many([unknown]) == [None]
    with pytest.raises(ValueError, match="shape"):
        SegmentStoreWriter(tmp_path / "bad", "model-x").add(keys[:2], [np.zeros(3), np.zeros(4)])


def test_a_damaged_store_is_a_clear_error(tmp_path: Path) -> None:
    writer = SegmentStoreWriter(tmp_path / "store", "model-x")
    writer.add([segment_key(b"a"), segment_key(b"b")], np.ones((2, 4), dtype=np.float32))
    writer.commit()
    meta = tmp_path / "store" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "count": 3}))
    with pytest.raises(SegmentStoreError, match="not a readable segment store"):
        SegmentStore(tmp_path / "store")
    meta.write_text("{")
    with pytest.raises(SegmentStoreError, match="not a readable segment store"):
        SegmentStore(tmp_path / "store")


def test_search_over_a_damaged_store_encodes_instead(index: Path, closed_gated_dir: Path) -> None:
    model = CrossEncoder.from_pretrained(closed_gated_dir, max_length=64)
    with Index.open(index, writable=True) as writable:
        stored = writable.store_segments(model)
    (stored.path / "keys.npy").write_bytes(b"truncated")
    with Index.open(index) as readonly:
        assert readonly.segment_store(model.fingerprint) is None and not readonly.lend_segments(model)
        assert search_pipeline(readonly, ["bm25"], reranker=model).search(QUERIES[0]).candidates


def test_search_reading_stored_segments_encodes_only_the_query_and_scores_the_same(index: Path,
                                                                                 closed_gated_dir: Path) -> None:
    model = CrossEncoder.from_pretrained(closed_gated_dir, max_length=64)
    with Index.open(index) as readonly:
        expected = [search_pipeline(readonly, ["bm25"], reranker=model).search(q) for q in QUERIES]
        passages = [p.document.content for d in DOCUMENTS for p in readonly.passages(d["id"])]
    with Index.open(index, writable=True) as writable:
        summary = writable.store_segments(CrossEncoder.from_pretrained(closed_gated_dir, max_length=64))
    windows = {segment_key(ids.tobytes()) for s in model.document_segments(passages) for ids in s}
    assert summary.passages == len(passages) and summary.segments == summary.encoded == len(windows) > len(passages)
    seen = count_segment_rows(model)
    with Index.open(index) as readonly:
        for query, before in zip(QUERIES, expected, strict=True):
            seen.clear()
            after = search_pipeline(readonly, ["bm25"], reranker=model).search(query)
            assert sum(seen) == 1  # the query; every candidate's windows came from the store
            assert [c.id for c in after.candidates] == [c.id for c in before.candidates]
            np.testing.assert_allclose([c.score for c in after.candidates], [c.score for c in before.candidates],
                                       rtol=1e-5, atol=1e-5)  # summation order only (batches differ)
        assert readonly.segment_store(model.fingerprint).stats().misses == len(QUERIES)  # only the queries


def test_a_new_ingest_encodes_only_new_passages_and_replaces_the_store_whole(index: Path,
                                                                             closed_gated_dir: Path) -> None:
    model = CrossEncoder.from_pretrained(closed_gated_dir, max_length=64)
    killed = index / "segments" / f".{model.fingerprint}.g1.writing-x"  # what a writer killed mid-way leaves
    killed.mkdir(parents=True)
    with Index.open(index, writable=True) as writable:
        first = writable.store_segments(model)
        assert not killed.exists()
        assert writable.store_segments(model).encoded == 0  # nothing changed: the store stands
        writable.add([{"id": "tea", "text": "Green tea is brewed at a lower temperature than black tea."}])
        writable.delete(["cell"])
        writable.commit()
        second = writable.store_segments(model)
        folders = sorted(p.name for p in (index / "segments").iterdir())
        info = writable.info()["segment_stores"]
    assert second.encoded == 1 and second.segments == first.segments  # one passage in, one out
    assert folders == [second.path.name] and not first.path.exists()
    assert info[0]["fingerprint"] == model.fingerprint and info[0]["count"] == second.segments


def test_a_store_of_another_model_is_not_read(index: Path, closed_gated_dir: Path, tiny_model_dir: Path) -> None:
    fp32 = CrossEncoder.from_pretrained(closed_gated_dir, max_length=64)
    with Index.open(index, writable=True) as writable:
        writable.store_segments(fp32)
        store = writable.segment_store(fp32.fingerprint)
    int8 = CrossEncoder.from_pretrained(closed_gated_dir, max_length=64, quantize="int8")
    assert int8.fingerprint != fp32.fingerprint
    with pytest.raises(ValueError, match="another model's vectors"):
        int8.use_segment_store("elsewhere", store)
    with Index.open(index) as readonly:
        assert not readonly.lend_segments(int8)  # none written for int8: it encodes as usual
        assert not readonly.lend_segments(CrossEncoder.from_pretrained(tiny_model_dir))  # not factorised
    with pytest.raises(ValueError, match="not factorised"):
        CrossEncoder.from_pretrained(tiny_model_dir).document_segments(["text"])


def test_which_stores_a_model_reads_in_place_of_its_own() -> None:
    assert readable_in_place("w-onnx-fp32", "w-torch-bf16") and readable_in_place("w-torch-bf16", "w-onnx-fp32")
    assert readable_in_place("w-torch-fp32", "w-onnx-fp32") and readable_in_place("w-onnx-int8", "w-onnx-int8")
    assert not readable_in_place("w-onnx-int8", "w-onnx-fp32") and not readable_in_place("w-onnx-fp32", "w-onnx-int8")
    assert not readable_in_place("v-onnx-fp32", "w-onnx-fp32") and not readable_in_place("model-x", "w-onnx-fp32")


def test_the_same_weights_at_another_faithful_precision_read_a_store_but_write_their_own(
        index: Path, closed_gated_dir: Path) -> None:
    """An index whose vectors were stored where "auto" ran ONNX fp32 serves a CPU where it runs bf16 (and back)
    without re-encoding its passages: the two precisions' vectors differ in the last digits. A store a model writes
    holds its own precision's vectors only."""
    fp32 = CrossEncoder.from_pretrained(closed_gated_dir, max_length=64, backend="onnx")
    bf16 = CrossEncoder.from_pretrained(closed_gated_dir, max_length=64, backend="torch", quantize="bf16")
    with Index.open(index) as readonly:
        own = [search_pipeline(readonly, ["bm25"], reranker=bf16).search(q) for q in QUERIES]
    with Index.open(index, writable=True) as writable:
        written = writable.store_segments(fp32)
    seen = count_segment_rows(bf16)
    with Index.open(index) as readonly:
        assert not readonly.lacks_segments(bf16) and readonly.lend_segments(bf16)
        for query, before in zip(QUERIES, own, strict=True):
            seen.clear()
            after = search_pipeline(readonly, ["bm25"], reranker=bf16).search(query)
            assert sum(seen) == 1  # the query; the candidates' windows are fp32 vectors from the store
            expected = {c.id: c.score for c in before.candidates}
            scores = {c.id: c.score for c in after.candidates}
            assert scores.keys() == expected.keys()
            np.testing.assert_allclose([scores[i] for i in expected], list(expected.values()), rtol=0.05, atol=0.05)
    with Index.open(index, writable=True) as writable:
        mine = writable.store_segments(bf16)
        assert mine.encoded == mine.segments == written.segments and mine.path != written.path
        assert writable.segment_store(bf16.fingerprint).path == mine.path  # its own first, once it has them
        assert writable.segment_store(fp32.fingerprint).path == written.path


def test_crossrank_index_stores_the_rerankers_segments(tmp_path: Path, closed_gated_dir: Path,
                                                       tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from crossrank.cli import app

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d["id"], "title": d.get("title", ""), "text": d["text"]}) + "\n"
                              for d in DOCUMENTS))
    runner = CliRunner()
    stored = runner.invoke(app, ["index", str(tmp_path / "a"), "--from", str(corpus), "--no-dense",
                                 "--model", str(closed_gated_dir)])
    assert stored.exit_code == 0, stored.output
    assert "window vectors of model stored for 5 passages" in stored.stdout  # the long text is two passages
    assert len(list((tmp_path / "a" / "segments").iterdir())) == 1
    plain = runner.invoke(app, ["index", str(tmp_path / "b"), "--from", str(corpus), "--no-dense",
                                "--model", str(tiny_model_dir)])
    assert plain.exit_code == 0 and "segments: none stored" in plain.stdout
    missing = runner.invoke(app, ["index", str(tmp_path / "d"), "--from", str(corpus), "--no-dense",
                                  "--model", str(tmp_path / "no-such-model")])
    assert missing.exit_code == 0 and "no reranker vectors stored" in missing.stderr
    assert "indexed 4 documents" in missing.stdout  # the passages themselves are in
    skipped = runner.invoke(app, ["index", str(tmp_path / "c"), "--from", str(corpus), "--no-dense",
                                  "--no-segments"])
    assert skipped.exit_code == 0 and "segments" not in skipped.stdout
    assert not (tmp_path / "c" / "segments").exists()


def test_crossrank_index_without_from_stores_a_new_models_vectors_in_an_existing_index(
        tmp_path: Path, closed_gated_dir: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from crossrank.cli import app

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d["id"], "text": d["text"]}) + "\n" for d in DOCUMENTS))
    runner = CliRunner()
    built = runner.invoke(app, ["index", str(tmp_path / "a"), "--from", str(corpus), "--no-dense", "--no-segments"])
    assert built.exit_code == 0, built.output
    before = sorted(p.name for p in (tmp_path / "a").iterdir())
    for args, message in ((["--no-segments"], "nothing to do"),
                          (["--model", str(tiny_model_dir)], "no vectors to store: tiny-bert reads each document"),
                          (["--model", str(tmp_path / "no-such-model")], "no-such-model")):
        refused = runner.invoke(app, ["index", str(tmp_path / "a"), *args])
        assert refused.exit_code == 2 and message in refused.stderr, refused.output
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == before  # nothing written, passages untouched
    missing = runner.invoke(app, ["index", str(tmp_path / "none"), "--model", str(closed_gated_dir)])
    assert missing.exit_code == 2 and "--from" in missing.stderr and not (tmp_path / "none").exists()

    first = runner.invoke(app, ["index", str(tmp_path / "a"), "--model", str(closed_gated_dir)])
    assert first.exit_code == 0, first.output
    assert "window vectors of model stored for 5 passages (" in first.stdout
    with Index.open(tmp_path / "a") as index:
        assert index.count()["documents"] == 4
        assert index.lend_segments(CrossEncoder.from_pretrained(closed_gated_dir))

    # A model trained since (another fingerprint): search says its vectors are missing and how to store them.
    retrained = tmp_path / "retrained"
    shutil.copytree(closed_gated_dir, retrained)
    config = json.loads((retrained / "config.json").read_text())
    (retrained / "config.json").write_text(json.dumps({**config, "note": "fine-tuned since"}))
    search = ["search", str(tmp_path / "a"), QUERIES[0], "--retrievers", "bm25", "--model", str(retrained)]
    slow = runner.invoke(app, search)
    assert slow.exit_code == 0 and f"crossrank index {tmp_path / 'a'} -m {retrained}`" in slow.stderr, slow.output
    context = runner.invoke(app, ["context", str(tmp_path / "a"), QUERIES[0], "--budget", "200", "-m", str(retrained)])
    assert context.exit_code == 0 and "stores passage vectors for another reranker" in context.stderr, context.output
    assert runner.invoke(app, ["index", str(tmp_path / "a"), "--model", str(retrained)]).exit_code == 0
    fast = runner.invoke(app, search)
    assert fast.exit_code == 0 and "note:" not in fast.stderr and fast.stdout == slow.stdout
