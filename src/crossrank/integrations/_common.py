"""What the LangChain and LlamaIndex adapters share: the selector settings as pydantic fields (both frameworks'
components are pydantic models), one selector built from them, and the crossrank fields each snippet carries.

Each input is handed to the selector under its position as id, so a snippet maps back to exactly the document (node)
it quotes even when the caller's ids are missing or repeated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from crossrank.context import (
    DEFAULT_MIN_PROBABILITY,
    Context,
    ContextSelector,
    Granularity,
    Order,
    Snippet,
)
from crossrank.context.selection import (
    DEFAULT_ABSTAIN_BELOW,
    DEFAULT_DUPLICATE_COSINE,
    DEFAULT_MMR_LAMBDA,
    DEFAULT_SENTENCE_WEIGHT,
    check_budget,
)
from crossrank.types import Document

logger = logging.getLogger("crossrank.integrations")

SELECTOR_SETTINGS = ("model", "encoder", "granularity", "abstain_below", "min_probability", "sentence_weight",
                     "neighbours", "mmr_lambda", "duplicate_cosine", "order", "tokenizer")
_VALUES = (str, int, float, type(None))


def missing_extra(module: str, package: str, extra: str) -> ImportError:
    return ImportError(f"{module} needs {package}, which crossrank does not install by default: "
                       f"pip install 'crossrank[{extra}]'")


def _same(a: Any, b: Any) -> bool:
    """Settings values are equal: numbers and strings by value, models and tokenizers by identity."""
    return a is b or (isinstance(a, _VALUES) and type(a) is type(b) and a == b)


class SelectorCache:
    """The `ContextSelector` for the current settings, rebuilt only when one changes (framework code reassigns
    fields, e.g. LlamaIndex's `callback_manager`; a user may set `order` or `granularity`). A rebuild keeps the
    models already loaded: the bundled cross-encoder for model="default", a bi-encoder loaded on first use."""

    def __init__(self) -> None:
        self.built: tuple[dict[str, Any], ContextSelector] | None = None  # one attribute: read and replaced whole

    def get(self, settings: dict[str, Any]) -> ContextSelector:
        built = self.built
        if built is not None and all(_same(settings[k], built[0][k]) for k in SELECTOR_SETTINGS):
            return built[1]
        arguments = dict(settings)
        if built is not None:
            before, previous = built
            if _same(arguments["model"], "default") and _same(before["model"], "default"):
                arguments["model"] = previous.model
            if arguments["encoder"] is None and before["encoder"] is None:
                arguments["encoder"] = previous._encoder  # None until the selector needed one
        selector = ContextSelector(**arguments)
        self.built = (dict(settings), selector)
        return selector


class ContextSettings(BaseModel):
    """The `ContextSelector` settings as fields (crossrank.context.selection documents each), the budget, and where
    a title is found. The models and the tokenizer are not serialised (`exclude`): a round trip through a dict or
    JSON falls back to the bundled models and the estimate."""

    budget_tokens: int = Field(description="most tokens the selected snippets may cost, rendered (1..1,000,000)")
    model: Any = Field(default="default", exclude=True,
                       description="a crossrank CrossEncoder, 'default' (the bundled one) or None (keep the "
                                   "incoming order: no scores, so abstain_below and min_probability must be 0)")
    encoder: Any = Field(default=None, exclude=True,
                         description="a crossrank BiEncoder for near-duplicates and MMR; None loads the bundled one "
                                     "when first needed (never, with duplicate_cosine=None and mmr_lambda=1)")
    granularity: Granularity = Field(default="sentence", description="'sentence' spans or whole 'passage's")
    abstain_below: float = Field(default=DEFAULT_ABSTAIN_BELOW,
                                 description="when even the best document's calibrated probability is below this, "
                                             "the result is empty (abstention)")
    min_probability: float = Field(default=DEFAULT_MIN_PROBABILITY,
                                   description="relevance floor on the calibrated probability: weaker documents are "
                                               "left out")
    sentence_weight: float = DEFAULT_SENTENCE_WEIGHT
    neighbours: int = 0
    mmr_lambda: float = DEFAULT_MMR_LAMBDA
    duplicate_cosine: float | None = DEFAULT_DUPLICATE_COSINE
    order: Order = Field(default="score", description="'score', 'document' (input order) or 'ends'")
    tokenizer: Any = Field(default=None, exclude=True,
                           description="the reading LLM's tokenizer.json (path or tokenizers.Tokenizer) to count "
                                       "the budget in; None is the conservative estimate")
    title_key: str | None = Field(default="title",
                                  description="metadata key whose string value the cross-encoder reads as the "
                                              "input's title; None: no titles")

    _cache: SelectorCache = PrivateAttr(default_factory=SelectorCache)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        check_budget(self.budget_tokens)
        self.selector  # noqa: B018 - bad settings fail here, and the default model loads once, not on first use

    @property
    def selector(self) -> ContextSelector:
        """The selector for the current field values (built again only after one of them changed)."""
        return self._cache.get({name: getattr(self, name) for name in SELECTOR_SETTINGS})

    def _select(self, query: str, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> Context:
        titles = [_title(metadata, self.title_key) for metadata in metadatas]
        documents = [Document(text=text, title=title, id=str(position))
                     for position, (text, title) in enumerate(zip(texts, titles, strict=True))]
        context = self.selector.select(query, documents, check_budget(self.budget_tokens))
        if context.abstained:
            logger.info("crossrank selected no context for %r: %s", query, context.reason)
        return context


def _title(metadata: Mapping[str, Any], key: str | None) -> str:
    value = metadata.get(key) if key is not None else None
    return value if isinstance(value, str) else ""


def source_position(snippet: Snippet) -> int:
    """The position in the caller's list of the input a snippet quotes (its id, as `_select` assigned it)."""
    return int(snippet.doc_id)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value  # NaN: model=None has no probabilities; None stores as JSON null


def snippet_fields(snippet: Snippet, source_id: str | None) -> dict[str, Any]:
    """The crossrank metadata of one selected snippet; `crossrank_start`/`crossrank_end` index the input's text."""
    return {"crossrank_source_index": source_position(snippet), "crossrank_source_id": source_id,
            "crossrank_marker": snippet.marker, "crossrank_start": snippet.start, "crossrank_end": snippet.end,
            "crossrank_score": snippet.score, "crossrank_probability": _number(snippet.probability),
            "crossrank_passage_probability": _number(snippet.passage_probability),
            "crossrank_tokens": snippet.tokens}
