"""`crossrank index | search | delete | info`: build an on-disk index from files and search it."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from crossrank.cli.app import app
from crossrank.cli.common import count, fail, snippet, top_k_option

FILTER = re.compile(r"^\s*([^<>=!]+?)\s*(>=|<=|!=|=|>|<)\s*(.*)$")
OPERATORS = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt", "!=": "ne"}


def parse_filters(expressions: list[str]) -> dict[str, Any] | None:
    """`field=value`, `field>=value` (also <=, >, <, !=); repeated equalities on a field mean any of."""
    filters: dict[str, Any] = {}
    for expression in expressions:
        match = FILTER.match(expression)
        if not match:
            raise typer.BadParameter(f"filter {expression!r}: expected FIELD=VALUE or FIELD>=VALUE (<=, >, <, !=)")
        name, op, raw = match.groups()
        try:
            value = json.loads(raw)
            if not isinstance(value, (int, float, bool, str)):
                value = raw
        except json.JSONDecodeError:
            value = raw
        if op == "=":
            previous = filters.get(name)
            filters[name] = value if previous is None else [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            condition = filters.setdefault(name, {})
            if not isinstance(condition, dict):
                raise typer.BadParameter(f"filter on {name!r} mixes = with a range")
            condition[OPERATORS[op]] = value
    return filters or None


def check_first_stage_weight(value: float | None) -> float | None:
    """--first-stage-weight is checked where it is parsed, before any index or model is opened."""
    if value is not None:
        from crossrank.model.interpolation import FirstStageInterpolation

        try:
            FirstStageInterpolation(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return value


@app.command("index")
def index_command(
    directory: Annotated[Path, typer.Argument(help="Index directory (created if missing).")],
    sources: Annotated[list[Path] | None, typer.Option(
        "--from", help="Files or folders to ingest (repeatable). Without it, an existing index gets the reranker's "
                       "vectors of its passages (--model's: e.g. a model fine-tuned since), nothing ingested.")] = None,
    passage_tokens: Annotated[int, typer.Option(help="Passage size in bi-encoder tokens (new index).")] = 256,
    overlap: Annotated[int, typer.Option(help="Tokens shared by consecutive passages (new index).")] = 32,
    dense: Annotated[bool, typer.Option("--dense/--no-dense", help="Store vectors for dense retrieval.")] = True,
    stemming: Annotated[bool, typer.Option("--stem/--no-stem", help="English stemming for BM25.")] = True,
    title_boost: Annotated[float, typer.Option(help="BM25 weight of the title field.")] = 1.0,
    id_field: Annotated[str | None, typer.Option(help="JSONL/CSV field holding the id.")] = None,
    title_field: Annotated[str, typer.Option(help="JSONL/CSV field holding the title.")] = "title",
    text_field: Annotated[str, typer.Option(help="JSONL/CSV field holding the text.")] = "text",
    commit_every: Annotated[int, typer.Option(help="Commit after this many documents.")] = 1000,
    max_file_mb: Annotated[float, typer.Option(help="Skip files larger than this.")] = 64.0,
    segments: Annotated[bool, typer.Option(
        "--segments/--no-segments",
        help="Also store the reranker's vectors of every passage (a factorised cross-encoder, like the bundled "
             "one), so `search` encodes only the query.")] = True,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="The cross-encoder whose vectors --segments stores (default: the one `search` "
                              "reranks with: the index's adapted model, else the bundled one).")] = None,
) -> None:
    """Ingest text, Markdown, HTML, PDF, JSONL/CSV or a BEIR corpus.jsonl into an index (same id replaces); without
    --from, store a model's passage vectors in an existing index."""
    from crossrank.store import FieldMapping, Index, IndexConfig, adapted_model
    from crossrank.store.loaders import SUPPORTED_SUFFIXES

    if not sources:
        store_vectors_only(directory, model, segments)
        return
    mapping = FieldMapping(title=title_field, text=text_field,
                           **({"id": (id_field,)} if id_field else {}))
    missing = [str(source) for source in sources if not source.expanduser().exists()]
    if missing:  # before the index folder is created, so a typo leaves nothing behind
        raise fail(f"no such file or directory: {', '.join(missing)}")
    try:
        config = IndexConfig(passage_tokens=passage_tokens, overlap=overlap, stemming=stemming,
                             title_boost=title_boost, dense=dense)
        with Index.open_or_create(directory, config) as index:
            if index.config != config:
                stored = {k: v for k, v in asdict(index.config).items() if asdict(config)[k] != v}
                typer.echo(f"note: {directory} exists; its stored settings win: {stored}", err=True)
            report = index.ingest(sources, mapping=mapping, commit_every=commit_every, show_progress=True,
                                  max_file_bytes=int(max_file_mb * 2**20))
            stored = store_segments(index, model or adapted_model(directory)) if segments and report.documents else ""
            info = index.info()
    except (OSError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    written = report.documents - report.unchanged
    unchanged = f" ({report.unchanged} unchanged, not re-embedded)" if report.unchanged else ""
    typer.echo(f"indexed {count(written, 'document')} from {count(report.files, 'file')} as "
               f"{count(report.passages, 'passage')} in {count(report.commits, 'commit')}{unchanged}; {directory} now "
               f"holds {count(info['documents'], 'document')} ({count(info['passages'], 'passage')}), "
               f"generation {info['generation']}")
    if stored:
        typer.echo(stored)
    if report.skipped:
        typer.echo(f"skipped {len(report.skipped)}:")
        by_reason: dict[str, list[str]] = {}
        for where, reason in report.skipped:
            by_reason.setdefault(reason, []).append(where)
        for reason, places in sorted(by_reason.items(), key=lambda item: -len(item[1])):
            shown = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
            typer.echo(f"  {reason}: {shown}")
        if any(reason.startswith("unsupported") for reason in by_reason):
            typer.echo(f"  (supported types: {' '.join(SUPPORTED_SUFFIXES)})")
    for where, message in report.warnings[:20]:
        typer.echo(f"warning: {where}: {message}", err=True)
    if report.documents == 0:
        typer.echo("error: nothing was indexed (see the reasons above)", err=True)
        raise typer.Exit(1)


def store_segments(index: Any, model: str | Path | None) -> str:
    """After an ingest: store the reranker's passage vectors in the index and say what was done. The passages are
    committed already and vectors only save query-time work, so a model that does not load is a warning; one that is
    not factorised has none to store, which is said, not an error."""
    from crossrank.model.cross_encoder import CrossEncoder

    try:
        reranker = CrossEncoder.from_pretrained(model)
    except (OSError, ValueError) as exc:
        typer.echo(f"warning: indexed, but no reranker vectors stored ({exc}); search encodes the passages it "
                   "reranks", err=True)
        return ""
    if reranker.factorised is None:
        return f"segments: none stored ({not_factorised(reranker)})"
    return stored_vectors(index, reranker)


def store_vectors_only(directory: Path, model: str | None, segments: bool) -> None:
    """`crossrank index DIR` without --from: store a model's passage vectors in an existing index (a model trained
    or adapted since the passages were ingested), so `search -m MODEL` encodes only the query. Here storing them is
    the whole job, so each reason it cannot happen is an error."""
    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.store import Index, adapted_model

    if not segments:
        raise fail("nothing to do: --from FILES ingests them; without --from, the index gets a reranker's vectors "
                   "(which --no-segments turns off)")
    if not directory.exists():
        raise fail(f"no index at {directory}: pass --from FILES to create one")
    try:
        with Index.open(directory, writable=True) as index:
            reranker = CrossEncoder.from_pretrained(model or adapted_model(directory))
            if reranker.factorised is None:
                raise ValueError(f"no vectors to store: {not_factorised(reranker)}")
            typer.echo(stored_vectors(index, reranker))
    except (OSError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from exc


def not_factorised(reranker: Any) -> str:
    return f"{reranker.name} reads each document beside the query, so search encodes both"


def stored_vectors(index: Any, reranker: Any) -> str:
    summary = index.store_segments(reranker, show_progress=True)
    return (f"segments: {count(summary.segments, 'window vector')} of {reranker.name} stored for "
            f"{count(summary.passages, 'passage')} ({summary.encoded} encoded now, the rest kept): search encodes "
            "only the query")


@app.command()
def search(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    query: Annotated[str, typer.Argument(help="The query.")],
    top_k: Annotated[int, top_k_option("Results to show.")] = 10,
    retrievers: Annotated[str, typer.Option(help="Comma-separated: bm25, dense.")] = "bm25,dense",
    fusion: Annotated[Literal["rrf", "weighted"], typer.Option(
        help="How the retrievers' lists merge: reciprocal rank fusion or normalised scores.")] = "rrf",
    first_k: Annotated[int, typer.Option(help="Candidates per retriever.")] = 1000,
    rerank_k: Annotated[int, typer.Option(help="Candidates the cross-encoder reads.")] = 100,
    no_rerank: Annotated[bool, typer.Option("--no-rerank", help="Skip the cross-encoder.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Cross-encoder checkpoint directory (default: the index's adapted model, else the "
                              "bundled one).")] = None,
    no_adapted: Annotated[bool, typer.Option(
        "--no-adapted", help="Rerank with the bundled model even if the index has an adapted one.")] = False,
    first_stage_weight: Annotated[float | None, typer.Option(
        callback=check_first_stage_weight,
        help="Weight of the first stage's z-scored score in the final score (default: the model's fusion.json; "
             "0: the cross-encoder alone).")] = None,
    filters: Annotated[list[str] | None, typer.Option("--filter", "-f", help="FIELD=VALUE or FIELD>=VALUE ...")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Print every stage's scores, ranks and timings.")] = False,
    output_format: Annotated[Literal["text", "json"], typer.Option(
        "--format", help="text: a block per result; json: one object with the results and the trace.")] = "text",
) -> None:
    """Search an index: BM25 + dense retrieval, fusion, cross-encoder reranking (unless --no-rerank)."""
    from crossrank.pipeline import search_pipeline
    from crossrank.store import Index, adapted_model

    if model is None and not no_rerank and not no_adapted and (adapted := adapted_model(directory)) is not None:
        model = str(adapted)
        typer.echo(f"reranking with the index's adapted model {adapted} (--no-adapted: the bundled one)", err=True)
    names = [name.strip() for name in retrievers.split(",") if name.strip()]
    parsed_filters = parse_filters(filters or [])
    try:
        index = Index.open(directory)
        reranker = None
        if not no_rerank:
            from crossrank.model.cross_encoder import CrossEncoder

            reranker = CrossEncoder.from_pretrained(model)
            if (hint := unstored_vectors_hint(index, reranker, directory, model)) is not None:
                typer.echo(hint, err=True)
        pipeline = search_pipeline(index, names, first_k=first_k, fusion=fusion, reranker=reranker,
                                   rerank_k=rerank_k, k=top_k,
                                   first_stage_weight="model" if first_stage_weight is None else first_stage_weight)
        result = pipeline.search(query, filters=parsed_filters)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        message = str(exc)
        if not no_rerank and model is None and "default model" in message:
            message += " — or run with --no-rerank"
        raise fail(message) from exc
    if output_format == "json":
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    print_result(result, explain, describe_final_score(pipeline))


def unstored_vectors_hint(index: Any, reranker: Any, directory: Path, model: str | None) -> str | None:
    """An index that stores some reranker's passage vectors but not this one's makes search encode every candidate
    (a model trained since the index was built): say so, and how to store them, instead of being silently slow."""
    if not index.lacks_segments(reranker):
        return None
    return (f"note: {directory} stores passage vectors for another reranker, not {reranker.name}, so each query "
            f"encodes every candidate it reranks; store them once with `crossrank index {directory}"
            f"{f' -m {model}' if model else ''}`")


def describe_final_score(pipeline: Any) -> str:
    """How the last ordering stage made the score shown: the formula with its numbers, for --explain."""
    from crossrank.pipeline import Rerank

    rerank = next((stage for stage in pipeline.stages if isinstance(stage, Rerank)), None)
    first = pipeline.first_stage_name()
    if rerank is None:
        return f"{first} (no reranking)"
    w = 0 if rerank.interpolation is None else rerank.interpolation.weight_for(first)
    if w == 0:
        return f"{rerank.name}: the cross-encoder's logit; p = its calibrated probability"
    return (f"{rerank.name}_interpolated = {1 - w:.2f}·z({rerank.name}) + {w:.2f}·z({first}), z-scored over this "
            f"query's top {rerank.k}; p = the cross-encoder's calibrated probability")


def print_result(result: Any, explain: bool, final_score: str = "") -> None:
    """One block per result (rank, score, doc id, title, text); --explain adds every signal with its rank, the
    first stage the later stages started from, how the final score was made, and the trace."""
    if not result.candidates:
        typer.echo("no results")
    for rank, candidate in enumerate(result.candidates, start=1):
        probability = candidate.scores.get("rerank_probability")
        shown = f"  p={probability:.3f}" if probability is not None else ""
        typer.echo(f"{rank:>3}. {candidate.score:9.4f}{shown}  {candidate.id}  {candidate.title}".rstrip())
        typer.echo(f"     {snippet(candidate.text, 160)}")
        if explain:
            # "retrieve" only orders Retrieve's union by best rank for Fuse; no later stage reads it.
            signals = "  ".join(f"{name}={candidate.scores[name]:.4f} (#{candidate.ranks[name]})"
                                for name in candidate.ranks if name != "retrieve")
            typer.echo(f"     first stage ({result.first_stage}) #{result.first_stage_rank(candidate)}  {signals}")
    if explain:
        if final_score:
            typer.echo(f"score = {final_score}")
        typer.echo("trace:")
        for step in result.trace:
            typer.echo(f"  {step.stage:<10} {step.candidates_in:>6} in {step.candidates_out:>6} out {step.ms:10.1f} ms")


@app.command()
def delete(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    ids: Annotated[list[str], typer.Argument(help="Document ids to delete.")],
) -> None:
    """Delete documents (all their passages) by id."""
    from crossrank.store import Index

    try:
        with Index.open(directory, writable=True) as index:
            unknown = index.delete(ids)
            generation = index.commit()
    except (OSError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"deleted {count(len(set(ids)) - len(set(unknown)), 'document')}; generation {generation}")
    if unknown:
        typer.echo(f"not in the index: {', '.join(unknown)}", err=True)
        raise typer.Exit(1)


@app.command()
def info(directory: Annotated[Path, typer.Argument(help="Index directory.")]) -> None:
    """Counts, generation, configuration and metadata fields of an index, as JSON."""
    from crossrank.store import Index

    try:
        with Index.open(directory) as index:
            typer.echo(json.dumps(index.info(), indent=2))
    except OSError as exc:
        raise fail(str(exc)) from exc
