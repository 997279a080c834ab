"""`crossrank adapt`: label-free adaptation of the cross-encoder to one index, its installation beside the index,
`search` picking it up, and what a failed or impossible run leaves behind (nothing changed, a clear error)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import copy_tokenizer
from typer.testing import CliRunner

from crossrank.cli import app
from crossrank.model.calibration import Calibrator
from crossrank.model.checkpoint import CheckpointError
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.gated import GatedCrossEncoder, is_gated
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.store import Index, adapted_model
from crossrank.store.index import IndexLockedError
from crossrank.train import adapt
from crossrank.types import Candidate

runner = CliRunner()
TOPICS = {
    "owls": "Owls hunt small mammals at night. Their soft feathers let them fly almost silently over fields.",
    "bees": "Bees collect nectar from flowers and turn it into honey. A colony can hold fifty thousand workers.",
    "rivers": "Rivers carry sediment from mountains to the sea. Deltas form where the current slows down.",
    "volcanoes": "Volcanoes erupt when magma rises through the crust. Ash clouds can ground flights for days.",
    "bread": "Bread rises because yeast ferments sugar into carbon dioxide. Kneading builds the gluten network.",
    "tides": "Tides follow the pull of the moon and the sun. Spring tides come with the full and new moon.",
    "glaciers": "Glaciers grind valleys into a U shape as they move. Meltwater feeds many rivers in summer.",
    "comets": "Comets are icy bodies that grow bright tails near the sun. Some return every few decades.",
    "coral": "Coral reefs are built by tiny animals that secrete limestone. Warm water can bleach the reef.",
    "chess": "Chess openings aim to control the centre of the board. Castling keeps the king safe early on.",
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_bi_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    target = tmp_path_factory.mktemp("bi") / "bi"
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(target)
    copy_tokenizer(target)
    return target


@pytest.fixture(scope="module")
def tiny_base(tiny_bi_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gated cross-encoder shipping a calibration and a first-stage weight (both must travel along)."""
    base = GatedCrossEncoder.from_bi_encoder(tiny_bi_encoder).save(
        tmp_path_factory.mktemp("base") / "gated", tiny_bi_encoder, max_length=128)
    Calibrator(method="platt", a=0.5, b=-1.0).save(base)
    FirstStageInterpolation(0.25, fitted_on="test").save(base)
    return base


def _topics_index(path: Path, config) -> Path:  # noqa: ANN001 - an IndexConfig
    with Index.create(path, config) as index:
        index.add([{"id": f"{topic}-{part}", "title": f"All about {topic}", "text": f"{text} Part {part} of {topic}."}
                   for topic, text in TOPICS.items() for part in (1, 2)])
        index.commit()
    return path


def _adapt(index: Path, base: Path, bi_encoder: Path) -> adapt.AdaptReport:
    """One short adaptation run (the "minilm" teacher is the tiny bi-encoder, so nothing real is loaded)."""
    teacher = adapt.BiEncoderTeacher
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapt, "BiEncoderTeacher", lambda device: teacher(bi_encoder, device=device))
        return adapt.adapt_index(index, base=str(base), minutes=1.0, queries=12, depth=5, steps=2, progress=False)


@pytest.fixture(scope="module")
def index_dir(tiny_index_config, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    return _topics_index(tmp_path_factory.mktemp("adapt") / "index", tiny_index_config)


@pytest.fixture(scope="module")
def adapted(index_dir: Path, tiny_base: Path, tiny_bi_encoder: Path) -> adapt.AdaptReport:
    return _adapt(index_dir, tiny_base, tiny_bi_encoder)


def test_adapt_installs_a_loadable_model_with_provenance(adapted: adapt.AdaptReport, index_dir: Path,
                                                         tiny_base: Path) -> None:
    model_dir = adapted_model(index_dir)
    assert model_dir == index_dir / "adapted-model" and adapted.out == str(model_dir)
    engine = CrossEncoder.from_pretrained(model_dir, backend="torch")
    assert is_gated(engine.checkpoint.config) and engine.interpolation.weight == 0.25
    assert engine.factorised is not None  # the base's closed gates stayed closed
    assert adapted.segments is None  # this index stores no reranker vectors
    assert engine.predict([("owls at night", "Owls hunt at night.")]).shape == (1,)
    for name in ("calibration.json", "fusion.json"):
        assert (model_dir / name).read_bytes() == (tiny_base / name).read_bytes()
    provenance = json.loads((model_dir / "adaptation.json").read_text())
    assert provenance["base"] == str(tiny_base) and provenance["depth"] == 5 and provenance["steps"] == 2
    assert provenance["weights"] == adapt.FALLBACK_WEIGHTS and "fallback" in provenance["weights_from"]
    assert 0 < provenance["queries"] <= 12 and provenance["candidates"] >= 2 * provenance["queries"]
    assert provenance["pairs"] > 0 and provenance["minutes"] == 1.0 and "segments" not in provenance
    assert not (model_dir / "trainer_state.pt").exists()
    assert sorted(p.name for p in index_dir.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_search_uses_the_adapted_model_unless_told_not_to(adapted: adapt.AdaptReport, index_dir: Path,
                                                          tiny_model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import crossrank.model.checkpoint as checkpoint

    query = ["search", str(index_dir), "bees make honey", "--retrievers", "bm25", "--top-k", "3"]
    result = runner.invoke(app, [*query, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "adapted model" in result.stderr and str(index_dir / "adapted-model") in result.stderr
    assert json.loads(result.stdout)["results"][0]["doc_id"].startswith("bees")
    explicit = runner.invoke(app, [*query, "--model", str(tiny_model_dir)])
    assert explicit.exit_code == 0 and "adapted model" not in explicit.output
    monkeypatch.setattr(checkpoint, "BUNDLED_MODELS_DIR", tmp_path / "no-models")
    bundled = runner.invoke(app, [*query, "--no-adapted"])
    assert bundled.exit_code == 2 and "default model" in bundled.output and "adapted model" not in bundled.output


def test_an_index_that_stores_reranker_vectors_gets_the_adapted_models(tiny_base: Path, tiny_bi_encoder: Path,
                                                                        tiny_index_config, tmp_path: Path) -> None:  # noqa: ANN001
    path = _topics_index(tmp_path / "index", tiny_index_config)
    with Index.open(path, writable=True) as index:
        index.store_segments(CrossEncoder.from_pretrained(tiny_base, backend="torch"))
    report = _adapt(path, tiny_base, tiny_bi_encoder)
    adapted_engine = CrossEncoder.from_pretrained(adapted_model(path))  # what `search` loads
    with Index.open(path) as index:
        store = index.segment_store(adapted_engine.fingerprint)
        assert store is not None and len(store) == report.segments > 0
        assert index.lend_segments(adapted_engine)  # search with the adapted model encodes only the query

    def locked(*_, **__):  # noqa: ANN002, ANN003, ANN202
        raise IndexLockedError("another process is writing to the index")

    before = _snapshot(path / "segments")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Index, "store_segments", locked)
        again = _adapt(path, tiny_base, tiny_bi_encoder)  # the model is installed; the vectors wait
    assert again.segments is None and adapted_model(path).is_dir() and _snapshot(path / "segments") == before


def test_a_failed_adaptation_leaves_the_adapted_model_untouched(adapted: adapt.AdaptReport, index_dir: Path,
                                                                tiny_base: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(index_dir / "adapted-model")
    with pytest.raises(CheckpointError, match="model directory not found"):
        adapt.adapt_index(index_dir, base=str(tmp_path / "missing"), progress=False)

    def crash(lists, base, out, **_):  # noqa: ANN001, ANN003, ANN202
        (out / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(adapt, "train_adapted", crash)
    monkeypatch.setattr(adapt, "choose_weights", lambda recipe, available: {"model": 0.5, "bm25": 0.5})
    with pytest.raises(RuntimeError, match="killed mid-training"):
        adapt.adapt_index(index_dir, base=str(tiny_base), queries=4, depth=5, progress=False)
    assert _snapshot(index_dir / "adapted-model") == before
    assert [p.name for p in index_dir.iterdir() if p.name.startswith(".")] == []


def test_clear_errors(index_dir: Path, tiny_base: Path, tiny_index_config, tmp_path: Path,  # noqa: ANN001
                      monkeypatch: pytest.MonkeyPatch) -> None:
    def teachers_loaded_first(*_: object) -> None:
        raise AssertionError("teachers were loaded before the index was checked")

    monkeypatch.setattr(adapt, "load_extra_teachers", teachers_loaded_first)  # each error comes before that work
    Index.create(tmp_path / "empty", tiny_index_config).close()
    with pytest.raises(ValueError, match="holds no passages"):
        adapt.adapt_index(tmp_path / "empty", base=str(tiny_base), progress=False)
    cases = {
        "holds no passages": ["adapt", str(tmp_path / "empty"), "--model", str(tiny_base)],
        "no such index directory": ["adapt", str(tmp_path / "missing"), "--model", str(tiny_base)],
        "model directory not found": ["adapt", str(index_dir), "--model", str(tmp_path / "nope")],
        "depth, steps and minutes must be positive": ["adapt", str(index_dir), "--model", str(tiny_base),
                                                      "--depth", "0"],
    }
    for expected, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_weights_come_from_the_base_recipe(tmp_path: Path) -> None:
    recipe = {"weights": {"model": 0.6, "minilm": 0.4, "bm25": 0.0},
              "weights_with_extra": {"model": 0.4, "minilm": 0.2, "splade": 0.2, "e5": 0.2}, "fitted_on": "dl21"}
    (tmp_path / "adapt.json").write_text(json.dumps(recipe))
    read, source = adapt.read_recipe(tmp_path)
    assert read == recipe and "fitted on dl21" in source
    core = list(adapt.CORE_SIGNALS)
    assert adapt.choose_weights(read, core) == {"model": 0.6, "minilm": 0.4}
    assert adapt.choose_weights(read, [*core, "splade"]) == {"model": 0.6, "minilm": 0.4}  # e5 missing
    assert adapt.choose_weights(read, [*core, "splade", "e5"]) == recipe["weights_with_extra"]
    with pytest.raises(ValueError, match="cannot compute"):
        adapt.choose_weights({"weights": {"colbert": 1.0}}, core)
    assert adapt.read_recipe(tmp_path / "elsewhere")[0]["weights"] == adapt.FALLBACK_WEIGHTS
    (tmp_path / "adapt.json").write_text("{}")
    with pytest.raises(ValueError, match="adapt.json"):
        adapt.read_recipe(tmp_path)
    loaded, skipped = adapt.load_extra_teachers(["colbert"], "cpu")
    assert loaded == {} and "unknown teacher" in skipped["colbert"]


def test_pseudo_queries_are_reproducible_and_cycle_small_indexes() -> None:
    passages = [Candidate(f"d{i}#0", f"d{i}", f"{text} Part {i}.", f"All about {topic}")
                for i, (topic, text) in enumerate(TOPICS.items())]
    first = adapt.draw_queries(passages, 40, seed=3)
    assert first == adapt.draw_queries(passages, 40, seed=3) != adapt.draw_queries(passages, 40, seed=4)
    assert len(first) == len(set(first)) == 40  # more queries than passages: the passages were cycled
    assert any(query.startswith("All about") for query in first)  # titles too
    assert adapt.draw_queries(passages[:1], 10_000, seed=0)  # stops once a round over the passages adds nothing


def test_sample_passages_is_reproducible(index_dir: Path) -> None:
    with Index.open(index_dir) as index:
        first = index.sample_passages(5, seed=1)
        assert [p.id for p in first] == [p.id for p in index.sample_passages(5, seed=1)]
        assert len({p.id for p in first}) == 5 and first[0].title.startswith("All about") and "Part" in first[0].text
        assert len(index.sample_passages(1000, seed=1)) == index.count()["passages"]
