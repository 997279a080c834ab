"""What `select_context` hands to a prompt: cited snippets, how to render them, and what was left out and why."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from xml.sax.saxutils import escape, quoteattr

Style = Literal["numbered", "xml", "markdown"]
STYLES: tuple[Style, ...] = ("numbered", "xml", "markdown")
SEPARATOR = "\n\n"
DropReason = Literal["empty", "abstain", "floor", "duplicate", "budget"]


@dataclass(frozen=True)
class Snippet:
    """A piece of one passage: `text` is exactly `passage text[start:end]` (cut at sentence boundaries).

    `score` is the cross-encoder logit it was selected by and `probability` its calibrated probability;
    `passage_probability` is the whole passage's, which the relevance floor applies to. `tokens` is the most its
    rendered block costs in any style."""

    marker: int
    doc_id: str
    passage_id: str
    title: str
    text: str
    start: int
    end: int
    score: float
    probability: float
    passage_probability: float
    tokens: int
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({**asdict(self), "metadata": dict(self.metadata)})


@dataclass(frozen=True)
class Dropped:
    """Evidence left out: `empty` (a blank passage: nothing to quote), `abstain` (the whole list: even its best
    passage is below `abstain_below`), `floor` (probability below the relevance floor), `duplicate` (same or
    near-same text as a kept snippet: `detail` names it) or `budget` (did not fit in what was left)."""

    doc_id: str
    passage_id: str
    start: int
    end: int
    reason: DropReason
    probability: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    """No probability (NaN: a selector without a cross-encoder) becomes null, so the dict is strict JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def render_block(style: Style, marker: int, title: str, text: str, doc_id: str) -> str:
    """One snippet as it appears in the prompt. Every style carries the marker the answer cites."""
    if style == "numbered":
        return f"[{marker}] {title}: {text}" if title else f"[{marker}] {text}"
    if style == "xml":
        title_attribute = f" title={quoteattr(title)}" if title else ""
        return f"<source id=\"{marker}\" doc={quoteattr(doc_id)}{title_attribute}>{escape(text)}</source>"
    if style == "markdown":
        return f"**[{marker}] {title}**\n{text}" if title else f"**[{marker}]**\n{text}"
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


@dataclass(frozen=True)
class Context:
    """The selected evidence, in prompt order, with markers 1..n.

    `tokens` is the rendered context's size in the style that costs most, so any `render` style stays within
    `budget`. `abstained` is True when even the best passage is below `abstain_below` (or none reached the
    relevance floor): the context is empty and `reason` says why, so the caller can answer "not found" instead of
    letting the LLM guess."""

    query: str
    snippets: Sequence[Snippet]
    budget: int
    tokens: int
    tokenizer: str
    granularity: str
    order: str
    abstain_below: float
    min_probability: float
    abstained: bool = False
    reason: str | None = None
    dropped: Sequence[Dropped] = ()

    def render(self, style: Style = "numbered") -> str:
        """The context as prompt text; each snippet opens with its citation marker ([1], id="1", **[1]**)."""
        if style not in STYLES:  # here too: an empty context renders no block that would check it
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        return render_snippets(style, self.snippets)

    @property
    def citations(self) -> dict[str, dict[str, Any]]:
        """Marker → source: "[1]" → doc id, passage id, title and the char span of the passage it quotes."""
        return {f"[{s.marker}]": {"doc_id": s.doc_id, "passage_id": s.passage_id, "title": s.title,
                                  "start": s.start, "end": s.end} for s in self.snippets}

    def __len__(self) -> int:
        return len(self.snippets)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "abstained": self.abstained, "reason": self.reason, "budget": self.budget,
                "tokens": self.tokens, "tokenizer": self.tokenizer, "granularity": self.granularity,
                "order": self.order, "abstain_below": self.abstain_below, "min_probability": self.min_probability,
                "snippets": [s.to_dict() for s in self.snippets], "dropped": [d.to_dict() for d in self.dropped]}


def render_snippets(style: Style, snippets: Sequence[Snippet]) -> str:
    return SEPARATOR.join(render_block(style, s.marker, s.title, s.text, s.doc_id) for s in snippets)
