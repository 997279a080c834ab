"""`crossrank rerank` and `crossrank export`: the engine from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from crossrank.cli.app import app
from crossrank.cli.common import (
    BackendOption,
    Bf16Option,
    Int8Option,
    ModelOption,
    engine_precision,
    fail,
    snippet,
    top_k_option,
)


def read_documents(source: str) -> list[Any]:
    """The candidates of a file or stdin ('-'), read by the ingest loaders' rules (encoding, CSV, JSON lines);
    a problem is one error line, never a silently changed list."""
    from crossrank.store.loaders import LoadReport, documents_to_rerank

    if source == "-":
        raw, name, suffix = sys.stdin.buffer.read(), "stdin", ""
    else:
        path = Path(source)
        if path.is_dir():
            raise fail(f"{source} is a folder; rerank reads one file (index folders with `crossrank index`)")
        if not path.is_file():
            raise fail(f"no such file: {source}")
        raw, name, suffix = path.read_bytes(), source, path.suffix.lower()
    report = LoadReport()
    try:
        documents = documents_to_rerank(raw, name, suffix, report)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    for where, message in report.warnings:
        typer.echo(f"warning: {where}: {message}", err=True)
    if not documents:
        raise fail(f"{name} holds no documents", code=1)
    return documents


@app.command()
def rerank(
    query: Annotated[str, typer.Option("--query", "-q", help="The query.")],
    source: Annotated[str, typer.Argument(help="JSONL or text file of documents, or '-' for stdin.")] = "-",
    model: ModelOption = None,
    top_k: Annotated[int | None, top_k_option("Keep the best K (default: all).")] = None,
    backend: BackendOption = "auto",
    int8: Int8Option = False,
    bf16: Bf16Option = False,
    output_format: Annotated[Literal["table", "jsonl"], typer.Option(
        "--format", help="table: for people; jsonl: one JSON object per result, best first.")] = "table",
) -> None:
    """Rerank documents for a query with the cross-encoder."""
    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.types import Document

    documents = read_documents(source)
    try:
        backend, quantize = engine_precision(backend, int8, bf16)
        encoder = CrossEncoder.from_pretrained(model, backend=backend, quantize=quantize)
        results = encoder.rank(query, documents, top_k=top_k)
    except (ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc
    if output_format == "jsonl":
        for result in results:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("rank", "index", "id", "score", "prob", "windows", "title / text")
    for rank, result in enumerate(results, start=1):
        document = Document.coerce(result.document, result.index)
        text = f"{document.title}: {document.text}" if document.title else document.text
        table.add_row(str(rank), str(result.index), "" if document.id is None else str(document.id),
                      f"{result.score:.4f}", f"{result.probability:.3f}", str(result.windows), snippet(text, 100))
    Console().print(table)



@app.command()
def export(
    model: ModelOption = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also write the dynamic int8 graph.")] = False,
) -> None:
    """Export a checkpoint to ONNX (cached by content hash) and print the file paths: the joint pair graph, and for
    a closed-gate gated model also the one-segment graph the engine scores it with."""
    from crossrank.model.checkpoint import Checkpoint
    from crossrank.model.export import onnx_model_path
    from crossrank.model.factorised import gates_closed

    checkpoint = Checkpoint.open(model)
    for head in ("classification", "segments") if gates_closed(checkpoint) else ("classification",):
        typer.echo(onnx_model_path(checkpoint, head))
        if int8:
            typer.echo(onnx_model_path(checkpoint, head, "int8"))
