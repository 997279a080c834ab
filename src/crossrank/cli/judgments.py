"""`crossrank judgments`: export the relevance judgments recorded in an index as TREC qrels, for tools outside
crossrank (trec_eval, ir_measures) or for sharing a judged set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossrank.cli.app import app
from crossrank.cli.common import count, fail


@app.command("judgments")
def judgments(
    index: Annotated[Path, typer.Argument(help="Index directory whose judgments to export.")],
    judge: Annotated[str | None, typer.Option(help="Only this judge's (default: every judge's, combined by the "
                                                   "low median of their grades).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the qrels here instead of stdout.")] = None,
) -> None:
    """Print an index's judgments as TREC qrels (`qid 0 docid grade`), with a summary line on stderr."""
    from crossrank.judgments import JudgmentStore, is_index

    store = JudgmentStore(index)
    if not is_index(index):
        raise fail(f"no crossrank index at {index}")
    judges = store.judges()
    if judge is not None and judge not in judges:
        raise fail(f"no judge {judge!r} in {index}; its judges are {', '.join(judges) or 'none'}")
    judges = [judge] if judge is not None else judges
    recorded = store.judgments(judge)
    if not recorded:
        raise fail(f"{index} has no judgments yet; record some in the UI at /ui of `crossrank serve`, or with "
                   f"POST /indexes/{index.name}/judgments")
    text = store.trec_text(judge)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    typer.echo(f"{count(len(judges), 'judge')}, "
               f"{count(len({j.query_id for j in recorded}), 'query', 'queries')}, "
               f"{count(len(recorded), 'judgment')}" + (f" -> {out}" if out else ""), err=True)
