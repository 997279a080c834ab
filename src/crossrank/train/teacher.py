"""Teacher scores for distillation: the bi-encoder's cosine, optionally fused with the first stage (z-scores),
and a cross-encoder's logits as the engine computes them (the current model as a teacher, calibration lists).

The bi-encoder is the engine's own embedding graph (mean-pooled, normalised MiniLM) run with torch on any
device, so the teacher of a GPU job and of a CPU run is the same model. Unique texts are embedded once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from crossrank.model.embedding import BiEncoder
from crossrank.retrieve.fusion import zscore
from crossrank.train.data import RankingList


class BiEncoderTeacher:
    """The engine's BiEncoder on the torch backend, on the training device."""

    def __init__(self, path: str | os.PathLike[str] | None = None, device: str = "cpu", max_length: int = 256,
                 batch_tokens: int = 65536) -> None:
        self.encoder = BiEncoder.from_pretrained(path, backend="torch", max_length=max_length,
                                                 batch_tokens=batch_tokens, device=device)

    def score_lists(self, lists: Sequence[RankingList]) -> list[np.ndarray]:
        """Cosine of query and candidate embeddings, per list."""
        table: dict[str, int] = {}
        for item in lists:
            for text in (item.query, *item.documents):
                table.setdefault(text, len(table))
        embeddings = self.encoder.encode(list(table))
        return [embeddings[[table[d] for d in item.documents]] @ embeddings[table[item.query]] for item in lists]


def fuse(cosine: np.ndarray, first_stage: np.ndarray | None, weight: float) -> np.ndarray:
    """z(cos) fused with z(first stage) at `weight` (0 = bi-encoder only); the probes found 0.2 best on DL20."""
    if first_stage is None or weight == 0:
        return zscore(cosine)
    return (1 - weight) * zscore(cosine) + weight * zscore(first_stage)


def attach_teacher(lists: Sequence[RankingList], teacher: BiEncoderTeacher) -> None:
    """Set every list's `teacher` to the bi-encoder cosine (in place); the trainer fuses it with the first stage."""
    for item, cosine in zip(lists, teacher.score_lists(lists), strict=True):
        item.teacher = cosine.astype(np.float32)


class CrossEncoderTeacher:
    """A cross-encoder as a teacher: its logits as the engine computes them at search time (windows included)."""

    def __init__(self, path: str | os.PathLike[str], backend: str = "auto", progress: bool = True) -> None:
        from crossrank.model.cross_encoder import CrossEncoder

        self.model = CrossEncoder.from_pretrained(path, backend=backend)  # type: ignore[arg-type]
        self.progress = progress

    def score_lists(self, lists: Sequence[RankingList]) -> list[np.ndarray]:
        from crossrank.types import Document

        queries = [item.query for item in lists for _ in item.documents]
        documents = [Document(text=text) for item in lists for text in item.documents]
        logits = self.model.score(queries, documents, show_progress_bar=self.progress).logits
        bounds = np.cumsum([0] + [len(item.documents) for item in lists])
        return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
