"""Shared value types: the ground floor every other module imports and none of them extends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """A text to rank. `title`, when present, is encoded as "title: text"; `metadata` passes through untouched."""

    text: str
    title: str = ""
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> str:
        """The string the models read."""
        return f"{self.title}: {self.text}" if self.title else self.text

    @classmethod
    def coerce(cls, value: Any, index: int) -> Document:
        """Accept a str, a Document or a mapping with `text` (optional `title`, `id`, anything else as metadata).

        `index` is the position in the caller's list, named in the error so the bad item is easy to find.
        The caller's object is never mutated.
        """
        if isinstance(value, Document):
            return value
        if isinstance(value, str):
            return cls(text=value)
        if isinstance(value, Mapping):
            text = value.get("text")
            if not isinstance(text, str):
                raise TypeError(
                    f"document {index}: a mapping needs a string 'text' field, got {type(text).__name__}"
                )
            title = value.get("title") or ""
            if not isinstance(title, str):
                raise TypeError(f"document {index}: 'title' must be a string, got {type(title).__name__}")
            doc_id = value.get("id")
            metadata = {k: v for k, v in value.items() if k not in ("text", "title", "id")}
            return cls(text=text, title=title, id=None if doc_id is None else str(doc_id), metadata=metadata)
        raise TypeError(
            f"document {index}: expected a string or a mapping with 'text', got {type(value).__name__}"
        )


@dataclass(frozen=True)
class RankResult:
    """One reranked document: its position in the caller's input, raw logit, probability, and windows used."""

    index: int
    score: float
    probability: float
    windows: int
    document: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "score": self.score,
            "probability": self.probability,
            "windows": self.windows,
        }
        if self.document is not None:
            out["document"] = self.document
        return out
