"""Select the evidence an LLM should read: score, keep what is relevant enough, drop repeats, pack a token budget.

    selector = ContextSelector()                      # the bundled cross-encoder and bi-encoder
    context = selector.select("who wrote hamlet?", Index.open("my-index"), budget_tokens=512)
    prompt = context.render("numbered")               # "[1] Hamlet: ... written by William Shakespeare ..."

Steps, each recorded in `Context.dropped` when it leaves something out:
1. **Score passages** with the cross-encoder (from an index: retrieve, fuse, rerank the top `candidates`).
2. **Abstain or floor**: when even the best passage's calibrated probability is below `abstain_below` the list is
   judged not to hold the answer: the context is empty and `abstained` — the behaviour that keeps an LLM from
   answering from noise. Otherwise a passage below the relevance floor `min_probability` (a lower bar: noise) is
   dropped. Two thresholds, because they answer two questions: "does anything here answer?" is decided on the best
   passage, while a weaker passage beside a good one still often holds evidence (a higher floor cost recall).
3. **Granularity**: "passage" offers whole passages (cut to their leading sentences when the rest does not fit);
   "sentence" splits the kept passages into sentences, scores all of them in one batched pass and offers each
   (with `neighbours` sentences either side for coherence), so a long passage spends the budget only on its
   answering sentences. A sentence's score blends its own logit with its passage's (`sentence_weight`), because a
   sentence read alone loses its context ("It was founded in 1851").
4. **Deduplicate and diversify**: a piece whose normalised text is already inside a kept snippet, or whose
   bi-encoder cosine with one reaches `duplicate_cosine`, is a duplicate; `mmr_lambda` < 1 trades relevance for
   novelty (maximal marginal relevance over the bi-encoder embeddings).
5. **Pack** greedily by utility, never past `budget_tokens`: every piece is costed as its rendered block in the
   costliest style, and the finished context is counted again whole.
6. **Order** for the prompt: "score" (best first: the default, for models that read top-down), "document" (each
   source's snippets together in reading order: for answers that need a passage's flow), or "ends" (best first
   and last, weakest in the middle: against the lost-in-the-middle effect of long contexts).

The defaults (`DEFAULT_ABSTAIN_BELOW`, `DEFAULT_MIN_PROBABILITY`, `DEFAULT_SENTENCE_WEIGHT`) were chosen on training
splits only; the README's context section says on which and with what figures.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crossrank.context.result import SEPARATOR, STYLES, Context, Dropped, Snippet, render_block, render_snippets
from crossrank.context.tokens import TokenCounter, token_counter
from crossrank.pipeline import candidates_from_documents, search_pipeline
from crossrank.store.chunking import sentence_spans
from crossrank.types import Candidate, Document, SearchResult, best_first, check_positive

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.embedding import BiEncoder

Granularity = Literal["passage", "sentence"]
Order = Literal["score", "document", "ends"]
GRANULARITIES: tuple[Granularity, ...] = ("passage", "sentence")
ORDERS: tuple[Order, ...] = ("score", "document", "ends")
DEFAULT_ABSTAIN_BELOW = 0.05
DEFAULT_MIN_PROBABILITY = 0.01
DEFAULT_SENTENCE_WEIGHT = 0.5
DEFAULT_MMR_LAMBDA = 1.0
DEFAULT_DUPLICATE_COSINE = 0.95
MAX_BUDGET_TOKENS = 1_000_000  # beyond any LLM's context window: a bigger number is a unit mistake
WINDOW_FACTOR = 2  # pieces MMR picks among per round: enough to fill twice the budget left
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class _Passage:
    candidate: Candidate
    position: int  # in the incoming list: the first stage's order, "document" order across sources
    sentences: list[tuple[int, int]]
    logit: float
    probability: float


@dataclass(frozen=True)
class _Piece:
    """Sentences first..last (inclusive) of one passage, offered as one unit."""

    passage: int
    first: int
    last: int
    logit: float
    probability: float


def check_budget(budget_tokens: Any) -> int:
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int):
        raise TypeError(f"budget_tokens must be an integer, got {type(budget_tokens).__name__}")
    if not 0 < budget_tokens <= MAX_BUDGET_TOKENS:
        raise ValueError(f"budget_tokens must be between 1 and {MAX_BUDGET_TOKENS:,}, got {budget_tokens:,}")
    return budget_tokens


def _normalised(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class ContextSelector:
    """Models and settings loaded once; `select` is cheap to call per query and safe to share across threads.

    `model=None` ranks by the incoming order (a first stage's list) with no floor: the baseline packing a RAG
    stack does without a reranker, useful to measure what reranking and span selection add."""

    def __init__(self, model: CrossEncoder | None | Literal["default"] = "default", encoder: BiEncoder | None = None,
                 *, granularity: Granularity = "sentence", abstain_below: float = DEFAULT_ABSTAIN_BELOW,
                 min_probability: float = DEFAULT_MIN_PROBABILITY,
                 sentence_weight: float = DEFAULT_SENTENCE_WEIGHT, neighbours: int = 0,
                 mmr_lambda: float = DEFAULT_MMR_LAMBDA, duplicate_cosine: float | None = DEFAULT_DUPLICATE_COSINE,
                 order: Order = "score", tokenizer: str | os.PathLike[str] | Tokenizer | TokenCounter | None = None,
                 candidates: int = 50) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        for name, value in (("abstain_below", abstain_below), ("min_probability", min_probability),
                            ("sentence_weight", sentence_weight), ("mmr_lambda", mmr_lambda)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if duplicate_cosine is not None and not 0 < duplicate_cosine <= 1:
            raise ValueError(f"duplicate_cosine must be in (0, 1] or None (off), got {duplicate_cosine!r}")
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ValueError(f"neighbours must be an integer ≥ 0, got {neighbours!r}")
        check_positive("candidates", candidates)
        if model == "default":
            from crossrank.model.cross_encoder import CrossEncoder

            model = CrossEncoder.from_pretrained()
        if model is None and (min_probability > 0 or abstain_below > 0):
            raise ValueError("a relevance floor or abstention needs a cross-encoder's probabilities: pass a model, "
                             "or min_probability=0 and abstain_below=0")
        if model is None and mmr_lambda < 1:  # MMR weighs probabilities: NaN without a model, so it never acted
            raise ValueError("maximal marginal relevance needs a cross-encoder's probabilities: pass a model or "
                             "mmr_lambda=1")
        self.model, self._encoder = model, encoder
        self.granularity, self.order, self.neighbours, self.candidates = granularity, order, neighbours, candidates
        self.abstain_below, self.min_probability = float(abstain_below), float(min_probability)
        self.sentence_weight = float(sentence_weight)
        self.mmr_lambda, self.duplicate_cosine = float(mmr_lambda), duplicate_cosine
        self.counter = token_counter(tokenizer)

    def __repr__(self) -> str:
        model = "first stage order" if self.model is None else self.model.name
        return (f"ContextSelector({model!r}, granularity={self.granularity!r}, "
                f"abstain_below={self.abstain_below}, min_probability={self.min_probability}, order={self.order!r}, "
                f"tokens={self.counter.name!r})")

    def with_settings(self, **changes: Any) -> ContextSelector:
        """A copy that shares the loaded models, with some settings changed (a baseline, a per-request choice)."""
        settings = {"model": self.model, "encoder": self._encoder, "granularity": self.granularity,
                    "abstain_below": self.abstain_below, "min_probability": self.min_probability,
                    "sentence_weight": self.sentence_weight, "neighbours": self.neighbours,
                    "mmr_lambda": self.mmr_lambda, "duplicate_cosine": self.duplicate_cosine, "order": self.order,
                    "tokenizer": self.counter, "candidates": self.candidates}
        return ContextSelector(**{**settings, **changes})

    @property
    def encoder(self) -> BiEncoder:
        if self._encoder is None:
            from crossrank.model.embedding import BiEncoder

            self._encoder = BiEncoder.from_pretrained()
        return self._encoder

    # ---- entry point -------------------------------------------------------------------------------------------

    def select(self, query: str, source: Any, budget_tokens: int, *,
               filters: Mapping[str, Any] | None = None) -> Context:
        """The best evidence for `query` from `source` that fits `budget_tokens`.

        `source`: an `Index` (retrieved with every retriever it has, fused, and the top `candidates` reranked;
        `filters` apply), a `SearchResult`, or a list of candidates (strings, Documents, mappings with `text`, or
        pipeline Candidates) in first-stage order."""
        from crossrank.model.cross_encoder import validate_query

        validate_query(query)
        budget = check_budget(budget_tokens)
        if hasattr(source, "retrieve") and hasattr(source, "retrievers"):
            candidates, logits = self._from_index(query, source, filters)
        else:
            if filters is not None:
                raise ValueError("filters apply to an index; filter a candidate list before passing it")
            candidates, logits = self._coerce(source), None
        scored = self._score_passages(query, candidates, logits)
        passages = [p for p in scored if p.sentences]  # a blank passage has nothing to quote
        dropped = [Dropped(p.candidate.doc_id, p.candidate.id, 0, len(p.candidate.text), "empty", p.probability,
                           "no text to quote") for p in scored if not p.sentences]
        best = max((p.probability for p in passages), default=math.nan)
        if self.model is not None and best < self.abstain_below:
            reason = (f"nothing here looks like an answer: best probability {best:.3f} < abstain_below "
                      f"{self.abstain_below}")
            dropped += [self._dropped(passages, i, 0, len(p.sentences) - 1, "abstain", p.probability)
                        for i, p in enumerate(passages)]
            return self._context(query, budget, [], passages, dropped, abstained=True, reason=reason)
        kept = [i for i, p in enumerate(passages) if self.model is None or p.probability >= self.min_probability]
        dropped += [self._dropped(passages, i, 0, len(p.sentences) - 1, "floor", p.probability)
                    for i, p in enumerate(passages) if i not in set(kept)]
        if not kept:
            reason = ("no candidates to select from" if not scored else
                      "every candidate is blank: no text to select from" if not passages else
                      f"no passage reached the relevance floor: best probability {best:.3f} < "
                      f"min_probability {self.min_probability}")
            return self._context(query, budget, [], passages, dropped, abstained=True, reason=reason)
        pieces = self._pieces(query, passages, kept)
        chosen, packing_drops = self._pack(passages, pieces, budget)
        return self._context(query, budget, chosen, passages, dropped + packing_drops)

    # ---- candidates and scores ---------------------------------------------------------------------------------

    def _from_index(self, query: str, index: Any, filters: Mapping[str, Any] | None
                    ) -> tuple[list[Candidate], list[float] | None]:
        if index.count()["passages"] == 0:
            raise ValueError(f"the index at {index.path} holds no documents: add some with `crossrank index`")
        pipeline = search_pipeline(index, index.retrievers, reranker=self.model, rerank_k=self.candidates,
                                   first_stage_weight=None, k=self.candidates)
        found = pipeline.search(query, filters=filters).candidates
        if self.model is None:
            return found, None
        return found, [c.scores["rerank"] for c in found]

    def _coerce(self, source: Any) -> list[Candidate]:
        if isinstance(source, SearchResult):
            return list(source.candidates)
        if isinstance(source, (str, bytes)) or not isinstance(source, Sequence):
            raise TypeError(f"source must be an Index, a SearchResult or a list of candidates, "
                            f"not {type(source).__name__}")
        if all(isinstance(item, Candidate) for item in source):
            return list(source)
        return candidates_from_documents(source)

    def _score_passages(self, query: str, candidates: list[Candidate],
                        logits: Sequence[float] | None) -> list[_Passage]:
        if self.model is None:  # first-stage order: a rank-based utility, no probability
            logits = [float(len(candidates) - i) for i in range(len(candidates))]
            probabilities = [math.nan] * len(candidates)
        else:
            if logits is None:
                logits = self.model.score([query] * len(candidates), [c.document for c in candidates]).logits
            probabilities = self.model.probabilities(np.asarray(logits, dtype=np.float32)).tolist()
        passages = []
        for position, (candidate, logit, probability) in enumerate(zip(candidates, logits, probabilities,
                                                                       strict=True)):
            sentences = [_stripped(candidate.text, *span) for span in sentence_spans(candidate.text)]
            passages.append(_Passage(candidate, position, sentences, float(logit), float(probability)))
        return passages

    def _pieces(self, query: str, passages: list[_Passage], kept: list[int]) -> list[_Piece]:
        """What packing may choose from, best first."""
        if self.granularity == "passage":
            pieces = [_Piece(i, 0, len(passages[i].sentences) - 1, passages[i].logit, passages[i].probability)
                      for i in kept]
            return best_first(pieces, lambda piece: piece.logit)
        split = [(i, s) for i in kept for s in range(len(passages[i].sentences)) if len(passages[i].sentences) > 1]
        documents = [Document(text=self._text(passages[i], s, s), title=passages[i].candidate.title)
                     for i, s in split]
        scores = self.model.score([query] * len(documents), documents) if self.model and documents else None
        own = {key: float(scores.logits[n]) for n, key in enumerate(split)} if scores is not None else {}
        spans, logits = [], []
        for i in kept:
            passage = passages[i]
            for s in range(len(passage.sentences)):
                blended = passage.logit
                if (i, s) in own:
                    blended = self.sentence_weight * own[(i, s)] + (1 - self.sentence_weight) * passage.logit
                spans.append((i, max(0, s - self.neighbours), min(len(passage.sentences) - 1, s + self.neighbours)))
                logits.append(blended)
        probabilities = ([passages[i].probability for i, _, _ in spans] if self.model is None
                         else self.model.probabilities(np.asarray(logits, dtype=np.float32)).tolist())
        pieces = [_Piece(i, first, last, float(logit), float(probability))
                  for (i, first, last), logit, probability in zip(spans, logits, probabilities, strict=True)]
        return best_first(pieces, lambda piece: piece.logit)

    # ---- packing -----------------------------------------------------------------------------------------------

    @staticmethod
    def _text(passage: _Passage, first: int, last: int) -> str:
        return passage.candidate.text[passage.sentences[first][0]:passage.sentences[last][1]]

    def _cost(self, passages: list[_Passage], pieces: Sequence[_Piece], marker: int) -> list[int]:
        """Tokens each piece's block costs in the costliest style, with the separator before it."""
        separator = self.counter.count([SEPARATOR])[0]
        blocks = []
        for piece in pieces:
            passage = passages[piece.passage]
            text = self._text(passage, piece.first, piece.last)
            blocks += [render_block(style, marker, passage.candidate.title, text, passage.candidate.doc_id)
                       for style in STYLES]
        counts = self.counter.count(blocks) if blocks else []
        return [max(counts[n * len(STYLES):(n + 1) * len(STYLES)]) + separator for n in range(len(pieces))]

    def _pack(self, passages: list[_Passage], pieces: list[_Piece], budget: int
              ) -> tuple[list[_Piece], list[Dropped]]:
        """Greedy by utility (MMR when mmr_lambda < 1), within the budget, skipping duplicates."""
        marker = max(len(pieces), 1)  # the widest marker a piece could get, so costs never under-count
        chosen: list[_Piece] = []
        cost_of_chosen: list[int] = []
        vectors: list[np.ndarray] = []
        dropped: list[Dropped] = []
        remaining = budget
        queue = list(pieces)
        costs = self._cost(passages, queue, marker)  # once: a piece's cost at the widest marker never changes
        while queue:
            window, spent = [], 0
            for piece, cost in zip(queue, costs, strict=True):  # enough to fill the budget left twice over
                if spent >= WINDOW_FACTOR * remaining:
                    break
                window.append(piece)
                spent += cost
            if not window:  # nothing fits in what is left
                dropped += [self._dropped(passages, p.passage, p.first, p.last, "budget", p.probability,
                                          "the budget is spent") for p in queue]
                break
            queue, costs = queue[len(window):], costs[len(window):]
            # MMR picks among the window's embeddings; without it a piece is embedded only once it fits, since
            # most pieces of a long list never do and embedding each to find that out cost more than reranking.
            embeddings = self._embed(passages, window) if self.mmr_lambda < 1 else None
            while window:
                pick = self._next(window, embeddings, vectors)
                piece, vector = window.pop(pick), None if embeddings is None else embeddings[pick]
                if embeddings is not None:
                    embeddings = np.delete(embeddings, pick, axis=0)
                duplicate = self._contained_in(passages, piece, chosen)
                if duplicate is None:
                    merged, replaced = self._merged(piece, chosen)
                    fitted = self._fit(passages, merged, marker,
                                       remaining + sum(cost_of_chosen[n] for n in replaced))
                    if fitted is None:
                        dropped.append(self._dropped(passages, piece.passage, piece.first, piece.last, "budget",
                                                     piece.probability, f"{remaining} tokens left"))
                        continue
                    if vector is None and self.duplicate_cosine is not None:
                        vector = self._embed(passages, [piece])[0]
                    duplicate = self._cosine_twin(passages, piece, vector, chosen, vectors)
                if duplicate is not None:
                    dropped.append(self._dropped(passages, piece.passage, piece.first, piece.last, "duplicate",
                                                 piece.probability, f"same as {duplicate}"))
                    continue
                fitted_piece, cost = fitted
                if fitted_piece.last < merged.last:  # cut to its leading sentences: the rest is left out, say so
                    dropped.append(self._dropped(passages, merged.passage, fitted_piece.last + 1, merged.last,
                                                 "budget", piece.probability, f"cut: {remaining} tokens left"))
                if replaced:
                    remaining += sum(cost_of_chosen[n] for n in replaced)
                    chosen[replaced[0]], cost_of_chosen[replaced[0]] = fitted_piece, cost
                    for n in reversed(replaced[1:]):  # bridged into the first: one snippet, not overlapping ones
                        del chosen[n], cost_of_chosen[n]
                        if vectors:
                            del vectors[n]
                else:
                    chosen.append(fitted_piece)
                    cost_of_chosen.append(cost)
                    if vector is not None:
                        vectors.append(vector)
                remaining -= cost
        return chosen, dropped

    def _embed(self, passages: list[_Passage], pieces: list[_Piece]) -> np.ndarray:
        return self.encoder.encode([self._text(passages[p.passage], p.first, p.last) for p in pieces])

    def _next(self, window: list[_Piece], embeddings: np.ndarray | None, chosen: list[np.ndarray]) -> int:
        """The next piece to try: the best by utility, or by maximal marginal relevance."""
        if self.mmr_lambda >= 1 or embeddings is None or not chosen:
            return 0
        relevance = np.array([p.probability for p in window])
        similarity = (embeddings @ np.stack(chosen).T).max(axis=1)
        return int(np.argmax(self.mmr_lambda * relevance - (1 - self.mmr_lambda) * similarity))

    def _contained_in(self, passages: list[_Passage], piece: _Piece, chosen: list[_Piece]) -> str | None:
        """The chosen snippet of another passage that already holds this piece's text (an exact or near copy)."""
        text = _normalised(self._text(passages[piece.passage], piece.first, piece.last))
        inside = re.compile(rf"(?<!\w){re.escape(text)}(?!\w)")  # whole words: "yes." is not inside "my eyes."
        for other in chosen:
            if other.passage != piece.passage and inside.search(
                    _normalised(self._text(passages[other.passage], other.first, other.last))):
                return passages[other.passage].candidate.id
        return None

    def _cosine_twin(self, passages: list[_Passage], piece: _Piece, vector: np.ndarray | None,
                     chosen: list[_Piece], vectors: list[np.ndarray]) -> str | None:
        """The chosen snippet whose embedding is within `duplicate_cosine` of this piece's (a paraphrase)."""
        if vector is not None and vectors and self.duplicate_cosine is not None:
            similarity = np.stack(vectors) @ vector
            _, merging = self._merged(piece, chosen)
            similarity[merging] = -np.inf  # what it overlaps or touches in its own passage it joins, not repeats
            best = int(np.argmax(similarity))
            if similarity[best] >= self.duplicate_cosine:  # vectors[n] is chosen[n]'s (a merge keeps the first)
                return f"{passages[chosen[best].passage].candidate.id} (cosine {similarity[best]:.3f})"
        return None

    @staticmethod
    def _merged(piece: _Piece, chosen: list[_Piece]) -> tuple[_Piece, list[int]]:
        """A piece touching or overlapping chosen pieces of the same passage joins them as one snippet (all of
        them: a piece between two chosen ones bridges them). Returns the merged piece and the indices it replaces."""
        replaced = [n for n, other in enumerate(chosen) if other.passage == piece.passage
                    and piece.first <= other.last + 1 and other.first <= piece.last + 1]
        if not replaced:
            return piece, []
        group = [piece] + [chosen[n] for n in replaced]
        return replace(chosen[replaced[0]], first=min(p.first for p in group), last=max(p.last for p in group),
                       logit=max(p.logit for p in group), probability=max(p.probability for p in group)), replaced

    def _fit(self, passages: list[_Passage], piece: _Piece, marker: int, room: int) -> tuple[_Piece, int] | None:
        """The piece if it fits in `room`; a whole passage may be cut to its leading sentences; else None."""
        cost = self._cost(passages, [piece], marker)[0]
        if cost <= room:
            return piece, cost
        if self.granularity != "passage":
            return None
        prefixes = [replace(piece, last=last) for last in range(piece.first, piece.last)]
        if not prefixes:
            return None
        fitting = [(p, c) for p, c in zip(prefixes, self._cost(passages, prefixes, marker), strict=True) if c <= room]
        return fitting[-1] if fitting else None

    # ---- the result --------------------------------------------------------------------------------------------

    def _dropped(self, passages: list[_Passage], i: int, first: int, last: int, reason: Any, probability: float,
                 detail: str = "") -> Dropped:
        passage = passages[i]
        start = passage.sentences[first][0] if passage.sentences else 0
        end = passage.sentences[last][1] if passage.sentences else len(passage.candidate.text)
        return Dropped(passage.candidate.doc_id, passage.candidate.id, start, end, reason, probability, detail)

    def _ordered(self, passages: list[_Passage], pieces: list[_Piece]) -> list[_Piece]:
        by_score = best_first(pieces, lambda piece: piece.logit)
        if self.order == "document":
            return sorted(pieces, key=lambda p: (passages[p.passage].position, p.first))
        if self.order == "ends":  # 1st, 3rd, 5th, ... then ..., 6th, 4th, 2nd: the weakest land in the middle
            return by_score[0::2] + by_score[1::2][::-1]
        return by_score

    def _context(self, query: str, budget: int, chosen: list[_Piece], passages: list[_Passage],
                 dropped: list[Dropped], *, abstained: bool = False, reason: str | None = None) -> Context:
        ordered = self._ordered(passages, chosen)
        snippets = self._snippets(passages, ordered)
        while snippets and (tokens := self._tokens(snippets)) > budget:  # a tokenizer may merge across blocks
            weakest = min(range(len(snippets)), key=lambda n: snippets[n].score)
            cut = snippets[weakest]
            dropped.append(Dropped(cut.doc_id, cut.passage_id, cut.start, cut.end, "budget", cut.probability,
                                   f"the whole context counted {tokens} tokens"))
            ordered.pop(weakest)
            snippets = self._snippets(passages, ordered)
        return Context(query, snippets, budget, self._tokens(snippets), self.counter.name, self.granularity,
                       self.order, self.abstain_below, self.min_probability, abstained, reason, dropped)

    def _snippets(self, passages: list[_Passage], pieces: list[_Piece]) -> list[Snippet]:
        out = []
        for marker, piece in enumerate(pieces, start=1):
            passage = passages[piece.passage]
            candidate = passage.candidate
            start, end = passage.sentences[piece.first][0], passage.sentences[piece.last][1]
            tokens = max(self.counter.count([render_block(style, marker, candidate.title, candidate.text[start:end],
                                                          candidate.doc_id) for style in STYLES]))
            out.append(Snippet(marker, candidate.doc_id, candidate.id, candidate.title, candidate.text[start:end],
                               start, end, piece.logit, piece.probability, passage.probability, tokens,
                               candidate.metadata))
        return out

    def _tokens(self, snippets: list[Snippet]) -> int:
        return max(self.counter.count([render_snippets(style, snippets) for style in STYLES])) if snippets else 0


def select_context(query: str, source: Any, budget_tokens: int, *, filters: Mapping[str, Any] | None = None,
                   **settings: Any) -> Context:
    """One call: `ContextSelector(**settings).select(query, source, budget_tokens)`. Loading the models is the
    expensive part, so build a `ContextSelector` once when selecting for many queries."""
    return ContextSelector(**settings).select(query, source, budget_tokens, filters=filters)
