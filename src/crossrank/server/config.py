"""Server settings in one frozen value: built from CLI flags (which also read CROSSRANK_* env vars) or by code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TOKENIZER_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the app needs; defaults are safe for a single CPU host."""

    model: str | None = None
    backend: str = "auto"  # `resolve_backend`: torch bf16 on a CPU with AMX, else ONNX fp32
    quantize: str | None = None
    threads: int | None = None
    # The engine's own per-forward-pass token budget (None: the engine's default for the precision,
    # `crossrank.model.cross_encoder.BATCH_TOKENS`).
    engine_batch_tokens: int | None = None
    # Scored pairs the model keeps for exact repeats (RAG retries, pagination); 0 turns the cache off.
    score_cache_entries: int = 65536
    # Encoded segments a factorised model keeps, so documents that recur across queries are encoded once (~1.7 kB
    # each, ~28 MB at most); 0 turns it off.
    segment_cache_entries: int = 16384
    # Micro-batching: estimated tokens per combined call, how long a batch waits to fill, queue bound, timeout.
    batch_tokens: int = 32768
    max_wait_ms: float = 2.0
    max_queue_pairs: int = 20000
    request_timeout_s: float = 60.0
    workers: int = 1
    # A merged batch is scored in slices of this many estimated tokens; between slices, work of requests that
    # timed out or whose client left is dropped, so abandoned work stops within one slice (about a second).
    slice_tokens: int = 8192
    # Limits on one request; max_request_tokens counts model tokens (query + document per pair, after truncation),
    # so it bounds the work whatever the script (CJK text is about one token per character, English about four).
    max_documents: int = 1000
    max_chars_per_document: int = 20000
    max_request_tokens: int = 131072
    max_body_bytes: int = 16 * 1024 * 1024
    # Characters in a /search query (longer text is a document, not a query: send it to /v1/rerank).
    max_query_chars: int = 4096
    # HTTP connection limits: request-line + headers size, time to receive a whole request (headers and body),
    # idle keep-alive, and concurrent connections (beyond it: 503).
    max_header_bytes: int = 64 * 1024
    read_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 256
    # Named indexes: how many may exist under index_root, and how many stay open (least recently used idle
    # ones are closed beyond it).
    max_indexes: int = 100
    max_open_indexes: int = 16
    # Bearer keys; empty means the API is open (bind to loopback in that case).
    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)
    # Named indexes for /search live under this directory (None: search endpoints answer 404).
    index_root: Path | None = None
    # Tokenizers /v1/context may count a budget with, by name: NAME -> a tokenizer.json (or a folder holding one).
    # Requests pick one by name, so a client never names a file on the server.
    context_tokenizers: Mapping[str, Path] = field(default_factory=dict, hash=False)
    # A LambdaMART model (`crossrank ltr train`) /search may apply after the reranker when a request asks (`ltr`).
    ltr_model: Path | None = None
    # `crossrank eval` output folders (each holding a results.json) the workbench's Reports view lists.
    reports_root: Path | None = None

    def __post_init__(self) -> None:
        positive = ("batch_tokens", "engine_batch_tokens", "max_queue_pairs", "workers", "slice_tokens",
                    "max_documents", "max_chars_per_document", "max_request_tokens", "max_body_bytes", "max_query_chars",
                    "max_header_bytes", "read_timeout_s", "keep_alive_s", "max_connections", "max_indexes",
                    "max_open_indexes")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) <= 0:  # None: the engine's default
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("score_cache_entries", "segment_cache_entries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout_s > 0")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("API keys must be non-empty and carry no surrounding whitespace")
        for name in self.context_tokenizers:
            if not re.fullmatch(TOKENIZER_NAME, name):
                raise ValueError(f"context tokenizer name {name!r}: use letters, digits, '_', '.', '-' (at most 64, "
                                 "not starting with '.', '_' or '-')")


def parse_context_tokenizers(specs: list[str]) -> dict[str, Path]:
    """`NAME=PATH` pairs (`--context-tokenizer`), each PATH a tokenizer.json or a folder holding one."""
    tokenizers: dict[str, Path] = {}
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator or not name.strip() or not path.strip():
            raise ValueError(f"--context-tokenizer {spec!r}: expected NAME=PATH (e.g. llama3=/models/llama3)")
        if name.strip() in tokenizers:
            raise ValueError(f"--context-tokenizer: the name {name.strip()!r} is given twice")
        tokenizers[name.strip()] = Path(path.strip()).expanduser()
    return tokenizers


def read_api_keys(env_value: str | None, file: Path | None) -> frozenset[str]:
    """Keys from a comma-separated env value and/or a file with one key per line ('#' starts a comment)."""
    keys = {key.strip() for key in (env_value or "").split(",") if key.strip()}
    if file is not None:
        if not file.is_file():
            raise ValueError(f"API key file not found: {file}")
        for line in file.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.add(line)
    return frozenset(keys)
