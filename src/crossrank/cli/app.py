"""The `crossrank` Typer application; each command module registers itself on it."""

import typer

app = typer.Typer(
    name="crossrank",
    help="Multi-stage neural ranking: index, search, rerank, train, evaluate, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
