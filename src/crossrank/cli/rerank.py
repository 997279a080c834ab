"""`crossrank rerank` and `crossrank export`: the engine from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from crossrank.cli.app import app
from crossrank.model.backends import BACKENDS

ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Checkpoint directory (default: bundled model).")]


def read_documents(source: str) -> list[Any]:
    """JSON lines (objects with text/title/id) or plain text, one document per line; '-' reads stdin."""
    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        path = Path(source)
        if not path.is_file():
            raise typer.BadParameter(f"no such file: {source}")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    documents: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                documents.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"line {number}: invalid JSON ({exc.msg})") from exc
        else:
            documents.append(line)
    return documents


@app.command()
def rerank(
    query: Annotated[str, typer.Option("--query", "-q", help="The query.")],
    source: Annotated[str, typer.Argument(help="JSONL or text file of documents, or '-' for stdin.")] = "-",
    model: ModelOption = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Keep the best K.")] = None,
    backend: Annotated[str, typer.Option(help=f"One of {', '.join(BACKENDS)}.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Dynamic int8 ONNX model.")] = False,
    output: Annotated[str, typer.Option(help="'jsonl' or 'table'.")] = "table",
) -> None:
    """Rerank documents for a query with the cross-encoder."""
    from crossrank.model.cross_encoder import CrossEncoder

    if output not in ("jsonl", "table"):
        raise typer.BadParameter("--output must be 'jsonl' or 'table'")
    try:
        encoder = CrossEncoder.from_pretrained(model, backend=backend, quantize="int8" if int8 else None)
        results = encoder.rank(query, read_documents(source), top_k=top_k)
    except (ValueError, TypeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if output == "jsonl":
        for result in results:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("rank", "index", "score", "prob", "windows", "document")
    for rank, result in enumerate(results, start=1):
        document = result.document if isinstance(result.document, str) else (result.document or {}).get("text", "")
        table.add_row(str(rank), str(result.index), f"{result.score:.4f}", f"{result.probability:.3f}",
                      str(result.windows), document[:80].replace("\n", " "))
    Console().print(table)


@app.command()
def export(
    model: ModelOption = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also write the dynamic int8 model.")] = False,
) -> None:
    """Export a checkpoint to ONNX (cached by content hash) and print the file paths."""
    from crossrank.model.checkpoint import Checkpoint
    from crossrank.model.export import onnx_model_path

    checkpoint = Checkpoint.open(model)
    typer.echo(onnx_model_path(checkpoint, "classification"))
    if int8:
        typer.echo(onnx_model_path(checkpoint, "classification", "int8"))
