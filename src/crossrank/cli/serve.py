"""`crossrank serve` (HTTP, optionally under Ray Serve) and `crossrank rerank-batch` (Ray Data, offline).
Every `serve` flag can also come from its CROSSRANK_* environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from crossrank.cli.app import app
from crossrank.cli.common import (
    BACKEND_HELP,
    Backend,
    BackendOption,
    ModelOption,
    ThreadsOption,
    engine_precision,
    fail,
    top_k_option,
)


def _opt(help: str, env: str, *names: str) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, envvar=f"CROSSRANK_{env}")


@app.command()
def serve(
    model: Annotated[str | None, _opt("Cross-encoder checkpoint directory (default: the bundled model).", "MODEL",
                                      "--model", "-m")] = None,
    host: Annotated[str, _opt("Bind address.", "HOST", "--host")] = "127.0.0.1",
    port: Annotated[int, _opt("Port.", "PORT", "--port")] = 8080,
    backend: Annotated[Backend, _opt(BACKEND_HELP, "BACKEND", "--backend")] = "auto",
    int8: Annotated[bool, _opt("Score with the dynamic int8 ONNX graph.", "INT8", "--int8")] = False,
    bf16: Annotated[bool, _opt("Score with the torch backend in bfloat16 autocast (fast on CPUs with AMX).", "BF16",
                               "--bf16")] = False,
    threads: Annotated[int | None, _opt("Inference threads per worker.", "THREADS", "--threads")] = None,
    batch_tokens: Annotated[int, _opt("Estimated tokens per merged batch.", "BATCH_TOKENS", "--batch-tokens")] = 32768,
    engine_batch_tokens: Annotated[int | None, _opt("Tokens per forward pass inside the engine (default: 4096 in "
                                                    "bf16, else 2048).", "ENGINE_BATCH_TOKENS",
                                                    "--engine-batch-tokens")] = None,
    score_cache: Annotated[int, _opt("Scored pairs kept so exact repeats skip the model (0: off; ~150 bytes each).",
                                     "SCORE_CACHE", "--score-cache")] = 65536,
    segment_cache: Annotated[int, _opt("Encoded segments a factorised model keeps so recurring documents skip it "
                                       "(0: off; ~1.7 kB each).", "SEGMENT_CACHE", "--segment-cache")] = 16384,
    max_wait_ms: Annotated[float, _opt("Longest wait for a batch to fill.", "MAX_WAIT_MS", "--max-wait-ms")] = 2.0,
    max_queue_pairs: Annotated[int, _opt("Queue bound; beyond it 503 + Retry-After.", "MAX_QUEUE_PAIRS",
                                         "--max-queue-pairs")] = 20000,
    timeout: Annotated[float, _opt("Per-request timeout, seconds.", "REQUEST_TIMEOUT", "--timeout")] = 60.0,
    workers: Annotated[int, _opt("Concurrent scoring batches.", "WORKERS", "--workers")] = 1,
    max_documents: Annotated[int, _opt("Documents per request.", "MAX_DOCUMENTS", "--max-documents")] = 1000,
    max_chars: Annotated[int, _opt("Characters per document.", "MAX_CHARS", "--max-chars")] = 20000,
    max_body_bytes: Annotated[int, _opt("Request body bytes.", "MAX_BODY_BYTES", "--max-body-bytes")] = 16 << 20,
    max_query_chars: Annotated[int, _opt("Characters in a /search query.", "MAX_QUERY_CHARS",
                                         "--max-query-chars")] = 4096,
    max_request_tokens: Annotated[int, _opt("Model tokens one request may score (query + document per pair).",
                                            "MAX_REQUEST_TOKENS", "--max-request-tokens")] = 131072,
    max_header_bytes: Annotated[int, _opt("Request line + headers bytes.", "MAX_HEADER_BYTES",
                                          "--max-header-bytes")] = 65536,
    read_timeout: Annotated[float, _opt("Seconds to receive a whole request.", "READ_TIMEOUT",
                                        "--read-timeout")] = 30.0,
    keep_alive: Annotated[float, _opt("Idle keep-alive seconds.", "KEEP_ALIVE", "--keep-alive")] = 5.0,
    max_connections: Annotated[int, _opt("Concurrent connections; beyond it 503.", "MAX_CONNECTIONS",
                                         "--max-connections")] = 256,
    max_indexes: Annotated[int, _opt("Indexes that may exist under --index-root.", "MAX_INDEXES",
                                     "--max-indexes")] = 100,
    max_open_indexes: Annotated[int, _opt("Indexes kept open (least recently used idle ones close).",
                                          "MAX_OPEN_INDEXES", "--max-open-indexes")] = 16,
    api_keys_file: Annotated[Path | None, _opt("File of API keys, one a line (also CROSSRANK_API_KEYS, "
                                               "comma-separated).", "API_KEYS_FILE", "--api-keys-file")] = None,
    index_root: Annotated[Path | None, _opt("Directory of named indexes for /search and /v1/context.", "INDEX_ROOT",
                                            "--index-root")] = None,
    context_tokenizers: Annotated[list[str] | None, _opt(
        "NAME=PATH: a tokenizer.json (or a folder holding one) /v1/context requests may count budgets with, by "
        "NAME (repeatable; CROSSRANK_CONTEXT_TOKENIZER takes space-separated pairs).", "CONTEXT_TOKENIZER",
        "--context-tokenizer")] = None,
    ltr: Annotated[Path | None, _opt("LambdaMART model (`crossrank ltr train`) /search applies when a request sets "
                                     "`ltr` (the workbench's LTR box).", "LTR", "--ltr")] = None,
    reports: Annotated[Path | None, _opt("Folder of `crossrank eval` results the workbench's Reports view lists "
                                         "(default: ./eval-results when it exists).", "REPORTS", "--reports")] = None,
    drain_seconds: Annotated[float, _opt("Graceful drain on SIGTERM.", "DRAIN_SECONDS", "--drain-seconds")] = 30.0,
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _opt(
        "Log level.", "LOG_LEVEL", "--log-level")] = "info",
    ray: Annotated[bool, typer.Option("--ray", help="Run under Ray Serve.")] = False,
    replicas: Annotated[int, _opt("Ray Serve replicas.", "REPLICAS", "--replicas")] = 1,
    min_replicas: Annotated[int | None, _opt("Autoscaling lower bound (enables autoscaling).", "MIN_REPLICAS",
                                             "--min-replicas")] = None,
    max_replicas: Annotated[int | None, _opt("Autoscaling upper bound.", "MAX_REPLICAS", "--max-replicas")] = None,
    target_ongoing: Annotated[float, _opt("Autoscaling target ongoing requests per replica.", "TARGET_ONGOING",
                                          "--target-ongoing")] = 32.0,
    cpus_per_replica: Annotated[float, _opt("CPUs reserved per replica.", "CPUS_PER_REPLICA",
                                            "--cpus-per-replica")] = 1.0,
    ray_address: Annotated[str | None, _opt("Join this Ray cluster ('auto' for the local head).", "RAY_ADDRESS",
                                            "--ray-address")] = None,
) -> None:
    """Serve Cohere/Jina-compatible rerank endpoints (and /search, /v1/context) over HTTP."""
    from crossrank.server.config import ServerConfig, parse_context_tokenizers, read_api_keys
    from crossrank.server.logs import configure_json_logging

    try:
        tokenizers = parse_context_tokenizers(context_tokenizers or [])
    except ValueError as exc:
        raise fail(str(exc)) from exc
    backend, quantize = engine_precision(backend, int8, bf16)
    try:
        config = ServerConfig(
            model=model, backend=backend, quantize=quantize, threads=threads,
            batch_tokens=batch_tokens, engine_batch_tokens=engine_batch_tokens, score_cache_entries=score_cache,
            segment_cache_entries=segment_cache,
            max_wait_ms=max_wait_ms,
            max_queue_pairs=max_queue_pairs,
            request_timeout_s=timeout, workers=workers, max_documents=max_documents,
            max_chars_per_document=max_chars, max_body_bytes=max_body_bytes, max_query_chars=max_query_chars,
            max_request_tokens=max_request_tokens,
            max_header_bytes=max_header_bytes, read_timeout_s=read_timeout, keep_alive_s=keep_alive,
            max_connections=max_connections, max_indexes=max_indexes, max_open_indexes=max_open_indexes,
            api_keys=read_api_keys(os.environ.get("CROSSRANK_API_KEYS"), api_keys_file), index_root=index_root,
            context_tokenizers=tokenizers, ltr_model=ltr, reports_root=reports,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from crossrank.server.context import load_context_tokenizers

    try:
        load_context_tokenizers(config)  # a missing or unreadable file is one line here, not a failed startup
    except (OSError, ValueError) as exc:
        raise fail(f"--context-tokenizer: {exc}") from exc
    from crossrank.server.app import load_ltr

    try:
        load_ltr(config)  # a bad --ltr is one line here, not a failed startup
    except (OSError, ValueError) as exc:
        raise fail(f"--ltr: {exc}") from exc
    if reports is not None and not reports.is_dir():
        raise fail(f"--reports: {reports} is not a folder (give the folder `crossrank eval --out` wrote into)")
    indexes = describe_index_root(index_root) if index_root is not None else None
    from crossrank.model.checkpoint import Checkpoint, CheckpointError

    try:
        Checkpoint.open(model)  # a bad --model is one line here, not a traceback from the server's startup
    except CheckpointError as exc:
        raise fail(str(exc)) from exc
    configure_json_logging(log_level)
    if ray:
        from crossrank.server.ray_serve import run_serve

        autoscaling = None
        if min_replicas is not None or max_replicas is not None:
            autoscaling = {"min_replicas": min_replicas or 1, "max_replicas": max_replicas or max(replicas, 1),
                           "target_ongoing_requests": target_ongoing}
        run_serve(config, host=host, port=port, address=ray_address, replicas=replicas, autoscaling=autoscaling,
                  num_cpus=cpus_per_replica)
        return
    from crossrank.server.app import create_app
    from crossrank.server.http import serve_http

    typer.echo(f"crossrank: the workbench is at http://{host}:{port}/ui (API docs: /openapi.json)", err=True)
    if indexes is not None:
        typer.echo(f"crossrank: {indexes}", err=True)
    typer.echo(f"crossrank: {precision_line(config.backend, config.quantize)}", err=True)
    serve_http(create_app(config), config, host=host, port=port, drain_seconds=drain_seconds)


def precision_line(backend: str, quantize: str | None) -> str:
    """Which backend and precision score requests, so an operator sees what "auto" chose on this CPU; an fp32
    server on a CPU with AMX leaves about half its throughput unused (README, "Serve"), which it says."""
    from crossrank.model.backends import resolve_backend
    from crossrank.model.backends.cpu_features import cpu_has_amx

    runs, precision = resolve_backend(backend, quantize)  # type: ignore[arg-type]
    line = f"reranking with {runs} {precision or 'fp32'}"
    if backend == "auto" and quantize is None:
        return line + (" (auto: this CPU has AMX tiles)" if precision == "bf16" else " (auto: no AMX tiles here)")
    if precision is None and cpu_has_amx():
        return line + " (this CPU has AMX tiles: --backend auto serves more than twice the pairs/s; README, Serve)"
    return line


def describe_index_root(root: Path) -> str:
    """What /search will find under --index-root: a mistyped root otherwise starts a server that answers 404 to
    every index it was meant to serve."""
    from crossrank.server.indexes import IndexRegistry

    if not root.exists():
        return f"--index-root {root} does not exist yet: it is created with the first index a request creates"
    if not root.is_dir():
        raise fail(f"--index-root {root} is not a folder")
    names = IndexRegistry(root).names()
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"{len(names)} index{'es' if len(names) != 1 else ''} under {root}" + (f": {shown}" if names else "")


@app.command("rerank-batch")
def rerank_batch(
    source: Annotated[Path, typer.Argument(help="JSONL: {\"id\", \"query\", \"documents\": [...]} per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL of ranked results, input order.")],
    model: ModelOption = None,
    actors: Annotated[int, typer.Option(help="Model-holding actors.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Queries per actor call.")] = 16,
    top_k: Annotated[int | None, top_k_option("Keep the best K per query (default: all).")] = None,
    backend: BackendOption = "auto",
    threads: ThreadsOption = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one).")] = None,
) -> None:
    """Rerank a large (query, candidates) file offline with Ray Data and model-holding actors."""
    import ray

    from crossrank.server.batch_scoring import rerank_file

    ray.init(address=ray_address)
    try:
        count = rerank_file(source, out, model=model, actors=actors, batch_size=batch_size, top_k=top_k,
                            backend=backend, threads=threads)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    finally:
        ray.shutdown()
    typer.echo(f"{count} queries reranked -> {out}")
