"""The cross-encoder engine: parity with sentence-transformers and torch, windows, batching, threads, bad input."""

from __future__ import annotations

import copy
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossrank import CrossEncoder, Document
from crossrank.model.batching import pack_batches
from crossrank.model.calibration import CALIBRATION_FILE, Calibrator
from crossrank.model.checkpoint import Checkpoint, CheckpointError
from crossrank.model.export import export_dir, onnx_model_path
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.model.tokenization import DocumentTooLongError

QUERY = "how do vaccines train the immune system"
DOCUMENTS = [
    "Vaccines expose the immune system to a harmless piece of a pathogen so it learns to recognise it.",
    "The stock market closed lower on Friday after a week of volatile trading.",
    "Antibodies are proteins produced by B cells in response to antigens.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
]
PAIRS = [(QUERY, document) for document in DOCUMENTS]


@pytest.fixture(scope="module")
def tiny_torch(tiny_model_dir: Path) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir, backend="torch")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir: Path) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir, backend="onnx")


# --- parity -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_model_dir_two_labels"])
def test_checkpoint_saved_by_sentence_transformers_scores_identically(fixture, request, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    reference = STCrossEncoder(str(request.getfixturevalue(fixture)), device="cpu")
    reference.save(str(tmp_path / "saved"))
    reference = STCrossEncoder(str(tmp_path / "saved"), device="cpu")
    ours = CrossEncoder.from_pretrained(tmp_path / "saved", backend="torch")
    expected = reference.predict(PAIRS, activation_fn=torch.nn.Identity())
    logits = ours.predict(PAIRS)
    if expected.ndim == 2:  # two labels: our logit is the class-1 log-odds, our probability the class-1 softmax
        np.testing.assert_allclose(logits, expected[:, 1] - expected[:, 0], atol=1e-4)
        softmax = reference.predict(PAIRS, activation_fn=torch.nn.Softmax(dim=-1))[:, 1]
        np.testing.assert_allclose(ours.probabilities(logits), softmax, atol=1e-5)
    else:
        np.testing.assert_allclose(logits, expected, atol=1e-4)
        np.testing.assert_allclose(ours.probabilities(logits), reference.predict(PAIRS), atol=1e-5)


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers_and_onnx_matches_torch(minilm_cross_encoder_dir):
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    expected = STCrossEncoder(str(minilm_cross_encoder_dir), device="cpu").predict(
        PAIRS, activation_fn=torch.nn.Identity())
    torch_logits = CrossEncoder.from_pretrained(minilm_cross_encoder_dir, backend="torch").predict(PAIRS)
    onnx_logits = CrossEncoder.from_pretrained(minilm_cross_encoder_dir, backend="onnx").predict(PAIRS)
    np.testing.assert_allclose(torch_logits, expected, atol=1e-4)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_onnx_fp32_matches_torch(tiny_torch, tiny_onnx):
    documents = DOCUMENTS + ["word " * 700]  # includes a windowed document
    pairs = [(QUERY, document) for document in documents]
    np.testing.assert_allclose(tiny_onnx.predict(pairs), tiny_torch.predict(pairs), atol=1e-4)


@pytest.mark.slow
def test_int8_keeps_the_ranking_of_fp32(minilm_cross_encoder_dir):
    from scipy.stats import kendalltau

    documents = DOCUMENTS * 3 + [f"{i} immune cells and vaccines, part {i}" for i in range(8)]
    pairs = [(QUERY, document) for document in documents]
    fp32 = CrossEncoder.from_pretrained(minilm_cross_encoder_dir).predict(pairs)
    int8 = CrossEncoder.from_pretrained(minilm_cross_encoder_dir, quantize="int8").predict(pairs)
    assert kendalltau(fp32, int8).statistic > 0.8


@pytest.mark.slow
def test_bf16_keeps_the_ranking_of_fp32(minilm_cross_encoder_dir):
    """bf16 autocast rounds the matrix products' inputs only: far closer to fp32 than int8 (τ 0.997 vs 0.943 on
    DL20 lists, README "Reranking speed")."""
    from scipy.stats import kendalltau

    documents = DOCUMENTS * 3 + [f"{i} immune cells and vaccines, part {i}" for i in range(8)]
    pairs = [(QUERY, document) for document in documents]
    fp32 = CrossEncoder.from_pretrained(minilm_cross_encoder_dir, backend="torch").predict(pairs)
    bf16 = CrossEncoder.from_pretrained(minilm_cross_encoder_dir, backend="torch", quantize="bf16").predict(pairs)
    assert kendalltau(fp32, bf16).statistic > 0.9
    np.testing.assert_allclose(bf16, fp32, atol=0.1)


def test_bi_encoder_matches_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    from crossrank import BiEncoder

    texts = [QUERY, *DOCUMENTS]
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    for backend in ("torch", "onnx"):
        np.testing.assert_allclose(BiEncoder.from_pretrained(backend=backend).encode(texts), expected, atol=1e-5)


# --- export cache -------------------------------------------------------------------------------------------


def test_export_is_cached_by_content_hash(tiny_model_dir, tmp_path):
    checkpoint = Checkpoint.open(tiny_model_dir)
    first = onnx_model_path(checkpoint, "classification")
    stamp = first.stat().st_mtime_ns
    assert onnx_model_path(checkpoint, "classification") == first
    assert first.stat().st_mtime_ns == stamp
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed)
    config = json.loads((changed / "config.json").read_text())
    config["label2id"] = {"relevant": 0}
    (changed / "config.json").write_text(json.dumps(config))
    assert export_dir(Checkpoint.open(changed), "classification") != export_dir(checkpoint, "classification")


def test_refitting_a_sidecar_file_keeps_the_export(tiny_model_dir, tmp_path):
    """Calibration or first-stage weights do not change the network: a refit must not re-export the model or
    orphan the passage vectors an index stored for it."""
    refitted = tmp_path / "refitted"
    shutil.copytree(tiny_model_dir, refitted)
    FirstStageInterpolation(0.2, fitted_on="test").save(refitted)
    (refitted / CALIBRATION_FILE).write_text(json.dumps({"method": "platt", "a": 1.0, "b": 0.0, "x": [], "y": []}))
    assert Checkpoint.open(refitted).content_hash == Checkpoint.open(tiny_model_dir).content_hash


def test_int8_export_is_a_separate_cached_file(tiny_model_dir):
    checkpoint = Checkpoint.open(tiny_model_dir)
    int8 = onnx_model_path(checkpoint, "classification", "int8")
    assert int8.name == "model.int8.onnx" and int8.is_file()
    with pytest.raises(ValueError, match="quantize"):
        onnx_model_path(checkpoint, "classification", "int4")


# --- pair encoding ------------------------------------------------------------------------------------------


def test_tokenizer_file_defaults_are_overridden(minilm_dir, tiny_model_dir):
    """MiniLM's tokenizer.json truncates and pads to 128; rows must be neither cut at 128 nor padded to it."""
    encoder = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", max_length=256)
    rows, windows = encoder.pair_encoder.encode([QUERY, QUERY], ["word " * 150, "short document"])
    assert windows.tolist() == [1, 1]
    assert len(rows[0]) > 128
    assert len(rows[1]) < 20


def test_query_is_truncated_only_beyond_max_query_tokens(tiny_model_dir):
    encoder = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", max_length=128, max_query_tokens=16)
    tokenizer = encoder.pair_encoder.tokenizer
    short_query, long_query = "one two three", " ".join(["query"] * 40)
    rows, _ = encoder.pair_encoder.encode([short_query, long_query], ["doc " * 200, "doc " * 200])
    for row, expected_query_tokens in zip(rows[:1], [3], strict=True):
        assert int((row.token_type_ids == 0).sum()) == expected_query_tokens + 2  # [CLS] q [SEP]
    long_rows = [row for row in rows if tokenizer.decode(row.input_ids.tolist()).startswith("query")]
    assert long_rows and all(int((row.token_type_ids == 0).sum()) == 16 + 2 for row in long_rows)
    assert all(len(row) <= 128 for row in rows)


def test_long_document_windows_cover_the_document_with_overlap(tiny_model_dir):
    encoder = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", max_length=64, max_query_tokens=8,
                                           window_overlap=8)
    document = " ".join(f"w{i}" for i in range(200))
    rows, windows = encoder.pair_encoder.encode(["q"], [document])
    assert windows[0] == len(rows) > 1
    budget = 64 - 3 - 1
    n_tokens = len(encoder.pair_encoder.tokenizer.encode(document, add_special_tokens=False))
    assert windows[0] == int(np.ceil((n_tokens - 8) / (budget - 8)))
    assert all(len(row) <= 64 for row in rows)


def test_fixed_windows_cut_a_document_the_same_way_whatever_the_query(tiny_model_dir):
    from crossrank.model.tokenization import PairEncoder

    tokenizer = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch").pair_encoder.tokenizer
    document = " ".join(f"w{i}" for i in range(200))
    fixed = PairEncoder(tokenizer, 64, max_query_tokens=8, window_overlap=8, window_tokens=40)
    fitted = PairEncoder(tokenizer, 64, max_query_tokens=8, window_overlap=8)

    def document_windows(encoder: PairEncoder, query: str) -> list[list[int]]:
        rows, _ = encoder.encode([query], [document])
        return [row.input_ids[row.token_type_ids == 1].tolist() for row in rows]

    short, long = document_windows(fixed, "q"), document_windows(fixed, "a much longer question")
    assert short == long and all(len(window) <= 40 + 1 for window in short)  # + its [SEP]
    assert document_windows(fitted, "q") != document_windows(fitted, "a much longer question")
    assert fixed.min_document_tokens == 40
    with pytest.raises(ValueError, match="window_overlap"):
        PairEncoder(tokenizer, 64, window_overlap=8, window_tokens=8)
    refusing = PairEncoder(tokenizer, 64, max_query_tokens=8, long_documents="error", window_tokens=40)
    with pytest.raises(DocumentTooLongError, match="only 40 fit in one window"):
        refusing.encode(["q"], [document])


@pytest.mark.parametrize("aggregate", ["max", "first", "mean"])
def test_window_scores_are_aggregated(tiny_model_dir, aggregate):
    kwargs = dict(backend="torch", max_length=64, max_query_tokens=8, window_overlap=0)
    encoder = CrossEncoder.from_pretrained(tiny_model_dir, aggregate=aggregate, **kwargs)
    tokenizer = encoder.pair_encoder.tokenizer
    document = " ".join(f"token{i}" for i in range(300))
    scores = encoder.score([QUERY], [Document(document)])
    assert scores.windows[0] > 1
    # Score each window on its own: the decoded window texts re-encode to the same rows.
    rows, _ = encoder.pair_encoder.encode([QUERY], [document])
    per_window = []
    for row in rows:
        ids = row.input_ids[row.token_type_ids == 1][:-1]  # drop the final [SEP]
        per_window.append(encoder.predict([(QUERY, tokenizer.decode(ids.tolist()))])[0])
    expected = {"max": max(per_window), "first": per_window[0], "mean": float(np.mean(per_window))}[aggregate]
    assert scores.logits[0] == pytest.approx(expected, abs=1e-4)


def test_truncate_policy_scores_one_window_and_error_policy_refuses(tiny_model_dir):
    document = "word " * 3000
    truncating = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", long_documents="truncate")
    assert truncating.rank(QUERY, [document])[0].windows == 1
    refusing = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", long_documents="error")
    with pytest.raises(DocumentTooLongError, match="document 1 has"):
        refusing.rank(QUERY, ["short", document])
    with pytest.raises(ValueError, match="long_documents"):
        CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", long_documents="ignore")


def test_one_megabyte_document_is_windowed_not_a_crash(tiny_onnx):
    document = ("The immune system learns from vaccines. " * 26000)[: 1 << 20]
    result = tiny_onnx.rank(QUERY, [document, "short"], return_documents=False)
    assert {r.index for r in result} == {0, 1}
    assert max(r.windows for r in result) > 100


# --- batching -----------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=512), max_size=300), st.integers(min_value=1, max_value=5000))
def test_pack_batches_respects_the_token_budget_and_keeps_every_row_once(lengths, budget):
    batches = pack_batches(lengths, budget)
    flat = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= budget


def test_scores_do_not_depend_on_batching_or_order(tiny_model_dir):
    documents = [" ".join(["cell"] * n) + " vaccine" for n in range(1, 60, 3)]
    pairs = [(QUERY, document) for document in documents]
    big = CrossEncoder.from_pretrained(tiny_model_dir, backend="onnx", batch_tokens=1 << 16).predict(pairs)
    small = CrossEncoder.from_pretrained(tiny_model_dir, backend="onnx", batch_tokens=64).predict(pairs)
    np.testing.assert_allclose(big, small, atol=1e-5)
    permutation = np.random.default_rng(0).permutation(len(pairs))
    shuffled = CrossEncoder.from_pretrained(tiny_model_dir, backend="onnx").predict([pairs[i] for i in permutation])
    np.testing.assert_allclose(shuffled, big[permutation], atol=1e-5)


# --- ranking API --------------------------------------------------------------------------------------------


def test_rank_orders_by_score_and_passes_documents_through_unmutated(tiny_onnx):
    documents = [{"text": text, "title": "T" if i == 1 else "", "id": f"d{i}", "url": f"u{i}"}
                 for i, text in enumerate(DOCUMENTS)]
    snapshot = copy.deepcopy(documents)
    results = tiny_onnx.rank(QUERY, documents)
    assert documents == snapshot
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert sorted(r.index for r in results) == list(range(len(documents)))
    assert all(r.document is documents[r.index] for r in results)
    assert all(0.0 <= r.probability <= 1.0 and r.windows == 1 for r in results)
    titled = tiny_onnx.predict([(QUERY, {"text": DOCUMENTS[1], "title": "T"})])
    assert titled[0] == pytest.approx(tiny_onnx.predict([(QUERY, "T: " + DOCUMENTS[1])])[0], abs=1e-6)
    top = tiny_onnx.rank(QUERY, documents, top_k=2, return_documents=False)
    assert [r.index for r in top] == [r.index for r in results[:2]] and top[0].document is None


def test_rank_many_equals_rank_per_query(tiny_onnx):
    queries = [QUERY, "what is sourdough bread", "stock market"]
    lists = [DOCUMENTS, DOCUMENTS[::-1], DOCUMENTS[:2]]
    together = tiny_onnx.rank_many(queries, lists)
    for query, documents, ranking in zip(queries, lists, together, strict=True):
        single = tiny_onnx.rank(query, documents)
        assert [r.index for r in ranking] == [r.index for r in single]
        np.testing.assert_allclose([r.score for r in ranking], [r.score for r in single], atol=1e-5)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_one_instance_shared_by_eight_threads_gives_the_serial_results(tiny_model_dir, backend):
    encoder = CrossEncoder.from_pretrained(tiny_model_dir, backend=backend, batch_tokens=256)
    workloads = [[(f"{QUERY} {t}", d + f" variant {t}-{i}") for i, d in enumerate(DOCUMENTS * 3)] for t in range(8)]
    serial = [encoder.predict(pairs) for pairs in workloads]
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            results[t] = [encoder.predict(workloads[t]) for _ in range(5)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for t in range(8):
        for repeat in results[t]:
            np.testing.assert_array_equal(repeat, serial[t])


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_empty_query_is_a_value_error_naming_it(tiny_onnx, query):
    with pytest.raises(ValueError, match="query"):
        tiny_onnx.rank(query, DOCUMENTS)


def test_non_string_query_is_a_type_error(tiny_onnx):
    with pytest.raises(TypeError, match="query"):
        tiny_onnx.rank(None, DOCUMENTS)  # type: ignore[arg-type]


def test_no_documents_gives_an_empty_result(tiny_onnx):
    assert tiny_onnx.rank(QUERY, []) == []
    assert tiny_onnx.predict([]).shape == (0,)


@pytest.mark.parametrize("bad", [42, None, b"bytes", {"title": "no text"}, {"text": 3}])
def test_non_string_document_is_a_type_error_naming_its_index(tiny_onnx, bad):
    with pytest.raises(TypeError, match="document 2"):
        tiny_onnx.rank(QUERY, ["fine", "also fine", bad])


@pytest.mark.parametrize("top_k", [0, -3, 1.5, True])
def test_non_positive_top_k_is_a_value_error(tiny_onnx, top_k):
    with pytest.raises(ValueError, match="top_k"):
        tiny_onnx.rank(QUERY, DOCUMENTS, top_k=top_k)


def test_malformed_pairs_are_type_errors(tiny_onnx):
    with pytest.raises(TypeError, match="pair 1"):
        tiny_onnx.predict([(QUERY, "ok"), (QUERY,)])


def _copy_without(source: Path, target: Path, *missing: str) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*missing))
    return target


@pytest.mark.parametrize(("missing", "message"), [
    ("config.json", "no config.json"),
    ("model.safetensors", "no weights"),
    ("tokenizer*", "no tokenizer"),
])
def test_incomplete_checkpoint_names_what_is_missing(tiny_model_dir, tmp_path, missing, message):
    broken = _copy_without(tiny_model_dir, tmp_path / "broken", missing, "vocab.txt" if missing == "tokenizer*" else "x")
    with pytest.raises(CheckpointError, match=message):
        CrossEncoder.from_pretrained(broken)


def test_missing_directory_and_unsupported_architecture_are_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        CrossEncoder.from_pretrained(tmp_path / "nope")
    gpt = _copy_without(tiny_model_dir, tmp_path / "gpt", "x")
    config = json.loads((gpt / "config.json").read_text())
    (gpt / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="unsupported architecture model_type='gpt2'"):
        CrossEncoder.from_pretrained(gpt)


def test_three_label_models_are_refused(tmp_path):
    from conftest import make_tiny_bert

    with pytest.raises(ValueError, match="num_labels"):
        CrossEncoder.from_pretrained(make_tiny_bert(tmp_path / "three", num_labels=3))


def test_invalid_options_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="backend"):
        CrossEncoder.from_pretrained(tiny_model_dir, backend="tensorrt")
    with pytest.raises(ValueError, match="int8"):
        CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", quantize="int8")
    with pytest.raises(ValueError, match="'bf16' needs backend='torch'"):
        CrossEncoder.from_pretrained(tiny_model_dir, backend="onnx", quantize="bf16")
    with pytest.raises(ValueError, match="quantize must be one of"):
        CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", quantize="fp8")
    with pytest.raises(ValueError, match="max_length"):
        CrossEncoder.from_pretrained(tiny_model_dir, max_length=4096)
    with pytest.raises(ValueError, match="aggregate"):
        CrossEncoder.from_pretrained(tiny_model_dir, aggregate="median")


# --- calibration --------------------------------------------------------------------------------------------


def test_auto_backend_runs_bf16_only_where_the_cpu_has_amx(tiny_model_dir, monkeypatch):
    from crossrank.model.backends import cpu_features, resolve_backend

    monkeypatch.setattr(cpu_features, "cpu_has_amx", lambda: True)
    assert resolve_backend("auto", None) == ("torch", "bf16")
    assert resolve_backend("auto", "int8") == ("onnx", "int8")  # an explicit precision picks its backend
    assert resolve_backend("auto", None, device="cuda") == ("torch", None)
    assert resolve_backend("onnx", None) == ("onnx", None)  # an explicit backend runs fp32 unless told otherwise
    amx = CrossEncoder.from_pretrained(tiny_model_dir)
    assert (amx.backend.name, amx.quantize) == ("torch", "bf16") and amx.fingerprint.endswith("-torch-bf16")
    assert amx.batch_tokens == 4096  # AMX tiles want larger matrix products than ONNX Runtime's cache-sized 2048
    assert CrossEncoder.from_pretrained(tiny_model_dir, batch_tokens=1024).batch_tokens == 1024
    monkeypatch.setattr(cpu_features, "cpu_has_amx", lambda: False)
    assert resolve_backend("auto", None) == ("onnx", None)
    plain = CrossEncoder.from_pretrained(tiny_model_dir)
    assert (plain.backend.name, plain.quantize) == ("onnx", None) and plain.fingerprint.endswith("-onnx-fp32")
    assert plain.batch_tokens == 2048


def test_platt_calibration_recovers_known_parameters_and_is_applied(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    labels = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))
    calibrator = Calibrator.fit(logits, labels, "platt")
    assert calibrator.a == pytest.approx(0.5, abs=0.05) and calibrator.b == pytest.approx(-1.0, abs=0.08)
    model = tmp_path / "calibrated"
    shutil.copytree(tiny_model_dir, model)
    calibrator.save(model)
    encoder = CrossEncoder.from_pretrained(model, backend="torch")
    result = encoder.rank(QUERY, DOCUMENTS[:1])[0]
    assert result.probability == pytest.approx(1 / (1 + np.exp(-(calibrator.a * result.score + calibrator.b))), abs=1e-6)


def test_isotonic_calibration_is_monotone_and_bounded():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, 2000)
    labels = rng.random(2000) < 1 / (1 + np.exp(-logits))
    calibrator = Calibrator.fit(logits, labels, "isotonic")
    grid = np.linspace(-8, 8, 200)
    probabilities = calibrator(grid)
    assert np.all(np.diff(probabilities) >= -1e-9)
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    # It recovers the sigmoid the labels were drawn from (a constant or a step would not).
    inner = np.linspace(-3, 3, 61)
    assert np.abs(calibrator(inner) - 1 / (1 + np.exp(-inner))).mean() < 0.04
    # Pool-adjacent-violators by hand: (0, 1, 0, 1) at logits 0..3 → 0, ½, ½, 1.
    small = Calibrator.fit(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 1, 0, 1]), "isotonic")
    np.testing.assert_allclose(small(np.array([0.0, 1.0, 1.5, 2.0, 3.0, 9.0])), [0, 0.5, 0.5, 0.5, 1, 1], atol=1e-7)
    with pytest.raises(ValueError, match="both"):
        Calibrator.fit(np.zeros(5), np.zeros(5))
