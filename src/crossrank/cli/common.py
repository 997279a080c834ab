"""What every command shares: one flag vocabulary, defined once (README, "Command-line conventions"), the error
line, and how text is cut for the terminal.

- `-m/--model DIR`: a cross-encoder checkpoint; default the bundled model.
- `--backend auto|onnx|torch`, `--int8`, `--bf16`, `--threads N`: how it runs (auto: the fastest faithful precision
  on this CPU).
- `-k/--top-k N`: how many results to keep or show.
- `--format`: what is printed on stdout (a table or text for people, JSON lines for programs).
- `-o/--out PATH`: the file or folder a command writes; `--json PATH`: also write the results table as JSON.
- `--seed N`: every random choice a command makes.
- `-f/--filter FIELD=VALUE` (also >=, <=, >, <, !=): metadata filters, as `search` and `context` parse them.
Errors go to stderr as one `error: ...` line and exit 2 (bad input) or 1 (nothing to do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

Backend = Literal["auto", "onnx", "torch"]

ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="Cross-encoder checkpoint directory (default: the bundled model).")]
BACKEND_HELP = "Inference backend; auto: torch bf16 on a CPU with AMX tiles, else ONNX fp32."
BackendOption = Annotated[Backend, typer.Option(help=BACKEND_HELP)]
Int8Option = Annotated[bool, typer.Option("--int8", help="Score with the dynamic int8 ONNX graph.")]
Bf16Option = Annotated[bool, typer.Option("--bf16", help="Score with the torch backend in bfloat16 autocast (fast "
                                                    "on CPUs with AMX).")]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="Inference threads (default: the runtime's).")]
SeedOption = Annotated[int, typer.Option(help="Random seed for every random choice the command makes.")]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")]


def engine_precision(backend: Backend, int8: bool, bf16: bool) -> tuple[Backend, str | None]:
    """(backend, quantize) for `--backend`, `--int8`, `--bf16`: int8 is an ONNX graph, bf16 runs torch."""
    if int8 and bf16:
        raise fail("--int8 and --bf16 exclude each other")
    if bf16:
        return "torch", "bf16"
    return backend, "int8" if int8 else None


def top_k_option(help: str) -> typer.models.OptionInfo:
    return typer.Option("--top-k", "-k", min=1, help=help)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one `error:` line on stderr and return the Exit to raise (`raise fail(...) from exc`)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def snippet(text: str, limit: int) -> str:
    """The text on one line, cut at a word boundary with an ellipsis when longer than `limit` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "…"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 document', '3 documents'."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
