"""Counting tokens the way the LLM that reads the context will: its own `tokenizer.json` when given, else a
stated conservative estimate. A budget is only a promise if the counter that enforces it is the reader's.

The estimate, one token per 3 UTF-8 bytes, rounded up, over-counts English for the common LLM tokenizers (about
4 characters per token) by a third, so a budget met by the estimate is met by them too; for scripts that a
tokenizer splits finer than that (some CJK, emoji) pass the tokenizer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

BYTES_PER_TOKEN = 3


class TokenCounter(Protocol):
    """Counts the tokens a text costs in a prompt (no special tokens: the caller's template adds those once)."""

    name: str

    def count(self, texts: Sequence[str]) -> list[int]: ...


class EstimatedTokens:
    """ceil(UTF-8 bytes / 3): conservative for English with the usual LLM tokenizers."""

    name = f"estimate (1 token per {BYTES_PER_TOKEN} UTF-8 bytes)"

    def count(self, texts: Sequence[str]) -> list[int]:
        return [math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN) for text in texts]


class TokenizerTokens:
    """A Hugging Face `tokenizers` tokenizer, loaded from a local tokenizer.json (nothing is downloaded).

    Counts use a copy with padding and truncation switched off: many tokenizer.json files pad or truncate to a
    fixed length (a BERT one pads every text to 128), which would count every text the same and let a long one
    through as if it were short."""

    def __init__(self, tokenizer: Tokenizer, name: str) -> None:
        if tokenizer.padding is not None or tokenizer.truncation is not None:
            tokenizer = Tokenizer.from_str(tokenizer.to_str())  # the caller's tokenizer stays as it was
            tokenizer.no_padding()
            tokenizer.no_truncation()
        self.tokenizer, self.name = tokenizer, name

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TokenizerTokens:
        """A tokenizer.json, or a folder holding one (a model directory)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer not found: {path} (expected a tokenizer.json file or a folder "
                                    "holding one)")
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"{file} is not a tokenizer.json the tokenizers library can read: {error}") from None
        return cls(tokenizer, str(file))

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def token_counter(tokenizer: str | os.PathLike[str] | Tokenizer | TokenCounter | None) -> TokenCounter:
    """The counter for a `tokenizer` argument: None is the estimate; a path or a `Tokenizer` is that tokenizer."""
    if tokenizer is None:
        return EstimatedTokens()
    if isinstance(tokenizer, Tokenizer):
        return TokenizerTokens(tokenizer, "tokenizers.Tokenizer")
    if isinstance(tokenizer, (str, os.PathLike)):
        return TokenizerTokens.from_file(tokenizer)
    if callable(getattr(tokenizer, "count", None)):
        return tokenizer
    raise TypeError(f"tokenizer must be a tokenizer.json path, a tokenizers.Tokenizer or None, "
                    f"not {type(tokenizer).__name__}")
