"""The `crossrank` Typer application; each command module registers itself on it. Command modules import heavy
libraries (torch, onnxruntime, the models) inside their commands, so `--help` and `--version` start fast."""

from typing import Annotated

import typer

app = typer.Typer(
    name="crossrank",
    help="Multi-stage neural ranking: index, search, rerank, train, evaluate, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from crossrank import __version__

        typer.echo(f"crossrank {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Multi-stage neural ranking: index, search, rerank, train, evaluate, export, serve."""
