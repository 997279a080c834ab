"""Factorised scoring of a closed-gate gated cross-encoder: the same logits as the joint graph (torch, ONNX, int8,
windowed documents), each distinct segment encoded once (across calls too, with a segment cache), and never used
where a gate is open."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from conftest import count_segment_rows

from crossrank.model.checkpoint import Checkpoint
from crossrank.model.cross_encoder import DOCUMENT_WINDOW_TOKENS, CrossEncoder
from crossrank.model.factorised import FactorisedScorer, close_gates, gates_closed

if TYPE_CHECKING:
    from pathlib import Path

# Windowed at max_length 128; numbered sentences so no two windows are the same tokens.
LONG = " ".join(f"Barge {i} carried cargo down the river past the mills." for i in range(40))
PAIRS = [("what is the capital of france", "Paris is the capital and largest city of France."),
         ("what is the capital of france", "The mitochondrion is the powerhouse of the cell."),
         ("how do vaccines work", "Vaccines train the immune system to recognise a pathogen."),
         ("how do vaccines work", "Paris is the capital and largest city of France."),
         ("river transport", LONG)]


@pytest.fixture(scope="module")
def closed_dir(closed_gated_dir: Path) -> Path:
    return closed_gated_dir


def test_only_a_gated_model_with_every_gate_closed_factorises(tiny_gated_dir: Path, closed_dir: Path,
                                                              tiny_model_dir: Path) -> None:
    assert gates_closed(Checkpoint.open(closed_dir))
    assert not gates_closed(Checkpoint.open(tiny_gated_dir))  # its gates are open
    assert not gates_closed(Checkpoint.open(tiny_model_dir))  # not a gated model at all
    assert CrossEncoder.from_pretrained(closed_dir, backend="torch").factorised is not None
    assert CrossEncoder.from_pretrained(tiny_gated_dir, backend="torch").factorised is None
    with pytest.raises(ValueError, match="every gate closed"):
        CrossEncoder.from_pretrained(tiny_gated_dir, backend="torch", factorise=True)
    with pytest.raises(ValueError, match="not a gated cross-encoder"):
        close_gates(tiny_model_dir, closed_dir.parent / "not-gated")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_factorised_logits_equal_the_joint_graphs(closed_dir: Path, backend: str) -> None:
    factorised = CrossEncoder.from_pretrained(closed_dir, backend=backend)
    joint = CrossEncoder.from_pretrained(closed_dir, backend="torch", factorise=False)
    joint.pair_encoder = factorised.pair_encoder  # the joint graph on the same windows (the model has 512 positions)
    reference = joint.score([q for q, _ in PAIRS], _documents())
    scores = factorised.score([q for q, _ in PAIRS], _documents())
    assert scores.windows[-1] > 1  # the long document was windowed, and scored as its best window
    np.testing.assert_allclose(scores.logits, reference.logits, atol=1e-4)
    np.testing.assert_allclose(scores.probabilities, reference.probabilities, atol=1e-5)
    np.testing.assert_array_equal(scores.windows, reference.windows)


def test_a_long_documents_windows_are_its_own_whatever_the_query(closed_dir: Path) -> None:
    model = CrossEncoder.from_pretrained(closed_dir, backend="torch")
    assert model.pair_encoder.window_tokens == min(DOCUMENT_WINDOW_TOKENS, model.max_length - 2)  # [CLS] d [SEP]
    assert CrossEncoder.from_pretrained(closed_dir, backend="torch", window_tokens=40).pair_encoder.window_tokens == 40
    for bad in (0, model.max_length - 1):
        with pytest.raises(ValueError, match="window_tokens must be in"):
            CrossEncoder.from_pretrained(closed_dir, backend="torch", window_tokens=bad)
    with pytest.raises(ValueError, match="factorised model"):
        CrossEncoder.from_pretrained(closed_dir, backend="torch", factorise=False, window_tokens=40)
    seen: list[bytes] = []
    run = model.backend.run

    def recording_run(batch: dict[str, np.ndarray]) -> np.ndarray:
        seen.extend(ids[mask.astype(bool)].tobytes() for ids, mask in zip(batch["input_ids"], batch["attention_mask"],
                                                                          strict=True))
        return run(batch)

    model.factorised.run = recording_run
    model.score(["short"], _documents()[-1:])
    first = set(seen)
    seen.clear()
    model.score(["a much longer question about barges and the river trade"], _documents()[-1:])
    assert len(set(seen) - first) == 1  # only the query: the same document windows as before
    assert CrossEncoder.from_pretrained(closed_dir, backend="torch", factorise=False).pair_encoder.window_tokens is None


def test_int8_factorised_stays_close_to_fp32(closed_dir: Path) -> None:
    reference = CrossEncoder.from_pretrained(closed_dir, backend="torch", factorise=False).predict(PAIRS)
    int8 = CrossEncoder.from_pretrained(closed_dir, backend="onnx", quantize="int8")
    assert int8.factorised is not None
    np.testing.assert_allclose(int8.predict(PAIRS), reference, atol=0.1 * max(1.0, float(np.abs(reference).max())))


def test_bf16_factorised_stays_close_to_fp32_and_names_its_own_vectors(closed_dir: Path) -> None:
    fp32 = CrossEncoder.from_pretrained(closed_dir, backend="torch")
    bf16 = CrossEncoder.from_pretrained(closed_dir, backend="torch", quantize="bf16")
    reference = fp32.predict(PAIRS)
    assert bf16.factorised is not None and bf16.backend.bf16
    scores = bf16.predict(PAIRS)
    assert scores.dtype == np.float32 and not np.array_equal(scores, reference)  # bf16 did run
    np.testing.assert_allclose(scores, reference, atol=0.05 * max(1.0, float(np.abs(reference).max())))
    assert bf16.fingerprint.endswith("-torch-bf16") and bf16.fingerprint != fp32.fingerprint  # written apart


def test_bf16_casts_linear_weights_once_to_the_values_autocast_would_use(closed_dir: Path) -> None:
    import torch
    from torch import nn

    from crossrank.model.backends.torch_backend import TorchBackend
    from crossrank.model.graphs import build_graph, run_graph

    checkpoint = Checkpoint.open(closed_dir)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(5, 100, size=(3, 11)).astype(np.int64),
             "attention_mask": np.ones((3, 11), dtype=np.int64)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = run_graph(build_graph(checkpoint, "segments"), batch).float().numpy()
    backend = TorchBackend(build_graph(checkpoint, "segments"), bf16=True)
    dtypes = {p.dtype for m in backend.graph.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    assert dtypes == {torch.bfloat16}
    assert {m.weight.dtype for m in backend.graph.modules() if isinstance(m, nn.LayerNorm)} == {torch.float32}
    np.testing.assert_array_equal(backend.run(batch), expected)


def test_bf16_without_native_units_says_it_will_be_slow(closed_dir: Path, monkeypatch, caplog) -> None:
    from crossrank.model.backends import torch_backend

    monkeypatch.setattr(torch_backend, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger=torch_backend.__name__):
        CrossEncoder.from_pretrained(closed_dir, backend="torch", quantize="bf16")
    assert "emulated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=torch_backend.__name__):
        CrossEncoder.from_pretrained(closed_dir, backend="torch")
    assert "emulated" not in caplog.text


def test_each_distinct_segment_is_encoded_once(closed_dir: Path) -> None:
    model = CrossEncoder.from_pretrained(closed_dir, backend="torch")
    seen: list[int] = []

    def counting_run(batch: dict[str, np.ndarray]) -> np.ndarray:
        seen.append(len(batch["input_ids"]))
        return model.backend.run(batch)

    rows, _ = model.pair_encoder.encode([q for q, _ in PAIRS], _documents_text())
    logits = FactorisedScorer(counting_run, model.pad_id, batch_tokens=4096).logits(rows)
    queries = len({q for q, _ in PAIRS})
    documents = len({d for _, d in PAIRS[:-1]})
    long_windows = len(rows) - (len(PAIRS) - 1)
    assert sum(seen) == queries + documents + long_windows  # not one query encoding per pair
    assert logits.shape == (len(rows),)


def test_a_segment_cache_encodes_recurring_documents_once_and_changes_no_score(closed_dir: Path) -> None:
    plain = CrossEncoder.from_pretrained(closed_dir, backend="torch")
    cached = CrossEncoder.from_pretrained(closed_dir, backend="torch", segment_cache_entries=100)
    seen = count_segment_rows(cached)
    queries, documents = [q for q, _ in PAIRS], _documents()
    first = cached.score(queries, documents)
    encoded = sum(seen)
    np.testing.assert_allclose(first.logits, plain.score(queries, documents).logits, atol=1e-5)
    seen.clear()
    short = documents[:-1]  # a long document's windows depend on the query's length (the pair's token budget)
    other = ["a new question about rivers"] * len(short)  # the same documents come back for another query
    again = cached.score(other, short)
    assert sum(seen) == 1  # only the new query was encoded
    np.testing.assert_allclose(again.logits, plain.score(other, short).logits, atol=1e-5)
    stats = cached.segment_cache.stats()
    assert stats.entries == encoded + 1 and stats.hits == len(set(_documents_text()[:-1]))


def test_a_segment_cache_stays_within_its_bound(closed_dir: Path) -> None:
    cached = CrossEncoder.from_pretrained(closed_dir, backend="torch", segment_cache_entries=3)
    scores = cached.score([q for q, _ in PAIRS], _documents())
    assert cached.segment_cache.stats().entries == 3
    np.testing.assert_allclose(cached.score([q for q, _ in PAIRS], _documents()).logits, scores.logits, atol=1e-6)
    unfactorised = CrossEncoder.from_pretrained(closed_dir, backend="torch", factorise=False, segment_cache_entries=3)
    assert unfactorised.segment_cache is None  # a joint graph has no segments to keep


def _documents_text() -> list[str]:
    return [d for _, d in PAIRS]


def _documents() -> list:  # noqa: ANN202 - Documents, as the engine's score() takes them
    from crossrank.types import Document

    return [Document.coerce(text, i) for i, text in enumerate(_documents_text())]


def test_export_writes_the_segments_graph_the_engine_runs(closed_dir: Path) -> None:
    from typer.testing import CliRunner

    from crossrank.cli import app

    result = CliRunner().invoke(app, ["export", "--model", str(closed_dir), "--int8"])
    assert result.exit_code == 0, result.output
    paths = result.stdout.split()
    assert len(paths) == 4 and "-classification-" in paths[0] and "-segments-" in paths[2]
    assert paths[2].endswith("model.onnx") and paths[3].endswith("model.int8.onnx")


def test_the_server_keeps_segments_of_a_factorised_model_and_exports_their_hit_rate(closed_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from crossrank.server.app import create_app
    from crossrank.server.config import ServerConfig

    documents = _documents_text()[:3]  # three distinct short documents
    with TestClient(create_app(ServerConfig(model=str(closed_dir), score_cache_entries=0))) as client:
        for query in ("capital of france", "vaccines"):
            assert client.post("/v1/rerank", json={"query": query, "documents": documents}).status_code == 200
        metrics = client.get("/metrics").text
    # 1 query + 3 documents encoded, then the second query's 3 documents come from memory
    assert "crossrank_segment_cache_hits_total 3.0" in metrics and "crossrank_segment_cache_misses_total 5.0" in metrics
    assert "crossrank_segment_cache_entries 5.0" in metrics and "crossrank_score_cache" not in metrics
    with pytest.raises(ValueError, match="segment_cache_entries"):
        ServerConfig(segment_cache_entries=-1)
