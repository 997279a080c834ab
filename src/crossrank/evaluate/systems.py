"""What an experiment compares: pipeline specs such as "bm25", "hybrid>>ce" or "run>>bi", turned into the
pipeline's own stage objects (FromRun / Retrieve / Fuse for the first stage, Rerank for the second).

Spec grammar: FIRST[>>RERANKER]. FIRST is `run` (a given TREC run), `bm25`, `dense` or `hybrid` (bm25 ∪ dense,
reciprocal rank fusion). RERANKER is `ce` (the cross-encoder given by --model, by its logit alone; with several
models, `ce:NAME` picks one by its directory name), `ce+` / `ce+:NAME` (the same model interpolated with the first
stage's z-scored score at the weight it ships in fusion.json, so `ce` and `ce+` rows show what keeping the first
stage's evidence adds), or `bi` (the bi-encoder's cosine over the same candidates, a reference row that tells how
much the cross-encoder adds over the dense model it is often compared to).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crossrank.model.cross_encoder import PairScores
from crossrank.model.embedding import BiEncoder
from crossrank.model.interpolation import FUSION_FILE, FirstStageInterpolation
from crossrank.types import Document

FIRST_STAGES = ("run", "bm25", "dense", "hybrid")
RERANKERS = ("ce", "ce+", "bi")


@dataclass(frozen=True)
class SystemSpec:
    first: str
    reranker: str | None = None  # "ce", "ce:NAME", "ce+", "ce+:NAME" or "bi"

    @classmethod
    def parse(cls, text: str) -> SystemSpec:
        parts = [part.strip() for part in text.split(">>")]
        if len(parts) > 2 or not parts[0]:
            raise ValueError(f"pipeline {text!r}: expected FIRST or FIRST>>RERANKER, e.g. 'bm25>>ce'")
        first, reranker = parts[0], (parts[1] if len(parts) == 2 else None)
        if first not in FIRST_STAGES:
            raise ValueError(f"pipeline {text!r}: first stage must be one of {FIRST_STAGES}, got {first!r}")
        if reranker is not None and reranker.split(":", 1)[0] not in RERANKERS:
            raise ValueError(f"pipeline {text!r}: reranker must be one of {RERANKERS} (or ce:NAME, ce+:NAME), "
                             f"got {reranker!r}")
        return cls(first, reranker)

    @property
    def name(self) -> str:
        return self.first if self.reranker is None else f"{self.first}>>{self.reranker}"


def interpolated(reranker: str) -> str:
    """The `ce+` name of a cross-encoder: "ce" → "ce+", "ce:NAME" → "ce+:NAME"."""
    return "ce+" + reranker.removeprefix("ce")


def scorer_of(reranker: str) -> str:
    """The scorer a reranker runs: `ce+` and `ce+:NAME` score with the models of `ce` and `ce:NAME`."""
    return "ce" + reranker.removeprefix("ce+") if reranker.startswith("ce+") else reranker


def shipped_interpolation(reranker: str, scorer: object) -> FirstStageInterpolation | None:
    """What a reranker mixes in of the first stage: the model's fusion.json for `ce+`; nothing for `ce` and `bi`,
    which rank by their own score (so a `ce` row stays the plain cross-encoder even when the model ships one)."""
    if not reranker.startswith("ce+"):
        return None
    interpolation = getattr(scorer, "interpolation", None)
    if interpolation is None:
        name = getattr(scorer, "name", scorer)
        raise ValueError(f"reranker {reranker!r} interpolates with the first-stage weight the model ships as "
                         f"{FUSION_FILE}, and {name!r} has no {FUSION_FILE}: use {scorer_of(reranker)!r} (the "
                         "cross-encoder alone), or fit one with crossrank.model.interpolation.fit_weight and save it")
    return interpolation


def parse_pipelines(specs: str | Sequence[str]) -> list[SystemSpec]:
    """"bm25,dense,bm25>>ce" (or a list of such strings) → specs, duplicates refused."""
    items = [s for spec in ([specs] if isinstance(specs, str) else specs) for s in spec.split(",") if s.strip()]
    parsed = [SystemSpec.parse(item) for item in items]
    if not parsed:
        raise ValueError("no pipelines given")
    names = [spec.name for spec in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"pipelines listed twice: {duplicates}")
    return parsed


class CosineScorer:
    """The bi-encoder as a pair scorer (cosine of unit embeddings), so the pipeline's Rerank stage can run it
    exactly as it runs a cross-encoder. Each distinct query and document is embedded once per call."""

    def __init__(self, encoder: BiEncoder, name: str = "bi-encoder") -> None:
        self.encoder, self.name = encoder, name

    def __repr__(self) -> str:
        return f"CosineScorer({self.name!r})"

    def score(self, queries: Sequence[str], documents: Sequence[Document], *,
              show_progress_bar: bool = False) -> PairScores:
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents")
        unique_queries = list(dict.fromkeys(queries))
        unique_docs = list(dict.fromkeys(document.content for document in documents))
        q_vectors = self.encoder.encode(unique_queries)
        d_vectors = self.encoder.encode(unique_docs, show_progress_bar=show_progress_bar)
        q_row = {text: i for i, text in enumerate(unique_queries)}
        d_row = {text: i for i, text in enumerate(unique_docs)}
        q_index = np.array([q_row[q] for q in queries], dtype=np.int64)
        d_index = np.array([d_row[d.content] for d in documents], dtype=np.int64)
        cosine = np.einsum("ij,ij->i", q_vectors[q_index], d_vectors[d_index]).astype(np.float32)
        return PairScores(cosine, (cosine + 1.0) / 2.0, np.ones(len(cosine), dtype=np.int64))
