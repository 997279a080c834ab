"""`crossrank eval`: several pipelines on a judged BEIR split, side by side, with significance, a depth curve,
failure analysis, TREC runs, JSON results and an HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from crossrank.cli.app import app
from crossrank.cli.common import BackendOption, Bf16Option, Int8Option, ModelOption, engine_precision, fail


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _ints(value: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in _csv(value))
    except ValueError as exc:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {value!r}") from exc


@app.command("eval")
def evaluate(
    dataset_dir: Annotated[str, typer.Argument(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/), a "
                                                    "dataset name under $CROSSRANK_DATASETS, or an index directory "
                                                    "with --qrels judgments.")],
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    qrels: Annotated[str | None, typer.Option(
        help="For a BEIR folder, the same as --split; for an index directory, 'judgments' (every judge's, "
             "combined) or 'judgments@JUDGE' (one judge's): retrieval then searches that index.")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="TREC run to rerank (the 'run' first stage).")] = None,
    pipelines: Annotated[str | None, typer.Option(
        help="Comma-separated FIRST[>>RERANKER]: first stages run, bm25, dense, hybrid; rerankers ce (the "
             "--model cross-encoder; ce:NAME with several), ce+ (the same, interpolated with the first stage at "
             "the weight the model ships in fusion.json; ce+:NAME), bi (bi-encoder cosine). Default: run, run>>bi, "
             "run>>ce with --run, else bm25, dense, hybrid, hybrid>>ce; plus the ce+ row when the model ships "
             "fusion.json.")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Cross-encoder checkpoint directory, repeatable (default: the bundled model).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for runs/*.trec and results.json "
                                                   "(default: eval-results/DATASET-SPLIT).")] = None,
    measures: Annotated[str, typer.Option(help="ir-measures names; the first is the primary.")] =
        "nDCG@10,RR@10,R@100,AP",
    depth: Annotated[int, typer.Option(help="Rerank depth of the table's pipelines.")] = 100,
    depths: Annotated[str, typer.Option(help="Depth curve points.")] = "10,20,50,100,200",
    baseline: Annotated[str | None, typer.Option(help="Pipeline the others are tested against (default: first).")]
        = None,
    rel: Annotated[int | None, typer.Option(help="Binary relevance threshold (default: 2 on 0-3 scales, else 1).")]
        = None,
    permutations: Annotated[int, typer.Option(help="Randomisation test permutations.")] = 10_000,
    timing_queries: Annotated[int, typer.Option(help="Queries timed per rerank depth.")] = 10,
    max_queries: Annotated[int | None, typer.Option(help="Evaluate only the first N judged queries (quick looks).")]
        = None,
    curve: Annotated[bool, typer.Option(help="Compute the depth curve.")] = True,
    backend: BackendOption = "auto",
    int8: Int8Option = False,
    bf16: Bf16Option = False,
) -> None:
    """Evaluate pipelines on a judged split: metrics, paired significance, depth curve, failures, report."""
    from crossrank.datasets import parse_dataset_spec
    from crossrank.evaluate.experiment import ExperimentConfig
    from crossrank.evaluate.report import markdown_summary, render_html
    from crossrank.evaluate.runner import EvaluationError, run_evaluation

    try:
        dataset = parse_dataset_spec(f"{dataset_dir}:{qrels or split}")
        config = ExperimentConfig(measures=tuple(_csv(measures)), depth=depth, depths=_ints(depths, "--depths"),
                                  baseline=baseline, permutations=permutations, timing_queries=timing_queries,
                                  rel=rel, curve=curve)
        backend, quantize = engine_precision(backend, int8, bf16)
        result = run_evaluation(dataset, config, run=run, pipelines=pipelines, models=model or [],
                                backend=backend, quantize=quantize, max_queries=max_queries,
                                say=lambda text: typer.echo(text, err=True))
    except (FileNotFoundError, ValueError, TypeError, EvaluationError) as exc:
        raise fail(str(exc)) from exc
    folder = out or Path("eval-results") / f"{dataset.name}-{qrels or split}"
    written = result.write(folder)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_html(result), encoding="utf-8")
    typer.echo(markdown_summary(result))
    typer.echo(f"\nruns and results.json: {written['results.json'].parent}" +
               (f"; report: {report}" if report is not None else ""), err=True)


@app.command("eval-context")
def evaluate_context(
    dataset_dir: Annotated[str, typer.Argument(help="BEIR folder, or a dataset name under $CROSSRANK_DATASETS.")],
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    budgets: Annotated[str, typer.Option(help="Comma-separated token budgets.")] = "128,256,512,1024",
    first: Annotated[Literal["auto", "run", "bm25", "hybrid"], typer.Option(
        help="First stage: auto is the split's shipped run (runs/candidates-SPLIT.trec or the set's only run), "
             "else hybrid retrieval over the corpus.")] = "auto",
    run_name: Annotated[str | None, typer.Option("--run", help="Name of a shipped run (runs/NAME.trec).")] = None,
    depth: Annotated[int, typer.Option(min=1, help="First-stage candidates each system selects from.")] = 50,
    granularity: Annotated[Literal["passage", "sentence"], typer.Option(help="select_context's granularity.")]
        = "sentence",
    abstain_below: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Abstention threshold on the best passage (default: the library's).")] = None,
    min_probability: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Relevance floor (default: the library's).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="tokenizer.json (or a folder with one) that counts tokens; default: the estimate.")] = None,
    model: ModelOption = None,
    backend: BackendOption = "auto",
    max_queries: Annotated[int | None, typer.Option(min=1, help="Only the first N judged queries.")] = None,
    permutations: Annotated[int, typer.Option(min=1, help="Randomisation test permutations.")] = 10_000,
    report: Annotated[Path | None, typer.Option(help="Write an HTML report (recall vs budget plot) here.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write results.json here (a file path).")] = None,
) -> None:
    """Evaluate RAG context selection: evidence recall, precision, tokens and abstention per token budget, against
    first-stage and cross-encoder-passage baselines, with Holm-corrected paired tests."""
    from crossrank.context import ContextSelector
    from crossrank.datasets import BeirDataset
    from crossrank.evaluate.context import ContextEvalConfig
    from crossrank.evaluate.context import evaluate_context as run
    from crossrank.evaluate.context_report import markdown_summary, render_html
    from crossrank.evaluate.metrics import relevance_threshold
    from crossrank.model.cross_encoder import CrossEncoder

    try:
        dataset = BeirDataset(Path(dataset_dir), split)
        config = ContextEvalConfig(budgets=_ints(budgets, "--budgets"), depth=depth,
                                   rel=relevance_threshold(dataset.qrels), permutations=permutations)
        thresholds = {name: value for name, value in (("abstain_below", abstain_below),
                                                      ("min_probability", min_probability)) if value is not None}
        selector = ContextSelector(CrossEncoder.from_pretrained(model, backend=backend), granularity=granularity,
                                   tokenizer=tokenizer, **thresholds)
        result = run(dataset, selector, config, first=first, run_name=run_name, max_queries=max_queries,
                     say=lambda text: typer.echo(text, err=True))
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc
    target = out or Path("eval-results") / f"context-{dataset.name}-{split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result.to_dict(), indent=2, default=float), encoding="utf-8")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_html(result), encoding="utf-8")
    typer.echo(markdown_summary(result))
    typer.echo(f"\nresults: {target}" + (f"; report: {report}" if report is not None else ""), err=True)
