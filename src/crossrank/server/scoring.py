"""The adapter between HTTP requests and `CrossEncoder.score`: per-document token caps and token counts.

Runs on the batcher's worker thread, never on the event loop. Token counts come from the model's own tokenizer
(read-only, so shared safely); caps cut a document's text at the character offset of its last allowed token,
which is how `max_tokens_per_doc` (Cohere v2) and `max_chunks_per_doc` (v1) are honoured per request while the
engine stays shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from crossrank.model.cross_encoder import CrossEncoder, PairScores
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.model.score_cache import CacheStats
from crossrank.types import Document


class BatchScorer(Protocol):
    """What the micro-batcher calls: aligned queries, document texts and optional token caps per document; the
    result counts the input tokens of every pair (`PairScores.tokens`)."""

    def __call__(self, queries: Sequence[str], texts: Sequence[str],
                 token_caps: Sequence[int | None]) -> PairScores: ...


class EncoderScorer:
    """Scores pairs with a shared CrossEncoder; `window_tokens` is how many document tokens one chunk holds."""

    def __init__(self, encoder: CrossEncoder) -> None:
        self.encoder = encoder
        self.tokenizer = encoder.pair_encoder.tokenizer
        self.window_tokens = encoder.pair_encoder.min_document_tokens

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def interpolation(self) -> FirstStageInterpolation | None:
        """The model's shipped first-stage weight, which /search applies by default."""
        return self.encoder.interpolation

    def cache_stats(self) -> dict[str, CacheStats]:
        """The model's caches by name ("score", "segment"), for /metrics; only those it keeps."""
        caches = {"score": self.encoder.cache, "segment": self.encoder.segment_cache}
        return {name: cache.stats() for name, cache in caches.items() if cache is not None}

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The model's calibrated probabilities for logits scored here (what /v1/context's floor reads)."""
        return self.encoder.probabilities(logits)

    def __call__(self, queries: Sequence[str], texts: Sequence[str],
                 token_caps: Sequence[int | None]) -> PairScores:
        documents, tokens = self._truncate(queries, texts, token_caps)
        scores = self.encoder.score(list(queries), documents)
        return PairScores(scores.logits, scores.probabilities, scores.windows, tokens)

    def count_tokens(self, queries: Sequence[str], texts: Sequence[str], token_caps: Sequence[int | None]) -> int:
        """Model tokens the pairs hold (query + document, after the caps): what a request's work is bounded by."""
        return int(self._truncate(queries, texts, token_caps)[1].sum())

    def _truncate(self, queries: Sequence[str], texts: Sequence[str],
                  token_caps: Sequence[int | None]) -> tuple[list[Document], np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        unique = list(dict.fromkeys(queries))
        query_tokens = dict(zip(unique, (len(e) for e in self.tokenizer.encode_batch(unique, add_special_tokens=False)),
                                strict=True))
        documents, tokens = [], np.empty(len(texts), dtype=np.int64)
        for i, (query, text, encoding, cap) in enumerate(zip(queries, texts, encodings, token_caps, strict=True)):
            length = len(encoding)
            if cap is not None and length > cap:
                text = text[: encoding.offsets[cap - 1][1]]
                length = cap
            documents.append(Document(text=text))
            tokens[i] = query_tokens[query] + length
        return documents, tokens
