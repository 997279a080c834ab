"""Features of (query, candidate) pairs for learning to rank, read from what the pipeline already computed
(every stage's score and rank on the candidate) plus cheap text and metadata signals. A `FeatureSet` is named
and versioned and travels with the model, so a model is never fed columns in another order or meaning."""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np

from crossrank.types import Candidate

_TOKEN = re.compile(r"\w+")


@functools.cache
def _analyzer(stemming: bool) -> Any:
    from crossrank.retrieve.bm25 import analyzer

    return analyzer(stemming)


def _terms(text: str, stemming: bool) -> set[str]:
    """Terms as the index's BM25 analyser makes them (lower-cased, English stop words out, optionally stemmed), so
    "ranks" covers "ranking" and "the" covers nothing, as in retrieval."""
    return set(_analyzer(stemming).analyze(text))


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from a number or an ISO-8601 string (naive = UTC); None when unparseable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return None


@dataclass(frozen=True)
class Feature:
    """One column. Subclasses set `kind` (its JSON tag) and compute one value per candidate (NaN = missing,
    which LightGBM treats as its own branch rather than as zero)."""

    kind: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return self.kind

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}


@dataclass(frozen=True)
class StageScore(Feature):
    """A pipeline signal's score ("bm25", "dense", "fusion", "rerank", ...)."""

    kind: ClassVar[str] = "score"
    signal: str

    @property
    def name(self) -> str:
        return f"score:{self.signal}"

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.array([c.scores.get(self.signal, math.nan) for c in candidates], dtype=np.float64)


@dataclass(frozen=True)
class StageRank(Feature):
    """A pipeline signal's 1-based rank."""

    kind: ClassVar[str] = "rank"
    signal: str

    @property
    def name(self) -> str:
        return f"rank:{self.signal}"

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.array([c.ranks.get(self.signal, math.nan) for c in candidates], dtype=np.float64)


@dataclass(frozen=True)
class DocLength(Feature):
    """Words in the passage (title included)."""

    kind: ClassVar[str] = "doc_length"

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.array([len(_TOKEN.findall(c.document.content)) for c in candidates], dtype=np.float64)


@dataclass(frozen=True)
class TitleMatch(Feature):
    """Share of the query's distinct terms found in the title (0 when there is no title). `stemming`: as the
    index analyses text (`IndexConfig.stemming`); required, so a model saved before terms were analysed is refused."""

    kind: ClassVar[str] = "title_match"
    stemming: bool

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        terms = _terms(query, self.stemming)
        return np.array([len(terms & _terms(c.title, self.stemming)) / max(len(terms), 1) for c in candidates],
                        dtype=np.float64)


@dataclass(frozen=True)
class QueryCoverage(Feature):
    """Share of the query's distinct terms found anywhere in the passage (terms and `stemming` as TitleMatch)."""

    kind: ClassVar[str] = "query_coverage"
    stemming: bool

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        terms = _terms(query, self.stemming)
        return np.array([len(terms & _terms(c.document.content, self.stemming)) / max(len(terms), 1)
                         for c in candidates], dtype=np.float64)


@dataclass(frozen=True)
class Freshness(Feature):
    """0.5 ** (age / half-life) from a timestamp metadata field: 1 for brand new, 0.5 at one half-life.
    `now` (epoch seconds) pins the clock for reproducible offline features; None reads the wall clock."""

    kind: ClassVar[str] = "freshness"
    field: str
    half_life_days: float = 30.0
    now: float | None = None

    def __post_init__(self) -> None:
        if not self.half_life_days > 0:
            raise ValueError(f"freshness half_life_days must be > 0, got {self.half_life_days}")

    @property
    def name(self) -> str:
        return f"freshness:{self.field}"

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        now = time.time() if self.now is None else self.now
        out = np.full(len(candidates), math.nan)
        for i, c in enumerate(candidates):
            stamp = _timestamp(c.metadata.get(self.field))
            if stamp is not None:
                age_days = max(now - stamp, 0.0) / 86400.0
                out[i] = 0.5 ** (age_days / self.half_life_days)
        return out


@dataclass(frozen=True)
class Numeric(Feature):
    """A numeric metadata field (authority, popularity, engagement counts); `log` applies log1p to counts."""

    kind: ClassVar[str] = "numeric"
    field: str
    log: bool = False

    @property
    def name(self) -> str:
        return f"numeric:{self.field}"

    def values(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        out = np.full(len(candidates), math.nan)
        for i, c in enumerate(candidates):
            value = c.metadata.get(self.field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[i] = math.log1p(max(float(value), 0.0)) if self.log else float(value)
        return out


FEATURE_TYPES: dict[str, type[Feature]] = {
    cls.kind: cls for cls in (StageScore, StageRank, DocLength, TitleMatch, QueryCoverage, Freshness, Numeric)
}


def feature_from_json(spec: Mapping[str, Any]) -> Feature:
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in FEATURE_TYPES:
        raise ValueError(f"unknown feature type {kind!r}; known: {sorted(FEATURE_TYPES)}")
    try:
        return FEATURE_TYPES[kind](**spec)
    except TypeError as exc:
        raise ValueError(f"bad parameters for feature {kind!r}: {exc}") from exc


@dataclass(frozen=True)
class FeatureSet:
    """Named, versioned, ordered features. Change a feature → bump the version; models refuse a mismatch."""

    name: str
    version: int
    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a feature set needs a name")
        if not self.features:
            raise ValueError(f"feature set {self.name!r} has no features")
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"feature set {self.name!r} repeats a feature: {names}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def key(self) -> str:
        return f"{self.name}@v{self.version}"

    def extract(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        """[len(candidates), len(features)] float64, row i for candidates[i]."""
        if not candidates:
            return np.zeros((0, len(self.features)))
        return np.stack([f.values(query, candidates) for f in self.features], axis=1)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "features": [f.to_json() for f in self.features]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSet:
        try:
            return cls(name=str(data["name"]), version=int(data["version"]),
                       features=tuple(feature_from_json(f) for f in data["features"]))
        except KeyError as exc:
            raise ValueError(f"feature set JSON is missing {exc}") from exc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def default_feature_set(signals: Sequence[str] = ("bm25", "dense", "fusion", "rerank")) -> FeatureSet:
    """Every stage's score and rank plus length and term-match features — what a hybrid + cross-encoder
    pipeline produces, named after its signals so different pipelines never share a name. Add metadata
    features (Freshness, Numeric) for your own fields."""
    features: list[Feature] = []
    for signal in signals:
        features += [StageScore(signal), StageRank(signal)]
    features += [DocLength(), TitleMatch(stemming=True), QueryCoverage(stemming=True)]
    return FeatureSet("crossrank-" + "+".join(signals), 2, tuple(features))  # v2: terms by the index's analyser
