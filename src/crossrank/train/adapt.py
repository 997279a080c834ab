"""Label-free domain adaptation: fit the cross-encoder to one index's passages without a single judgment.

Most users have a corpus and no judged queries. Pseudo-queries drawn from the index's own passages (word spans,
sentences, titles) retrieve candidates with the index's own BM25 and dense retrieval; a teacher ensemble scores
them (BM25, the MiniLM bi-encoder, the current cross-encoder and, when installed, SPLADE and e5: teachers that
err differently, blended by z-score), and a short distillation run moves the cross-encoder toward the ensemble
on this corpus's vocabulary and style. The result lives in `<index>/adapted-model/`, which `crossrank search`
then uses for that index. Its calibration (calibration.json) and first-stage weight (fusion.json) are the
base's, copied unchanged: without judgments there is nothing to refit them on. A base whose cross-segment gates
are closed (the bundled model) keeps them closed, so the adapted model is still scored factorised, and an index
that stores reranker vectors gets the adapted model's too: adapting does not make `search` slower.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.model.calibration import CALIBRATION_FILE
from crossrank.model.checkpoint import Checkpoint
from crossrank.model.cross_encoder import default_max_length
from crossrank.model.factorised import gates_closed
from crossrank.model.interpolation import FUSION_FILE
from crossrank.store.index import ADAPTED_MODEL, Index
from crossrank.train.data import RankingList, pseudo_query
from crossrank.train.ensemble import TeacherEnsemble
from crossrank.train.teacher import BiEncoderTeacher, CrossEncoderTeacher
from crossrank.train.trainer import Trainer, TrainConfig, TrainResult, resolve_device
from crossrank.types import Candidate, Query

RECIPE_FILE = "adapt.json"  # in the base model's directory: the ensemble weights its training recipe fitted
PROVENANCE_FILE = "adaptation.json"  # in the adapted model's directory: how it was made
# When the base ships no adapt.json: the current model leads (it is the best single ranker we have), the
# bi-encoder and BM25 pull it toward what they see in this corpus.
FALLBACK_WEIGHTS = {"model": 0.5, "minilm": 0.3, "bm25": 0.2}
CORE_SIGNALS = ("bm25", "minilm", "model")
EXTRA_SIGNALS = ("splade", "e5")
TITLE_SHARE = 0.2  # how often a passage with a multi-word title contributes the title as its query


@dataclass
class AdaptReport:
    """What `adapt_index` did; also written as `adaptation.json` into the adapted model."""

    out: str
    base: str
    index: str
    generation: int
    queries: int
    candidates: int
    depth: int
    seed: int
    weights: dict[str, float]
    weights_from: str
    skipped_teachers: dict[str, str]
    minutes: float
    steps: int
    pairs: int
    train_seconds: float
    seconds: float
    segments: int | None = None  # passage-window vectors stored for the adapted model (None: none stored)
    calibration: str = "the base's calibration.json and fusion.json where it ships them, not refitted"

    def to_dict(self) -> dict[str, Any]:
        """How the model was made (`adaptation.json`); the vectors stored in the index afterwards are not part of it."""
        return {key: value for key, value in asdict(self).items() if key != "segments"}


def adapt_index(index_path: str | Path, *, base: str | None = None, minutes: float = 20.0, queries: int = 2000,
                depth: int = 20, seed: int = 0, extra_teachers: bool = True, steps: int = 1000,
                progress: bool = True) -> AdaptReport:
    """Distil a teacher ensemble over pseudo-queries from the index into `base` (None: the bundled default model)
    for at most `minutes` of training (teacher scoring comes first and is not counted) or `steps` steps, and
    install the result as `<index>/adapted-model/`.

    The model is trained in a temporary directory beside it and renamed into place only when complete, so a
    failed run leaves the previous adapted model as it was.
    """
    start = time.monotonic()
    log: Callable[[str], None] = (lambda message: print(message, file=sys.stderr)) if progress else (lambda _: None)
    if min(queries, depth, steps) < 1 or minutes <= 0:
        raise ValueError(f"queries, depth, steps and minutes must be positive, got {queries}, {depth}, {steps}, "
                         f"{minutes}")
    base_path = Checkpoint.open(base).path  # a base that cannot be loaded fails before any work
    recipe, weights_from = read_recipe(base_path)
    index_path = Path(index_path).resolve()
    with Index.open(index_path) as index:
        if index.count()["passages"] == 0:
            raise ValueError(f"the index at {index_path} holds no passages: index documents before adapting")
        generation = index.generation
        lists = retrieve_lists(index, draw_queries(index.sample_passages(queries, seed), queries, seed), depth)
    if not lists:
        raise ValueError(f"no pseudo-query from {index_path} retrieved two or more passages: too little text to adapt")
    device = str(resolve_device("auto"))  # teachers load once the index has given lists to score
    wanted = [name for name, w in (recipe.get("weights_with_extra") or {}).items()
              if w > 0 and name not in CORE_SIGNALS]
    extras, skipped = (load_extra_teachers(wanted, device) if extra_teachers
                       else ({}, dict.fromkeys(wanted, "extra teachers turned off")))
    for name, reason in skipped.items():
        log(f"teacher {name} skipped: {reason}")
    weights = choose_weights(recipe, [*CORE_SIGNALS, *extras])
    candidates = sum(len(item.documents) for item in lists)
    log(f"{len(lists)} pseudo-queries, {candidates} candidates; teachers {weights} from {weights_from}")
    for name in weights:
        if name != "bm25":
            teacher = extras.get(name) or core_teacher(name, base_path, device, progress)
            for item, scores in zip(lists, teacher.score_lists(lists), strict=True):
                item.signals[name] = np.asarray(scores, dtype=np.float32)
    TeacherEnsemble(weights).attach(lists)
    built = Path(tempfile.mkdtemp(prefix=f".{ADAPTED_MODEL}-", dir=index_path))
    try:
        result = train_adapted(lists, base_path, built, minutes=minutes, steps=steps, seed=seed, log=log)
        report = AdaptReport(
            out=str(index_path / ADAPTED_MODEL), base=str(base_path), index=str(index_path), generation=generation,
            queries=len(lists), candidates=candidates, depth=depth, seed=seed, weights=weights,
            weights_from=weights_from, skipped_teachers=skipped, minutes=minutes, steps=result.steps,
            pairs=result.pairs_seen, train_seconds=round(result.wall_seconds, 1),
            seconds=round(time.monotonic() - start, 1))
        (built / PROVENANCE_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        install(built, index_path / ADAPTED_MODEL)
    finally:
        shutil.rmtree(built, ignore_errors=True)  # already gone once installed
    try:
        report.segments = store_vectors(index_path, index_path / ADAPTED_MODEL, progress)
    except (OSError, RuntimeError, ValueError) as exc:  # the model is in place; only search's speed depends on this
        log(f"the adapted model is installed, but its passage vectors were not stored ({exc}): search encodes the "
            "passages it reranks")
    report.seconds = round(time.monotonic() - start, 1)
    return report


def store_vectors(index_path: Path, model: Path, progress: bool) -> int | None:
    """Store the adapted model's passage vectors in an index that keeps a reranker's, so that `search` with it
    still encodes only the query. Returns the windows stored, or None (the index keeps none, or the model is not
    factorised)."""
    from crossrank.model.cross_encoder import CrossEncoder

    with Index.open(index_path) as index:
        if not index.keeps_segments():
            return None
    reranker = CrossEncoder.from_pretrained(model)
    if reranker.factorised is None:
        return None
    with Index.open(index_path, writable=True) as index:
        return index.store_segments(reranker, show_progress=progress).segments


def read_recipe(base: Path) -> tuple[dict[str, Any], str]:
    """The base's adapt.json ({"weights", "weights_with_extra", "fitted_on"}), else the documented fallback."""
    path = base / RECIPE_FILE
    if not path.is_file():
        return {"weights": FALLBACK_WEIGHTS}, "fallback (the base has no adapt.json)"
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
        TeacherEnsemble(recipe["weights"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected {{'weights': {{signal: weight}}, ...}}; unusable ({exc})") from exc
    return recipe, f"{path} (fitted on {recipe.get('fitted_on', 'unknown')})"


def choose_weights(recipe: dict[str, Any], available: Sequence[str]) -> dict[str, float]:
    """`weights_with_extra` when every signal it weights is available, else `weights`; only positive weights."""
    for key in ("weights_with_extra", "weights"):
        weights = {name: float(w) for name, w in (recipe.get(key) or {}).items() if w > 0}
        if weights and all(name in available for name in weights):
            return weights
    missing = sorted(set(weights) - set(available))
    raise ValueError(f"the ensemble weights name teachers adapt cannot compute: {missing} "
                     f"(it knows {', '.join(CORE_SIGNALS + EXTRA_SIGNALS)})")


def load_extra_teachers(names: Sequence[str], device: str) -> tuple[dict[str, Any], dict[str, str]]:
    """SPLADE and e5 teachers when their packages (the `teachers` extra) import; the reason for each that does not."""
    try:
        from crossrank.train.external_teachers import E5Teacher, SpladeTeacher
    except ImportError as exc:
        return {}, dict.fromkeys(names, str(exc))
    factories = {"splade": lambda: SpladeTeacher(device=device), "e5": E5Teacher}
    loaded, skipped = {}, {}
    for name in names:
        try:
            if name not in factories:
                raise RuntimeError(f"unknown teacher (adapt knows {', '.join(EXTRA_SIGNALS)})")
            loaded[name] = factories[name]()
        except (ImportError, RuntimeError, OSError) as exc:
            skipped[name] = str(exc)
    return loaded, skipped


def core_teacher(name: str, base: Path, device: str, progress: bool) -> Any:
    """"model" (the base cross-encoder) or "minilm" (the bundled bi-encoder's cosine, as the recipe computes it)."""
    return CrossEncoderTeacher(base, progress=progress) if name == "model" else BiEncoderTeacher(device=device)


def draw_queries(passages: Sequence[Candidate], count: int, seed: int) -> list[str]:
    """Up to `count` distinct pseudo-queries: spans and sentences of the passages (`pseudo_query`) and now and
    then a multi-word title. The passages are cycled while that still yields new queries, so a small index gives
    several per passage."""
    rng = random.Random(seed)
    drawn: dict[str, None] = {}
    while len(drawn) < count:
        before = len(drawn)
        for passage in passages:
            use_title = len(passage.title.split()) >= 2 and rng.random() < TITLE_SHARE
            query = passage.title if use_title else pseudo_query(passage.text, rng)
            if query is not None:
                drawn.setdefault(query)
            if len(drawn) == count:
                break
        if len(drawn) == before:
            break
    return list(drawn)


def retrieve_lists(index: Index, queries: Sequence[str], depth: int) -> list[RankingList]:
    """Each query's top `depth` from every retriever the index has, merged by passage (lists of fewer than two are
    dropped), with the BM25 score as the "bm25" signal: a passage only dense retrieval found gets the list's
    lowest BM25 score."""
    batch = [Query(text) for text in queries]
    runs = {name: index.retrieve(name, batch, depth) for name in index.retrievers}
    lists = []
    for row, query in enumerate(queries):
        merged: dict[str, Candidate] = {}
        for hits in runs.values():
            for candidate in hits[row]:
                merged.setdefault(candidate.id, candidate)
        if len(merged) < 2:
            continue
        bm25 = {candidate.id: candidate.score for candidate in runs["bm25"][row]}
        floor = min(bm25.values(), default=0.0)
        lists.append(RankingList(
            query=query, documents=[candidate.document.content for candidate in merged.values()], source="adapt",
            query_id=f"pseudo-{row}", document_ids=list(merged),
            signals={"bm25": np.array([bm25.get(pid, floor) for pid in merged], dtype=np.float32)}))
    return lists


def train_adapted(lists: Sequence[RankingList], base: Path, out: Path, *, minutes: float, steps: int, seed: int,
                  log: Callable[[str], None]) -> TrainResult:
    """Teacher-only distillation (KL to the ensemble) of `base` into `out`, left as a complete model: the engine's
    checkpoint plus the base's calibration and fusion files, without the optimizer state."""
    # 8 lists x 8 candidates a step keeps a CPU run within a laptop's memory; the base is trained already, so its
    # head moves at the body's rate instead of the fresh-head rate.
    # Closed gates stay closed (`freeze_gates`): the adapted model keeps the base's factorised scoring.
    checkpoint = Checkpoint.open(base)
    config = TrainConfig(base=str(base), label_loss=None, teacher_loss="kl", first_stage_weight=0.0, steps=steps,
                         freeze_gates=gates_closed(checkpoint), max_minutes=minutes, group_size=8, lists_per_step=8,
                         lr=2e-5, head_lr=2e-5, seed=seed, max_length=default_max_length(checkpoint))
    result = Trainer(config, lists, out, log=log).train()
    (out / "trainer_state.pt").unlink(missing_ok=True)  # only a resume would read it
    for name in (CALIBRATION_FILE, FUSION_FILE):
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return result


def install(built: Path, target: Path) -> None:
    """Replace `target` with `built`: the old model is renamed aside, the new one renamed in, the old one removed.
    A reader sees one whole model or the other; a crash between the two renames leaves the old one beside it."""
    previous = target.with_name(f".{target.name}-previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    built.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
