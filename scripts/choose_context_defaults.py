"""How `crossrank.context`'s defaults are chosen — on training splits only, with `crossrank eval-context`'s measures:

    python scripts/choose_context_defaults.py [--max-queries N] [--out eval-results/context-defaults.json]

Each training list set is scored once (every setting reads the same scores); `recall` sets feed 1–2, `abstention`
sets feed 3 (a set may be read twice: recall needs a real first stage, abstention each question's own candidates):
1. `sentence_weight`: the best mean evidence recall at 256 tokens over the sets (no floor, no abstention);
2. `min_probability`: the highest floor whose recall at 256 tokens stays within `--recall-tolerance` of no floor on
   every set (at that weight) — a floor only drops noise, it must not cost evidence;
3. `abstain_below`: the highest threshold on a list's best calibrated probability that still gives context to at
   least `--min-answered` of the answerable queries of every set; its abstention rate is read on the same queries
   with their relevant candidates removed (the no-answer construction `eval-context` tests).
Test sets (trec-dl-2020, the test splits) are never read here.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrank.context import ContextSelector
from crossrank.datasets import BeirDataset
from crossrank.evaluate.context import MemoEncoder, MemoScorer, first_stage_candidates, measure
from crossrank.evaluate.metrics import relevance_threshold
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.embedding import BiEncoder
from crossrank.types import Candidate


@dataclass(frozen=True)
class TrainingSet:
    spec: str  # dataset:split
    first: str  # eval-context's first stage
    depth: int
    max_queries: int | None
    measures: tuple[str, ...] = ("recall", "abstention")


# TrecQA's shipped runs list the answers first (an oracle order): its recall lists read BM25 over its sentence corpus.
TRAINING = (TrainingSet("wikiqa:train", "auto", 50, 300, ("recall",)),
            TrainingSet("wikiqa:train", "auto", 50, None, ("abstention",)),
            TrainingSet("wikiqa:dev", "auto", 50, None, ("abstention",)),
            TrainingSet("trecqa:train", "bm25", 50, None, ("recall",)),
            TrainingSet("trecqa:train", "auto", 50, None, ("abstention",)),
            TrainingSet("trecqa:dev", "auto", 50, None, ("abstention",)),
            TrainingSet("scifact:train", "hybrid", 20, 100, ("recall",)),
            TrainingSet("scifact:train", "hybrid", 20, 200, ("abstention",)),
            TrainingSet("trec-dl-2021:test", "auto", 50, None))
BUDGETS = (128, 256, 512)
DECIDING_BUDGET = 256
WEIGHTS = (0.25, 0.5, 0.75, 1.0)
FLOORS = (0.0, 0.01, 0.03)
ABSTAIN = (0.03, 0.05, 0.075, 0.1)


def recall_grid(selector: ContextSelector, queries: dict[str, str], lists: dict[str, list[Candidate]],
                relevant: dict[str, set[str]]) -> dict[str, dict[int, float]]:
    """Mean evidence recall per (floor, weight) and budget, abstention off."""
    out = {}
    for floor, weight in itertools.product(FLOORS, WEIGHTS):
        variant = selector.with_settings(abstain_below=0, min_probability=floor, sentence_weight=weight)
        out[f"{floor}/{weight}"] = {budget: float(np.mean([measure(variant.select(queries[q], lists[q], budget),
                                                                   relevant[q])["recall"] for q in lists]))
                                    for budget in BUDGETS}
    return out


def best_probabilities(scorer: MemoScorer, queries: dict[str, str], lists: dict[str, list[Candidate]],
                       relevant: dict[str, set[str]]) -> tuple[list[float], list[float]]:
    """Each list's best calibrated probability, with and without its relevant candidates."""
    answerable, stripped = [], []
    for qid, candidates in lists.items():
        scores = scorer.score([queries[qid]] * len(candidates), [c.document for c in candidates])
        probabilities = scorer.probabilities(scores.logits)
        answerable.append(float(probabilities.max()))
        rest = [p for p, c in zip(probabilities, candidates, strict=True) if c.doc_id not in relevant[qid]]
        if rest:
            stripped.append(float(max(rest)))
    return answerable, stripped


def evaluate_set(training: TrainingSet, selector: ContextSelector, scorer: MemoScorer, max_queries: int | None
                 ) -> dict:
    name, split = training.spec.split(":")
    dataset = BeirDataset(name, split)
    rel = relevance_threshold(dataset.qrels)
    limit = min(filter(None, (training.max_queries, max_queries)), default=None)
    _, queries, candidates = first_stage_candidates(dataset, training.first, None, training.depth, limit,
                                                    progress=False, say=lambda _: None)
    relevant = {q: {d for d, g in dataset.qrels[q].items() if g >= rel} for q in queries}
    lists = {q: candidates[q] for q in queries if any(c.doc_id in relevant[q] for c in candidates.get(q, []))}
    result = {"set": training.spec, "first": training.first, "depth": training.depth, "queries": len(lists)}
    if "abstention" in training.measures:
        answerable, stripped = best_probabilities(scorer, queries, lists, relevant)
        result["abstention"] = {str(t): {"answered": float(np.mean(np.asarray(answerable) >= t)),
                                         "abstained": float(np.mean(np.asarray(stripped) < t))} for t in ABSTAIN}
    if "recall" in training.measures:
        result["recall"] = recall_grid(selector, queries, lists, relevant)
    return result


def choose(results: list[dict], min_answered: float, tolerance: float) -> dict[str, float]:
    def recall(result: dict, floor: float, weight: float) -> float:
        return result["recall"][f"{floor}/{weight}"][DECIDING_BUDGET]

    recalls = [r for r in results if "recall" in r]
    abstentions = [r["abstention"] for r in results if "abstention" in r]
    weight = max(WEIGHTS, key=lambda w: np.mean([recall(r, 0.0, w) for r in recalls]))
    floor = max(f for f in FLOORS if all(recall(r, f, weight) >= recall(r, 0.0, weight) - tolerance for r in recalls))
    answering = [t for t in ABSTAIN if all(a[str(t)]["answered"] >= min_answered for a in abstentions)]
    return {"sentence_weight": weight, "min_probability": floor, "abstain_below": max(answering, default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-queries", type=int, default=None, help="at most N queries per set (a quick look)")
    parser.add_argument("--min-answered", type=float, default=0.92)
    parser.add_argument("--recall-tolerance", type=float, default=0.005)
    parser.add_argument("--out", type=Path, default=Path("eval-results/context-defaults.json"))
    args = parser.parse_args()
    scorer = MemoScorer(CrossEncoder.from_pretrained())
    selector = ContextSelector(scorer, MemoEncoder(BiEncoder.from_pretrained()))
    results = []
    for training in TRAINING:
        results.append(evaluate_set(training, selector, scorer, args.max_queries))
        result = results[-1]
        print(f"\n{result['set']} ({result['first']} top-{result['depth']}, {result['queries']} queries); recall at "
              f"{', '.join(map(str, BUDGETS))} tokens by floor/sentence_weight", flush=True)
        for key, row in result.get("recall", {}).items():
            print(f"  {key:10} " + "  ".join(f"{row[b]:.4f}" for b in BUDGETS))
        if "abstention" in result:
            print("  abstain_below: answered / abstained on no-answer  " + "  ".join(
                f"{t}: {v['answered']:.2f}/{v['abstained']:.2f}" for t, v in result["abstention"].items()))
    chosen = choose(results, args.min_answered, args.recall_tolerance)
    print(f"\nchosen: {chosen}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"chosen": chosen, "sets": results, "min_answered": args.min_answered,
                                    "recall_tolerance": args.recall_tolerance}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
