"""`crossrank ltr features|train` and `crossrank clicks simulate|train`: learning to rank from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from crossrank.cli.app import app
from crossrank.cli.common import Bf16Option, Int8Option, JsonOption, SeedOption, engine_precision, fail

ltr_app = typer.Typer(help="LambdaMART over pipeline features: log features, train, evaluate.", no_args_is_help=True)
clicks_app = typer.Typer(help="Click logs: simulate them from judgments, learn from them (naive or IPS).",
                         no_args_is_help=True)
app.add_typer(ltr_app, name="ltr")
app.add_typer(clicks_app, name="clicks")

FeaturesOption = Annotated[Path, typer.Option("--features", "-f", help="Feature log (TSV from `ltr features`).")]
TestOption = Annotated[Path | None, typer.Option("--test", help="Feature log of the test split to evaluate on.")]
QrelsOption = Annotated[str | None, typer.Option(
    "--qrels", help="DATASET[:split] whose full judgments score --test (default: the test log's own labels).")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Directory to save the model in.")]
TopOption = Annotated[int | None, typer.Option("--top-k", help="Train and test on each query's top k by --by only.")]
ByOption = Annotated[str, typer.Option("--by", help="Signal whose rank --top-k uses (the first stage).")]
FoldsOption = Annotated[int, typer.Option(min=1, help="Cross-validation folds: the model averages one booster per "
                                                      "fold, each stopped on its fold (1: a single holdout).")]
LeavesOption = Annotated[int, typer.Option(min=2, help="Leaves per tree.")]
MinLeafOption = Annotated[int, typer.Option(min=1, help="Minimum rows per leaf (regularises small judged sets).")]


def _load(path: Path, top_k: int | None = None, by: str = "bm25"):
    from crossrank.ltr.featurelog import FeatureTable

    if not path.is_file():
        raise fail(f"no such feature log: {path}")
    try:
        table = FeatureTable.load(path)
        return table if top_k is None else table.head(top_k, by)
    except ValueError as exc:
        raise fail(str(exc))


def _report(rows: list, baseline: str | None, json_path: Path | None, extra: dict | None = None) -> None:
    """Print nDCG@10 per system with the paired tests of the evaluation module against the baseline (t-test and
    randomisation, Holm-corrected; wins/ties/losses per query) and optionally save it all."""
    from crossrank.evaluate.significance import compare_all

    systems = {r.system: r.per_query for r in rows}
    tests = compare_all(systems, baseline) if baseline in systems and len(systems) > 1 else {}
    base = next((r.mean for r in rows if r.system == baseline), None)
    typer.echo(f"{'system':<28} nDCG@10   Δ vs {baseline:<9} p(t, Holm)  p(rand, Holm)  W/T/L")
    for row in rows:
        delta = "" if base is None else f"{row.mean - base:+.4f}"
        test = tests.get(row.system)
        detail = "" if test is None else (f"   {test.t_p_holm:<11.4f} {test.randomisation_p_holm:<14.4f} "
                                          f"{test.wins}/{test.ties}/{test.losses}")
        typer.echo(f"{row.system:<28} {row.mean:.4f}    {delta:<9}{detail}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"measure": "nDCG@10", **(extra or {}), "baseline": baseline, "systems": {
            r.system: {"mean": r.mean, "per_query": r.per_query,
                       **({"vs_baseline": tests[r.system].to_dict()} if r.system in tests else {})}
            for r in rows}}, indent=2))


@ltr_app.command("features")
def features(
    dataset: Annotated[str, typer.Argument(help="DATASET[:split], e.g. trec-dl-2021:test or scifact:train.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Feature log to write (TSV).")],
    run: Annotated[str | None, typer.Option(help="First stage: a shipped run name or a TREC run file "
                                                 "(default: full-corpus BM25).")] = None,
    depth: Annotated[int, typer.Option(help="Candidates per query.")] = 100,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Cross-encoder dir, 'default', or 'none'.")]
    = "default",
    ce_depth: Annotated[int | None, typer.Option(help="Cross-encoder depth (default: --depth).")] = None,
    dense: Annotated[bool, typer.Option(help="Bi-encoder cosine and RRF fusion features.")] = True,
    int8: Int8Option = False,
    bf16: Bf16Option = False,
    query_batch: Annotated[int, typer.Option(help="Queries per pipeline call (a corpus document shared by "
                                                   "several queries of a call is embedded once).")] = 16,
) -> None:
    """Run the pipeline over a judged split and log (query, candidate) features with their judgments."""
    from crossrank.datasets import parse_dataset_spec
    from crossrank.ltr.experiment import feature_pipeline, first_stage_run, log_features, pipeline_feature_set
    from crossrank.model.checkpoint import CheckpointError
    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.embedding import BiEncoder

    if depth <= 0 or query_batch <= 0 or (ce_depth is not None and ce_depth <= 0):
        raise fail("--depth, --ce-depth and --query-batch must be positive")
    try:
        data = parse_dataset_spec(dataset)
        first = first_stage_run(data, run, depth)
        backend, quantize = engine_precision("auto", int8, bf16)
        ce = None if model in (None, "none") else CrossEncoder.from_pretrained(
            None if model == "default" else model, backend=backend, quantize=quantize)
        bi = None
        if dense:
            from crossrank.evaluate.systems import CosineScorer

            bi = CosineScorer(BiEncoder.from_pretrained())
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        raise fail(str(exc))
    pipeline = feature_pipeline(first, data, depth, bi, ce, ce_depth)
    table = log_features(data, pipeline, pipeline_feature_set(pipeline), out, query_batch)
    typer.echo(f"{len(table.qids)} rows, {len(set(table.qids))} queries, features {table.feature_set.names} "
               f"({pipeline!r}) -> {out}")


@ltr_app.command("join")
def join(
    base: Annotated[Path, typer.Argument(help="Feature log whose rows are kept.")],
    other: Annotated[Path, typer.Argument(help="Feature log whose extra columns are added.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Joined feature log to write.")],
) -> None:
    """Feature union of two logs of the same split (e.g. cross-encoder features computed in a separate pass)."""
    try:
        table = _load(base).join(_load(other))
    except ValueError as exc:
        raise fail(str(exc))
    table.save(out)
    typer.echo(f"{len(table.qids)} rows, features {table.feature_set.names} -> {out}")


@ltr_app.command("train")
def train(
    features_path: FeaturesOption,
    out: OutOption = None,
    test: TestOption = None,
    qrels: QrelsOption = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Leave out a feature (repeatable), for ablations.")]
    = None,
    valid_fraction: Annotated[float, typer.Option(help="Share of training queries held out for early stopping "
                                                       "(with --folds 1).")] = 0.2,
    rounds: Annotated[int, typer.Option(help="Maximum boosting rounds.")] = 500,
    folds: FoldsOption = 5,
    leaves: LeavesOption = 15,
    min_data_in_leaf: MinLeafOption = 20,
    top_k: TopOption = None,
    by: ByOption = "bm25",
    seed: SeedOption = 0,
    json_out: JsonOption = None,
) -> None:
    """Train LambdaMART on judged features; with --test, compare it with every logged signal on nDCG@10."""
    from crossrank.ltr.experiment import train_on_judgments

    table = _load(features_path, top_k, by)
    if exclude:
        unknown = sorted(set(exclude) - set(table.feature_set.names))
        if unknown:
            raise fail(f"--exclude {unknown}: not in {table.feature_set.key} {table.feature_set.names}")
        table = table.select([n for n in table.feature_set.names if n not in exclude])
    try:
        model = train_on_judgments(table, valid_fraction, seed, folds, num_rounds=rounds, num_leaves=leaves,
                                   min_data_in_leaf=min_data_in_leaf)
    except ValueError as exc:
        raise fail(str(exc))
    typer.echo(model.card_markdown())
    if out is not None:
        model.save(out)
        typer.echo(f"saved -> {out}")
    if test is not None:
        test_table = _load(test, top_k, by)
        if exclude:
            test_table = test_table.select(table.feature_set.names, table.feature_set.name)
        _evaluate(model, test_table, qrels, "ltr", json_out)


def _evaluate(model, test, qrels_spec: str | None, label: str, json_out: Path | None,
              extra: dict | None = None) -> None:
    """Every logged signal and the model on the test log, against the dataset's full judgments."""
    from crossrank.datasets import parse_dataset_spec
    from crossrank.ltr.experiment import evaluate, signal_scores

    try:
        qrels = parse_dataset_spec(qrels_spec).qrels if qrels_spec else test.run(test.labels)
        rows = [evaluate(test, signal_scores(test, n.split(":", 1)[1]), qrels, n.split(":", 1)[1])
                for n in test.feature_set.names if n.startswith("score:")]
        rows.append(evaluate(test, model.score(test), qrels, label))
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc))
    baseline = "rerank" if any(r.system == "rerank" for r in rows) else rows[0].system
    _report(rows, baseline, json_out, extra)


@clicks_app.command("simulate")
def simulate(
    features_path: FeaturesOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Click log to write (JSON lines).")],
    user: Annotated[Literal["pbm", "cascade"], typer.Option(
        "--user", help="Click model: pbm (position-based) or cascade.")] = "pbm",
    sessions: Annotated[int, typer.Option(help="Impressions per query.")] = 1000,
    depth: Annotated[int, typer.Option(help="Results shown per impression.")] = 10,
    logging_ranker: Annotated[str, typer.Option("--logging", help="Signal whose order is shown.")] = "bm25",
    swap_prob: Annotated[float, typer.Option(help="Adjacent-swap randomisation (makes bias estimable).")] = 0.0,
    noise: Annotated[float, typer.Option(help="Click noise: P(click | seen, grade 0).")] = 0.1,
    eta: Annotated[float, typer.Option(help="PBM examination θ_k = (1/k)^eta.")] = 1.0,
    seed: SeedOption = 0,
) -> None:
    """Simulate users clicking on a feature log's candidates; true grades are the log's judgments."""
    from crossrank.ltr.clicks import write_click_log
    from crossrank.ltr.experiment import simulate_clicks
    from crossrank.ltr.simulator import CascadeModel, PositionBasedModel, graded_click_probs

    table = _load(features_path)
    try:
        judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in table.run(table.labels).items()}
        top = max(1, max(g for docs in judged.values() for g in docs.values()))
        probs = graded_click_probs(top, noise)
        if user == "pbm":
            model = PositionBasedModel(probs, eta)
        else:
            model = CascadeModel(probs, tuple(0.2 + 0.7 * p for p in probs))
        if f"score:{logging_ranker}" not in table.feature_set.names:
            raise ValueError(f"--logging {logging_ranker!r} is not a logged signal of {table.feature_set.names}")
        log = simulate_clicks(table, judged, model, logging_ranker, sessions, depth, swap_prob, seed)
    except ValueError as exc:
        raise fail(str(exc))
    count = write_click_log(log, out)
    clicks = sum(len(i.clicks) for i in log)
    typer.echo(f"{count} impressions, {clicks} clicks ({clicks / count:.2f}/impression) -> {out}")


@clicks_app.command("train")
def clicks_train(
    features_path: FeaturesOption,
    log_path: Annotated[Path, typer.Option("--log", help="Click log (JSON lines).")],
    debias: Annotated[bool, typer.Option(help="IPS with EM-estimated position bias (--no-debias: naive CTR).")]
    = True,
    dwell: Annotated[float | None, typer.Option(help="Count only clicks with at least this dwell (s).")] = None,
    max_weight: Annotated[float | None, typer.Option(help="Clip IPS weights (variance control).")] = None,
    folds: FoldsOption = 5,
    leaves: LeavesOption = 15,
    min_data_in_leaf: MinLeafOption = 20,
    out: OutOption = None,
    test: TestOption = None,
    qrels: QrelsOption = None,
    top_k: TopOption = None,
    by: ByOption = "bm25",
    seed: SeedOption = 0,
    json_out: JsonOption = None,
) -> None:
    """Train LambdaMART from a click log over a feature log's candidates; with --test, evaluate it."""
    from crossrank.ltr.clicks import read_click_log
    from crossrank.ltr.experiment import train_on_clicks

    table = _load(features_path, top_k, by)
    if not log_path.is_file():
        raise fail(f"no such click log: {log_path}")
    try:
        log = read_click_log(log_path)
        model, bias = train_on_clicks(table, log, debias, dwell_threshold=dwell, max_weight=max_weight, seed=seed,
                                      folds=folds, num_leaves=leaves, min_data_in_leaf=min_data_in_leaf)
    except ValueError as exc:
        raise fail(str(exc))
    if bias is not None:
        typer.echo("estimated propensities θ_k: " + " ".join(f"{t:.3f}" for t in bias.theta))
    typer.echo(model.card_markdown())
    if out is not None:
        model.save(out)
        typer.echo(f"saved -> {out}")
    if test is not None:
        label = "ltr-clicks-ips" if debias else "ltr-clicks-naive"
        _evaluate(model, _load(test, top_k, by), qrels, label, json_out,
                  {"propensities": None if bias is None else list(bias.theta)})
