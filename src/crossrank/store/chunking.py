"""Split documents into passages that fit the bi-encoder: token-counted with its own tokenizer, cut on
paragraph and sentence boundaries, with a configurable overlap so a fact split across a cut is still found.

Passages are exact substrings of the document (char spans), so nothing is rewritten or lost between them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

PARAGRAPH = re.compile(r"\n\s*\n")
SENTENCE_END = re.compile(r"(?<=[.!?…。])[\"')\]]*\s+")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    tokens: int


class Chunker:
    """Greedy packing of sentences into passages of at most `max_tokens` tokens, `overlap` tokens carried over."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int = 256, overlap: int = 32) -> None:
        self.validate(max_tokens, overlap)
        self.tokenizer, self.max_tokens, self.overlap = tokenizer, max_tokens, overlap

    @staticmethod
    def validate(max_tokens: int, overlap: int) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 16:
            raise ValueError(f"passage size must be an integer of at least 16 tokens, got {max_tokens!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < max_tokens // 2:
            raise ValueError(f"overlap must be an integer in [0, {max_tokens // 2}), got {overlap!r}")

    def split(self, texts: Sequence[str]) -> list[list[str]]:
        """Passages for each text, in order; an empty or whitespace-only text has none."""
        encodings = self.tokenizer.encode_batch([t for t in texts], add_special_tokens=False)
        out = []
        for text, encoding in zip(texts, encodings, strict=True):
            if not text.strip():
                out.append([])
            elif len(encoding.ids) <= self.max_tokens:
                out.append([text.strip()])
            else:
                out.append([text[s.start:s.end].strip() for s in self._pack(text)])
        return out

    def _segments(self, text: str) -> list[Span]:
        """Sentences (within paragraphs) as char spans with token counts; over-long ones cut by tokens."""
        bounds = sentence_spans(text)
        encodings = self.tokenizer.encode_batch([text[a:b] for a, b in bounds], add_special_tokens=False)
        segments = []
        for (start, end), encoding in zip(bounds, encodings, strict=True):
            if len(encoding.ids) <= self.max_tokens:
                segments.append(Span(start, end, len(encoding.ids)))
                continue
            offsets = encoding.offsets
            step = self.max_tokens - self.overlap
            for first in range(0, len(offsets), step):
                last = min(first + self.max_tokens, len(offsets)) - 1
                segments.append(Span(start + offsets[first][0], start + offsets[last][1], last - first + 1))
                if last == len(offsets) - 1:
                    break
        return segments

    def _pack(self, text: str) -> list[Span]:
        passages: list[Span] = []
        current: list[Span] = []
        for segment in self._segments(text):
            if current and sum(s.tokens for s in current) + segment.tokens > self.max_tokens:
                passages.append(Span(current[0].start, current[-1].end, sum(s.tokens for s in current)))
                carried: list[Span] = []
                for previous in reversed(current):
                    if sum(s.tokens for s in carried) + previous.tokens > self.overlap:
                        break
                    carried.insert(0, previous)
                if sum(s.tokens for s in carried) + segment.tokens > self.max_tokens:
                    carried = []
                current = carried
            current.append(segment)
        if current:
            passages.append(Span(current[0].start, current[-1].end, sum(s.tokens for s in current)))
        return passages


def stitch(passages: Sequence[str]) -> str:
    """A document's text again from its passages in order (the inverse of `Chunker.split`, up to whitespace at
    the cuts): the start of each passage that repeats the end of the one before (the overlap `Chunker` carries
    over) is dropped, and passages that did not overlap are joined by one space (the cut's whitespace was
    stripped)."""
    text, previous = "", ""
    for passage in passages:
        shared = _overlap(previous, passage)
        text = text + passage[shared:] if shared else " ".join(part for part in (text, passage) if part)
        previous = passage
    return text


def _overlap(previous: str, following: str) -> int:
    """Length of the longest suffix of `previous` that `following` starts with (0 if none)."""
    start = previous.find(following[:1], max(0, len(previous) - len(following)))
    while following and start != -1:
        if following.startswith(previous[start:]):
            return len(previous) - start
        start = previous.find(following[0], start + 1)
    return 0


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences as (start, end) char spans, paragraph breaks respected; blank stretches belong to none."""
    bounds = []
    for paragraph in _spans(text, PARAGRAPH, 0, len(text)):
        bounds += _spans(text, SENTENCE_END, *paragraph)
    return bounds


def _spans(text: str, separator: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    """Non-blank pieces of text[start:end] between separator matches, as absolute char spans."""
    pieces, cursor = [], start
    for match in separator.finditer(text, start, end):
        pieces.append((cursor, match.start()))
        cursor = match.end()
    pieces.append((cursor, end))
    return [(a, b) for a, b in pieces if text[a:b].strip()]
