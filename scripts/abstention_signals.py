"""Can a statistic of the whole candidate list tell "nothing here answers" better than the best probability?

    python scripts/abstention_signals.py [--out eval-results/abstention-signals.json]

`select_context` abstains when a list's best calibrated probability is under `abstain_below`; on the training sets
that signal separates answerable lists from the same lists with their relevant candidates removed (the no-answer
construction of `crossrank eval-context`) with an AUC of only 0.69–0.78. This measures, on the same training lists
`scripts/choose_context_defaults.py` reads for abstention, the AUC of list-relative statistics of the model's
logits, the share of no-answer lists each would abstain on while 90 % of answerable ones still get context, and a
logistic blend of them with the best logit fitted with each set held out in turn. Test sets are never read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from choose_context_defaults import TRAINING, TrainingSet
from scipy.optimize import minimize
from scipy.stats import mannwhitneyu

from crossrank.datasets import BeirDataset
from crossrank.evaluate.context import first_stage_candidates
from crossrank.evaluate.metrics import relevance_threshold
from crossrank.model.cross_encoder import CrossEncoder

STATISTICS = {
    "best": lambda s: s[0],
    "best - second": lambda s: s[0] - s[1] if len(s) > 1 else 0.0,
    "best - median": lambda s: s[0] - float(np.median(s)),
    "best - mean of rest": lambda s: s[0] - float(s[1:].mean()) if len(s) > 1 else 0.0,
    "z of best": lambda s: (s[0] - s.mean()) / (s.std() + 1e-6),
    "softmax of best": lambda s: 1 / float(np.exp(s - s[0]).sum()),
    "mean of top 3": lambda s: float(s[:3].mean()),
}
BLENDS = (("best", "best - median"), ("best", "z of best"), ("best", "best - mean of rest", "mean of top 3"))
ANSWERED = 0.9


def list_logits(training: TrainingSet, model: CrossEncoder) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each answerable list's logits sorted high to low, and the same list's without its relevant candidates."""
    name, split = training.spec.split(":")
    dataset = BeirDataset(name, split)
    rel = relevance_threshold(dataset.qrels)
    _, queries, candidates = first_stage_candidates(dataset, training.first, None, training.depth,
                                                    training.max_queries, progress=False, say=lambda _: None)
    answerable, stripped = [], []
    for qid, query in queries.items():
        relevant = {d for d, g in dataset.qrels[qid].items() if g >= rel}
        found = candidates.get(qid, [])
        if not any(c.doc_id in relevant for c in found):
            continue
        logits = model.score([query] * len(found), [c.document for c in found]).logits
        is_relevant = np.array([c.doc_id in relevant for c in found])
        answerable.append(np.sort(logits)[::-1])
        if not is_relevant.all():
            stripped.append(np.sort(logits[~is_relevant])[::-1])
    return answerable, stripped


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def abstained_at(positive: np.ndarray, negative: np.ndarray) -> float:
    """Share of no-answer lists under the threshold that still gives context to ANSWERED of the answerable ones."""
    return float(np.mean(negative < np.quantile(positive, 1 - ANSWERED)))


def fit_logistic(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Weights (bias last) of an L2-regularised logistic regression on standardised features."""
    x = np.c_[features, np.ones(len(features))]

    def loss(w: np.ndarray) -> float:
        margin = x @ w
        return float(np.mean(np.logaddexp(0, margin) - labels * margin) + 1e-3 * w[:-1] @ w[:-1])

    return minimize(loss, np.zeros(x.shape[1]), method="L-BFGS-B").x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("eval-results/abstention-signals.json"))
    args = parser.parse_args()
    model = CrossEncoder.from_pretrained()
    features = {}
    for training in (t for t in TRAINING if "abstention" in t.measures):
        answerable, stripped = list_logits(training, model)
        features[training.spec] = tuple(np.array([[f(s) for f in STATISTICS.values()] for s in lists])
                                        for lists in (answerable, stripped))
    names = list(STATISTICS)
    results = {"single": {}, "blends": {}}
    print(f"AUC (answerable vs no-answer) / share of no-answer lists abstained at {ANSWERED:.0%} answered")
    for spec, (positive, negative) in features.items():
        results["single"][spec] = {n: {"auc": auc(positive[:, i], negative[:, i]),
                                       "abstained": abstained_at(positive[:, i], negative[:, i])}
                                   for i, n in enumerate(names)}
        print(f"{spec:20} " + "  ".join(f"{n}: {v['auc']:.3f}/{v['abstained']:.2f}"
                                       for n, v in results["single"][spec].items()))
    print("logistic blends, each set held out from the fit (AUC, change against the best logit alone):")
    for blend in BLENDS:
        columns = [names.index(n) for n in blend]
        row = {}
        for held in features:
            rest = [features[s] for s in features if s != held]
            x = np.vstack([np.vstack(pair)[:, columns] for pair in rest])
            y = np.concatenate([np.r_[np.ones(len(p)), np.zeros(len(n))] for p, n in rest])
            mean, scale = x.mean(0), x.std(0) + 1e-9
            weights = fit_logistic((x - mean) / scale, y)[:-1]
            positive, negative = (((f[:, columns] - mean) / scale) @ weights for f in features[held])
            value = auc(positive, negative)
            row[held] = {"auc": value, "change": value - results["single"][held]["best"]["auc"]}
        results["blends"][" + ".join(blend)] = row
        print(f"  {' + '.join(blend):40} " + "  ".join(f"{s}: {v['auc']:.3f} ({v['change']:+.3f})"
                                                      for s, v in row.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
