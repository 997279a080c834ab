"""The `crossrank` command: a thin shell over the library. One module per command group."""

from crossrank.cli import (
    adapt,  # noqa: F401  (registers commands)
    bench,  # noqa: F401  (registers commands)
    context,  # noqa: F401  (registers commands)
    evaluate,  # noqa: F401  (registers commands)
    index,  # noqa: F401  (registers commands)
    judgments,  # noqa: F401  (registers commands)
    ltr,  # noqa: F401  (registers commands)
    rerank,  # noqa: F401  (registers commands)
    serve,  # noqa: F401
    train,  # noqa: F401
)
from crossrank.cli.app import app


def main() -> None:
    app()
