"""The `crossrank` Typer application; each command module registers itself on it. Command modules import heavy
libraries (torch, onnxruntime, the models) inside their commands, so `--help` and `--version` start fast."""

import logging
import os
import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="crossrank",
    help="Multi-stage neural ranking: index, search, rerank, select LLM context, train, evaluate, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from crossrank import __version__

        typer.echo(f"crossrank {__version__}")
        raise typer.Exit()


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes: a test runner that swaps and closes it between
    invocations must not leave the handler writing to a closed stream."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _StatusLines(logging.Formatter):
    """The message alone for status lines; `warning: ...`, `debug: ...` for the other levels."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def _log_to_stderr() -> None:
    """crossrank's own status lines (a one-time export, ...) as plain stderr lines; warnings prefixed. Library
    chatter is logged at debug level (`crossrank.model.library_output`): CROSSRANK_LOG_LEVEL=debug shows it.
    `serve` replaces this with JSON logs."""
    handler = _CurrentStderr()
    handler.setFormatter(_StatusLines())
    logger = logging.getLogger("crossrank")
    logger.handlers = [handler]
    logger.setLevel(os.environ.get("CROSSRANK_LOG_LEVEL", "info").upper())
    logger.propagate = False


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Multi-stage neural ranking: index, search, rerank, select LLM context, train, evaluate, export, serve."""
    _log_to_stderr()
