"""Pair and single-text encoding with explicit truncation: the query is cut only past `max_query_tokens`,
the document gets the rest of `max_length`, and long documents become overlapping windows — never a silent cut.

The tokenizer's own truncation and padding settings (all-MiniLM-L6-v2's tokenizer.json pads and truncates at
128) are switched off once at load; afterwards the tokenizer is only read, which keeps it safe to share across
threads (mutating it per call is what raises "Already borrowed" in other libraries).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Encoding, Tokenizer

LongDocuments = Literal["windows", "truncate", "error"]
LONG_DOCUMENT_POLICIES = ("windows", "truncate", "error")


class DocumentTooLongError(ValueError):
    """Raised under long_documents="error" for a document that does not fit one window."""


def load_tokenizer(model_dir: Path) -> tuple[Tokenizer, int]:
    """Return a fast tokenizer with truncation and padding off, and the id of its padding token."""
    if (model_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True, local_files_only=True)
        tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer, _pad_token_id(model_dir, tokenizer)


def _pad_token_id(model_dir: Path, tokenizer: Tokenizer) -> int:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = model_dir / name
        if file.is_file():
            pad = json.loads(file.read_text(encoding="utf-8")).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str) and tokenizer.token_to_id(pad) is not None:
                return int(tokenizer.token_to_id(pad))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("pad_token_id") is not None:
        return int(config["pad_token_id"])
    for token in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return 0


@dataclass(frozen=True)
class EncodedRow:
    """One model input row: token ids and segment ids, plus which input item it belongs to."""

    item: int
    input_ids: np.ndarray
    token_type_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def _to_sequence(item: int, encoding: Encoding) -> EncodedRow:
    return EncodedRow(
        item=item,
        input_ids=np.asarray(encoding.ids, dtype=np.int64),
        token_type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
    )


class PairEncoder:
    """Encode (query, document) pairs into model rows, windowing documents that do not fit.

    A window holds what fits beside the query (`max_length` minus the query and the special tokens), unless
    `window_tokens` fixes it: a factorised model encodes each document window on its own, so its windows need not
    depend on the query — the same document then always gives the same segments, whatever is asked of it."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int,
        max_query_tokens: int = 64,
        long_documents: LongDocuments = "windows",
        window_overlap: int = 32,
        window_tokens: int | None = None,
    ) -> None:
        if long_documents not in LONG_DOCUMENT_POLICIES:
            raise ValueError(f"long_documents must be one of {LONG_DOCUMENT_POLICIES}, got {long_documents!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_query_tokens = max_query_tokens
        self.long_documents = long_documents
        self.special_tokens = tokenizer.num_special_tokens_to_add(is_pair=True)
        self.window_tokens = window_tokens
        # The fewest document tokens a window holds (beside the longest query, or the fixed window).
        self.min_document_tokens = window_tokens or max_length - self.special_tokens - max_query_tokens
        if self.min_document_tokens < 8:
            raise ValueError(
                f"max_length={max_length} leaves {self.min_document_tokens} document tokens after a "
                f"{max_query_tokens}-token query and {self.special_tokens} special tokens; raise max_length "
                "or lower max_query_tokens"
            )
        if not 0 <= window_overlap < self.min_document_tokens:
            raise ValueError(
                f"window_overlap must be in [0, {self.min_document_tokens}), got {window_overlap}"
            )
        self.window_overlap = window_overlap

    def encode(self, queries: Sequence[str], documents: Sequence[str]) -> tuple[list[EncodedRow], np.ndarray]:
        """Rows for every pair (several per windowed document) and the window count of each pair."""
        unique_queries = list(dict.fromkeys(queries))
        query_encodings = dict(
            zip(unique_queries, self.tokenizer.encode_batch(unique_queries, add_special_tokens=False), strict=True)
        )
        document_encodings = self.tokenizer.encode_batch(list(documents), add_special_tokens=False)
        rows: list[EncodedRow] = []
        windows = np.zeros(len(documents), dtype=np.int64)
        for item, (query, document) in enumerate(zip(queries, document_encodings, strict=True)):
            query_encoding = query_encodings[query]
            if len(query_encoding) > self.max_query_tokens:
                query_encoding = self._truncated(query_encoding, self.max_query_tokens)
            budget = self.window_tokens or self.max_length - self.special_tokens - len(query_encoding)
            parts = self._windows(item, document, budget)
            windows[item] = len(parts)
            rows.extend(
                _to_sequence(item, self.tokenizer.post_process(query_encoding, part, add_special_tokens=True))
                for part in parts
            )
        return rows, windows

    def _windows(self, item: int, document: Encoding, budget: int) -> list[Encoding]:
        if len(document) <= budget:
            return [document]
        if self.long_documents == "error":
            raise DocumentTooLongError(
                f"document {item} has {len(document)} tokens but only {budget} fit in one window "
                "(use long_documents='windows' or 'truncate')"
            )
        window = self._copy(document)
        stride = self.window_overlap if self.long_documents == "windows" else 0
        window.truncate(budget, stride=stride, direction="right")
        if self.long_documents == "truncate":
            return [window]
        return [window, *window.overflowing]

    @staticmethod
    def _truncated(encoding: Encoding, length: int) -> Encoding:
        copy = PairEncoder._copy(encoding)
        copy.truncate(length, direction="right")
        return copy

    @staticmethod
    def _copy(encoding: Encoding) -> Encoding:
        # Encodings are mutable and truncate() works in place; the merge of one encoding is a fresh copy.
        return Encoding.merge([encoding], growing_offsets=False)


class TextEncoder:
    """Encode single texts (bi-encoder input), truncated to `max_length` — embeddings have no windows."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.special_tokens = tokenizer.num_special_tokens_to_add(is_pair=False)

    def encode(self, texts: Sequence[str]) -> list[EncodedRow]:
        rows = []
        for item, encoding in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            if len(encoding) > self.max_length - self.special_tokens:
                encoding = PairEncoder._truncated(encoding, self.max_length - self.special_tokens)
            rows.append(_to_sequence(item, self.tokenizer.post_process(encoding, None, add_special_tokens=True)))
        return rows
