"""The cross-encoder facade: load a checkpoint, score (query, document) pairs, rank documents.

Shaped like sentence-transformers' CrossEncoder (`predict`, `rank`) so users feel at home, and built so that
what it lacks cannot happen here: inputs are length-sorted and packed by token budget, long documents are
windowed (or refused) instead of silently cut, logits come with calibrated probabilities, and one instance is
safe to share across threads (nothing is mutated after construction but the set of segment stores it
reads, replaced whole).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from crossrank.model.backends import Backend, BackendName, Precision, load_backend, resolve_backend
from crossrank.model.batching import iter_batches
from crossrank.model.calibration import Calibrator
from crossrank.model.checkpoint import Checkpoint
from crossrank.model.factorised import FactorisedScorer, SegmentCache, gates_closed
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.model.score_cache import ScoreCache
from crossrank.model.segment_store import SegmentStore, readable_in_place
from crossrank.model.tokenization import LongDocuments, PairEncoder, load_tokenizer
from crossrank.types import Document, RankResult, check_positive

Aggregate = Literal["max", "first", "mean"]
AGGREGATES = ("max", "first", "mean")
# A factorised model's document window, in tokens (32 of them overlapping the next window), scored as the best
# window. Chosen on training data: the mean nDCG@10 of trec-dl-2021's BM25 top-100 and SciFact train's BM25 top-20
# (first 200 queries) with the bundled model: windows fitted beside the query 0.6492, fixed 254 (a whole segment)
# 0.6510, 190 0.6523, 126 0.6543, 96 0.6641, 64 0.6411 (64 cuts MS MARCO passages: trec-dl-2021 0.5737). Shorter
# windows read more tokens per long document (the overlap repeats); 96 against 126: see the README's speed section.
DOCUMENT_WINDOW_TOKENS = 96
# Rows × padded length per forward pass, by precision. 2048 keeps ONNX Runtime's batches in cache (the README's
# "Reranking speed" measures it against 16384); bf16 on AMX tiles wants larger matrix products. Chosen on
# trec-dl-2021's BM25 top-100 (12 queries, interleaved, bf16 p50 per query): 1024 368 ms, 2048 332, 4096 313,
# 8192 406; the server's pairs/s at 4096 against 2048 was +4-11 % (README, "Serve").
BATCH_TOKENS: dict[str | None, int] = {None: 2048, "int8": 2048, "bf16": 4096}


@dataclass(frozen=True)
class PairScores:
    """Per-pair results: aggregated logit, probability, how many windows the document needed and, where the scorer
    counts them (the server, for billing and limits), the input tokens the pair consumed."""

    logits: np.ndarray
    probabilities: np.ndarray
    windows: np.ndarray
    tokens: np.ndarray | None = None

    def slice(self, start: int, stop: int) -> PairScores:
        span = slice(start, stop)
        return PairScores(self.logits[span], self.probabilities[span], self.windows[span],
                          None if self.tokens is None else self.tokens[span])

    @staticmethod
    def concat(parts: Sequence[PairScores]) -> PairScores:
        """Slices of one request's pairs, scored separately, back in order."""
        if not parts:
            empty = np.zeros(0, dtype=np.float32)
            return PairScores(empty, empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        tokens = None if any(p.tokens is None for p in parts) else np.concatenate([p.tokens for p in parts])
        return PairScores(*(np.concatenate([getattr(p, name) for p in parts])
                            for name in ("logits", "probabilities", "windows")), tokens)


def validate_query(query: Any) -> str:
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty or only whitespace")
    return query


def default_max_length(checkpoint: Checkpoint) -> int:
    """The tokenizer config's model_max_length, bounded by the position embeddings and 512."""
    limit = min(512, checkpoint.max_position_embeddings)
    config_file = checkpoint.path / "tokenizer_config.json"
    if config_file.is_file():
        import json

        declared = json.loads(config_file.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(declared, int) and 0 < declared < limit:
            return declared
    return limit


class CrossEncoder:
    """Scores (query, document) pairs with a transformer that reads both together."""

    def __init__(self, checkpoint: Checkpoint, backend: Backend, pair_encoder: PairEncoder, pad_id: int,
                 batch_tokens: int, aggregate: Aggregate, calibrator: Calibrator,
                 interpolation: FirstStageInterpolation | None, quantize: str | None,
                 cache_entries: int = 0, factorised: bool = False, segment_cache_entries: int = 0) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if batch_tokens <= 0:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        self.checkpoint = checkpoint
        self.backend = backend
        self.pair_encoder = pair_encoder
        self.pad_id = pad_id
        self.batch_tokens = batch_tokens
        self.aggregate = aggregate
        self.calibrator = calibrator
        self.interpolation = interpolation  # the first-stage weight the model ships (fusion.json), if any
        self.quantize = quantize
        self.num_labels = checkpoint.num_labels
        # Scored pairs kept for exact repeats (0: none); see `crossrank.model.score_cache`.
        self.cache = ScoreCache(cache_entries) if cache_entries else None
        # A closed-gate gated model runs one segment at a time (`backend` is then its segments graph).
        # Its segment vectors kept so a document seen before is not encoded again (0: none).
        segments = SegmentCache(segment_cache_entries) if factorised and segment_cache_entries else None
        self.factorised = FactorisedScorer(backend.run, pad_id, batch_tokens, segments) if factorised else None
        self._cold = threading.local()  # set inside `uncached()`

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        backend: BackendName = "auto",
        quantize: Precision = None,
        max_length: int | None = None,
        max_query_tokens: int = 64,
        batch_tokens: int | None = None,
        long_documents: LongDocuments = "windows",
        window_overlap: int = 32,
        aggregate: Aggregate = "max",
        threads: int | None = None,
        cache_entries: int = 0,
        factorise: bool | None = None,
        segment_cache_entries: int = 0,
        window_tokens: int | None = None,
    ) -> CrossEncoder:
        """Load a local checkpoint directory (None or "default": the bundled crossrank model), with the
        calibration and first-stage weight it ships (calibration.json, fusion.json) when present.

        `backend` "auto" runs the fastest faithful precision on this CPU (`resolve_backend`: torch bf16 autocast
        where it has AMX tiles, else ONNX fp32); "onnx" or "torch" run fp32 unless `quantize` says otherwise.
        `quantize` trades exactness for speed: "int8" (ONNX, dynamic int8 matrix products) or "bf16" (torch,
        bfloat16 autocast: about three times ONNX fp32 on CPUs with AMX; the README's speed section measures both).
        `batch_tokens` bounds rows × padded length per forward pass (None: `BATCH_TOKENS` for the precision):
        small batches pad less and stay in cache (the README's "Reranking speed" measures 2048 against 16384).
        `threads` sets ONNX Runtime's intra-op threads (for torch it sets torch's process-wide thread count).
        `cache_entries` keeps that many scored pairs so exact repeats skip the model (off by default: a benchmark
        must not time cache hits; `crossrank serve` turns it on). `factorise` (None: whenever the model allows it)
        scores a gated model whose cross-segment gates are all closed one segment at a time — the same logits, each
        query and document window encoded once (`crossrank.model.factorised`); False runs the joint graph, True
        requires closed gates.
        `segment_cache_entries` keeps that many encoded segments of a factorised model, so documents that recur
        across queries are encoded once (off by default for the same reason; a model that is not factorised has no
        segments to keep and ignores it). `window_tokens` (factorised models only) is how many document tokens one
        window holds, whatever the query (None: `DOCUMENT_WINDOW_TOKENS`, within one segment's `max_length`); the
        joint graph's windows hold what fits beside each query.
        """
        checkpoint = Checkpoint.open(path)
        closed = gates_closed(checkpoint)
        if factorise and not closed:
            raise ValueError(f"{checkpoint.path}: factorise=True needs a gated cross-encoder with every gate closed")
        factorised = closed if factorise is None else factorise
        if checkpoint.num_labels not in (1, 2):
            raise ValueError(
                f"{checkpoint.path}: a relevance model needs num_labels 1 (logit) or 2 (softmax, class 1); "
                f"this one has {checkpoint.num_labels}"
            )
        length = max_length or default_max_length(checkpoint)
        if length > checkpoint.max_position_embeddings:
            raise ValueError(f"max_length={length} exceeds the model's {checkpoint.max_position_embeddings} positions")
        interpolation = FirstStageInterpolation.load(checkpoint.path)  # a malformed file fails before any export
        tokenizer, pad_id = load_tokenizer(checkpoint.path)
        # A factorised model encodes each document window on its own, so its windows are the document's, not what
        # fits beside this query: a document always gives the same segments.
        if window_tokens is not None and not factorised:
            raise ValueError("window_tokens fixes a factorised model's document windows; the joint graph's hold what "
                             "fits beside each query")
        segment_tokens = length - tokenizer.num_special_tokens_to_add(is_pair=False)
        if window_tokens is not None and not 0 < window_tokens <= segment_tokens:
            raise ValueError(f"window_tokens must be in [1, {segment_tokens}] at max_length {length}, "
                             f"got {window_tokens}")
        own_windows = (window_tokens or min(DOCUMENT_WINDOW_TOKENS, segment_tokens)) if factorised else None
        encoder = PairEncoder(tokenizer, length, max_query_tokens, long_documents, window_overlap, own_windows)
        head = "segments" if factorised else "classification"
        backend, quantize = resolve_backend(backend, quantize)
        batch_tokens = BATCH_TOKENS[quantize] if batch_tokens is None else batch_tokens
        return cls(checkpoint, load_backend(checkpoint, head, backend, quantize, threads), encoder, pad_id,
                   batch_tokens, aggregate, Calibrator.load(checkpoint.path), interpolation, quantize, cache_entries,
                   factorised, segment_cache_entries)

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def max_length(self) -> int:
        return self.pair_encoder.max_length

    def __repr__(self) -> str:
        quant = f", quantize={self.quantize!r}" if self.quantize else ""
        factorised = ", factorised" if self.factorised else ""
        return (f"CrossEncoder({self.name!r}, backend={self.backend.name!r}{quant}, max_length={self.max_length}"
                f"{factorised})")

    @property
    def segment_cache(self) -> SegmentCache | None:
        return None if self.factorised is None else self.factorised.cache

    @cached_property
    def fingerprint(self) -> str:
        """Whose vectors a segment store holds: these weights, tokenizer and config, on this backend and precision
        (int8 and fp32 vectors differ; so, in the last digits, do torch's and ONNX Runtime's)."""
        return f"{self.checkpoint.content_hash}-{self.backend.name}-{self.quantize or 'fp32'}"

    def document_segments(self, contents: Sequence[str]) -> list[list[np.ndarray]]:
        """Each document's window segments as a factorised model encodes them (token ids, special tokens
        included): what an index stores vectors for. The windows do not depend on the query (any will do)."""
        if self.factorised is None:
            raise ValueError(f"{self.name} is not factorised: its document windows are read beside each query")
        rows, windows = self.pair_encoder.encode(["?"] * len(contents), list(contents))
        segments = [FactorisedScorer.split(row)[1] for row in rows]
        bounds = np.concatenate([[0], np.cumsum(windows)]).tolist()
        return [segments[start:stop] for start, stop in itertools.pairwise(bounds)]

    def encode_segments(self, segments: Sequence[np.ndarray], progress: tqdm | None = None) -> list[np.ndarray]:
        """The model's vector for each segment (no cache or store read): what `document_segments` are stored as."""
        if self.factorised is None:
            raise ValueError(f"{self.name} is not factorised: it has no segment vectors")
        return self.factorised.encode(segments, progress)

    def use_segment_store(self, source: str, store: SegmentStore | None) -> None:
        """Read document vectors from `store` (written by an index at `source`) before running the model; None
        forgets `source`'s. The scores do not change, only the work: stored vectors are the model's own, or the
        same weights' at the other faithful precision (`readable_in_place`: fp32 and bf16, which differ in the last
        digits). A store written for other weights, or int8 vectors for a model that is not int8, is refused."""
        if self.factorised is None:
            raise ValueError(f"{self.name} is not factorised: it cannot read stored segment vectors")
        if store is not None and not readable_in_place(store.fingerprint, self.fingerprint):
            raise ValueError(f"the segment store {store.path} holds another model's vectors ({store.fingerprint}); "
                             f"this one is {self.fingerprint}")
        stores = {name: known for name, known in self.factorised.stores.items() if name != source}
        if store is not None:
            stores[source] = store
        self.factorised.stores = stores  # replaced whole: a scoring thread sees the old mapping or this one

    @contextmanager
    def uncached(self) -> Iterator[None]:
        """Score without reading or filling the caches inside the block, on this thread only: what a latency
        measurement times is the model's work, not a memory lookup."""
        self._cold.active = True
        try:
            yield
        finally:
            self._cold.active = False

    def _caching(self) -> bool:
        return not getattr(self._cold, "active", False)

    def predict(self, pairs: Sequence[tuple[str, Any]], *, show_progress_bar: bool = False) -> np.ndarray:
        """Relevance logits for (query, document) pairs, in input order (sentence-transformers' `predict`)."""
        pairs = list(pairs)
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"pair {i}: expected a (query, document) pair, got {type(pair).__name__}")
        queries = [validate_query(query) for query, _ in pairs]
        documents = [Document.coerce(document, i) for i, (_, document) in enumerate(pairs)]
        return self.score(queries, documents, show_progress_bar=show_progress_bar).logits

    def score(self, queries: Sequence[str], documents: Sequence[Document], *,
              show_progress_bar: bool = False) -> PairScores:
        """Score aligned lists of queries and documents: the one place every front end comes through. With a cache,
        only pairs it has not seen run the model (each distinct pair once); the answer is the same either way."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents")
        if self.cache is None or not documents or not self._caching():
            return self._score(queries, documents, show_progress_bar)
        keys = [ScoreCache.key(query, document.content) for query, document in zip(queries, documents, strict=True)]
        known = dict(zip(keys, self.cache.get_many(keys), strict=True))
        first_missing: dict[bytes, int] = {}  # each distinct unseen pair once, at its first position
        for i, key in enumerate(keys):
            if known[key] is None:
                first_missing.setdefault(key, i)
        if first_missing:
            rows = list(first_missing.values())
            fresh = self._score([queries[i] for i in rows], [documents[i] for i in rows], show_progress_bar)
            scored = list(zip(fresh.logits.tolist(), fresh.windows.tolist(), strict=True))
            self.cache.put_many(list(first_missing), scored)
            known.update(zip(first_missing, scored, strict=True))
        logits = np.array([known[key][0] for key in keys], dtype=np.float32)
        windows = np.array([known[key][1] for key in keys], dtype=np.int64)
        return PairScores(logits, self.calibrator(logits), windows)

    def _score(self, queries: Sequence[str], documents: Sequence[Document], show_progress_bar: bool) -> PairScores:
        if not documents:
            empty = np.zeros(0, dtype=np.float32)
            return PairScores(empty, empty, np.zeros(0, dtype=np.int64))
        rows, windows = self.pair_encoder.encode(queries, [document.content for document in documents])
        with tqdm(total=len(rows), disable=not show_progress_bar, unit="pair", desc="rerank") as progress:
            if self.factorised is not None:
                row_logits = self.factorised.logits(rows, progress, use_cache=self._caching())
            else:
                row_logits = np.empty(len(rows), dtype=np.float32)
                for indices, batch in iter_batches(rows, self.batch_tokens, self.pad_id):
                    row_logits[indices] = self._logits(self.backend.run(batch))
                    progress.update(len(indices))
        logits = self._aggregate(row_logits, windows)
        return PairScores(logits, self.calibrator(logits), windows)

    def _logits(self, output: np.ndarray) -> np.ndarray:
        if self.num_labels == 2:  # log-odds of class 1, so sigmoid(logit) equals softmax's class-1 probability
            return output[:, 1] - output[:, 0]
        return output[:, 0]

    def _aggregate(self, row_logits: np.ndarray, windows: np.ndarray) -> np.ndarray:
        if int(windows.max()) == 1:
            return row_logits
        starts = np.concatenate([[0], np.cumsum(windows)[:-1]])
        if self.aggregate == "first":
            return row_logits[starts]
        reduce = np.maximum if self.aggregate == "max" else np.add
        combined = reduce.reduceat(row_logits, starts)
        return combined / windows if self.aggregate == "mean" else combined

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return self.calibrator(logits)

    def rank(self, query: str, documents: Sequence[Any], top_k: int | None = None,
             return_documents: bool = True) -> list[RankResult]:
        """Order documents (strings, Documents or dicts with `text`) by relevance to the query, best first."""
        return self.rank_many([query], [documents], top_k=top_k, return_documents=return_documents)[0]

    def rank_many(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[Any]], top_k: int | None = None,
                  return_documents: bool = True, *, show_progress_bar: bool = False) -> list[list[RankResult]]:
        """Rank several candidate lists in one pass, batching pairs across queries."""
        check_positive("top_k", top_k, optional=True)
        if len(queries) != len(candidate_lists):
            raise ValueError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists")
        queries = [validate_query(query) for query in queries]
        lists = [list(candidates) for candidates in candidate_lists]
        flat_queries: list[str] = []
        flat_documents: list[Document] = []
        for query, candidates in zip(queries, lists, strict=True):
            flat_queries += [query] * len(candidates)
            flat_documents += [Document.coerce(candidate, i) for i, candidate in enumerate(candidates)]
        scores = self.score(flat_queries, flat_documents, show_progress_bar=show_progress_bar)
        rankings, offset = [], 0
        for candidates in lists:
            span = slice(offset, offset + len(candidates))
            logits, probabilities, windows = scores.logits[span], scores.probabilities[span], scores.windows[span]
            order = np.argsort(-logits, kind="stable")[:top_k]
            rankings.append([
                RankResult(index=int(i), score=float(logits[i]), probability=float(probabilities[i]),
                           windows=int(windows[i]), document=candidates[i] if return_documents else None)
                for i in order
            ])
            offset += len(candidates)
        return rankings
