"""`crossrank adapt`: fit the cross-encoder to an index's own passages, without judgments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crossrank.cli.app import app
from crossrank.cli.common import ModelOption, SeedOption, fail


@app.command()
def adapt(
    directory: Annotated[Path, typer.Argument(help="Index directory; the model goes to DIRECTORY/adapted-model.")],
    model: ModelOption = None,
    minutes: Annotated[float, typer.Option(help="Training budget (teacher scoring comes first).")] = 20.0,
    queries: Annotated[int, typer.Option(help="Pseudo-queries drawn from the index's passages.")] = 2000,
    depth: Annotated[int, typer.Option(help="Candidates per retriever (BM25, dense) for each pseudo-query.")] = 20,
    steps: Annotated[int, typer.Option(help="Optimizer steps at most (the minutes usually end it first).")] = 1000,
    seed: SeedOption = 0,
    extra_teachers: Annotated[bool, typer.Option(
        "--extra-teachers/--no-extra-teachers", help="Add SPLADE and e5 to the teachers when installed.")] = True,
) -> None:
    """Adapt the reranker to your corpus: pseudo-queries from its passages, a teacher ensemble, distillation."""
    from crossrank.train.adapt import adapt_index

    try:
        report = adapt_index(directory, base=model, minutes=minutes, queries=queries, depth=depth, seed=seed,
                             extra_teachers=extra_teachers, steps=steps)
    except (OSError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps({"out": report.out, "queries": report.queries, "candidates": report.candidates,
                           "weights": report.weights, "steps": report.steps, "pairs": report.pairs,
                           "seconds": report.seconds, "segments": report.segments}))
