"""`crossrank context`: the best evidence for a question from an index, packed into an LLM's token budget with
citation markers. A thin shell over `crossrank.context.ContextSelector`; the index is opened read-only."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from crossrank.cli.app import app
from crossrank.cli.common import BackendOption, JsonOption, count, fail

# The library's choices (crossrank.context GRANULARITIES, ORDERS, STYLES), spelled out here so `--help` does not
# import it; tests/test_context_cli_server.py checks they agree.
Granularity = Literal["sentence", "passage"]
Order = Literal["score", "document", "ends"]
Style = Literal["numbered", "xml", "markdown"]


@app.command()
def context(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    question: Annotated[str, typer.Argument(help="The question the LLM will answer from the context.")],
    budget: Annotated[int, typer.Option(
        "--budget", help="Tokens the whole rendered context may cost, in any --style (1 to "
                         "crossrank.context.MAX_BUDGET_TOKENS).")],
    granularity: Annotated[Granularity, typer.Option(
        help="sentence: quote only the answering sentences of each passage; passage: whole passages (cut to their "
             "leading sentences when the rest does not fit).")] = "sentence",
    order: Annotated[Order, typer.Option(
        help="score: best first; document: each source's snippets together, in reading order; ends: best first and "
             "last, weakest in the middle (long contexts).")] = "score",
    style: Annotated[Style, typer.Option(help="How snippets are rendered; each opens with its citation "
                                              "marker.")] = "numbered",
    abstain_below: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Abstain (empty context, exit 0) when even the best passage's calibrated probability "
                               "is below this (default: crossrank.context.DEFAULT_ABSTAIN_BELOW).")] = None,
    min_probability: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Relevance floor: weaker passages are left out (default: "
                               "crossrank.context.DEFAULT_MIN_PROBABILITY).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="The reading LLM's tokenizer.json (or a folder holding one), to count the budget exactly (default: a "
             "conservative estimate from UTF-8 bytes).")] = None,
    candidates: Annotated[int | None, typer.Option(
        min=1, help="Passages the cross-encoder reads after retrieval and fusion (default: the library's).")] = None,
    neighbours: Annotated[int | None, typer.Option(
        min=0, help="Sentences either side of a selected sentence, for coherence (default: the library's).")] = None,
    mmr_lambda: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Below 1 trades relevance for novelty (maximal marginal relevance; default: "
                               "crossrank.context.DEFAULT_MMR_LAMBDA).")] = None,
    filters: Annotated[list[str] | None, typer.Option("--filter", "-f", help="FIELD=VALUE or FIELD>=VALUE ...")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Cross-encoder checkpoint directory (default: the index's adapted model, else the "
                              "bundled one).")] = None,
    no_adapted: Annotated[bool, typer.Option(
        "--no-adapted", help="Score with the bundled model even if the index has an adapted one.")] = False,
    backend: BackendOption = "auto",
    output_format: Annotated[Literal["text", "json"], typer.Option(
        "--format", help="text: the rendered context on stdout, a summary on stderr; json: one object with the "
                         "snippets, citations' spans, what was dropped and why, and the rendered text.")] = "text",
    json_path: JsonOption = None,
) -> None:
    """Select cited evidence for an LLM from an index: retrieve, rerank, keep what clears the relevance floor,
    drop duplicates and pack the token budget. A best passage below --abstain-below is an abstention (exit 0, said
    on stderr)."""
    from crossrank.cli.index import parse_filters, unstored_vectors_hint
    from crossrank.store import Index, adapted_model

    parsed_filters = parse_filters(filters or [])
    settings: dict[str, Any] = {"granularity": granularity, "order": order}
    for name, value in (("abstain_below", abstain_below), ("min_probability", min_probability),
                        ("candidates", candidates),
                        ("neighbours", neighbours), ("mmr_lambda", mmr_lambda)):
        if value is not None:
            settings[name] = value
    from crossrank.context import ContextSelector, token_counter
    from crossrank.context.selection import check_budget
    from crossrank.model.cross_encoder import validate_query

    try:  # bad input fails here, before any index or model is opened
        check_budget(budget)
    except ValueError as exc:
        raise fail(str(exc).replace("budget_tokens", "--budget")) from exc
    try:
        validate_query(question)
        settings["tokenizer"] = token_counter(tokenizer)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if model is None and not no_adapted and (adapted := adapted_model(directory)) is not None:
        model = str(adapted)
        typer.echo(f"scoring with the index's adapted model {adapted} (--no-adapted: the bundled one)", err=True)
    try:
        with Index.open(directory) as index:  # read-only: nothing is written to the index
            if index.count()["passages"] == 0:
                raise fail(f"the index at {directory} holds no documents: add some with `crossrank index`")
            from crossrank.model.cross_encoder import CrossEncoder

            reranker = CrossEncoder.from_pretrained(model, backend=backend)
            if (hint := unstored_vectors_hint(index, reranker, directory, model)) is not None:
                typer.echo(hint, err=True)
            # Duplicates are judged with the index's own bi-encoder when it stores vectors (loaded for dense
            # retrieval anyway), else with the bundled one.
            encoder = index.encoder if index.config.dense else None
            selector = ContextSelector(reranker, encoder, **settings)
            selected = selector.select(question, index, budget, filters=parsed_filters)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        message = str(exc)
        if model is None and "default model" in message:
            message += " — or pass --model DIR"
        raise fail(message) from exc
    payload = {**selected.to_dict(), "style": style, "rendered": selected.render(style)}
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise fail(f"--json {json_path}: {exc.strerror or exc}") from exc
    if output_format == "json":
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    if payload["rendered"]:
        typer.echo(payload["rendered"])
    for line in summary(selected):
        typer.echo(line, err=True)


def summary(selected: Any) -> list[str]:
    """What stderr says after the context: size against the budget and the counter used, what was left out and
    why, the sources behind the markers, or the abstention and its reason."""
    dropped = Counter(d.reason for d in selected.dropped)
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items())) or "nothing"
    if selected.abstained:
        head = f"abstained: {selected.reason} — answer 'not found' rather than let the LLM guess"
    else:
        head = (f"{count(len(selected.snippets), 'snippet')}, {selected.tokens}/{selected.budget} tokens "
                f"({selected.tokenizer})")
    lines = [f"{head}; left out: {left_out}"]
    if selected.snippets:
        lines.append("sources: " + "  ".join(f"[{s.marker}] {s.passage_id} {s.start}-{s.end}"
                                             for s in selected.snippets))
    return lines
