"""The `crossrank` command: a thin shell over the library. One module per command group."""

from crossrank.cli import adapt  # noqa: F401  (registers commands)
from crossrank.cli import bench  # noqa: F401  (registers commands)
from crossrank.cli import context  # noqa: F401  (registers commands)
from crossrank.cli import evaluate  # noqa: F401  (registers commands)
from crossrank.cli import index  # noqa: F401  (registers commands)
from crossrank.cli import ltr  # noqa: F401  (registers commands)
from crossrank.cli import rerank  # noqa: F401  (registers commands)
from crossrank.cli import serve  # noqa: F401
from crossrank.cli import train  # noqa: F401
from crossrank.cli.app import app


def main() -> None:
    app()
