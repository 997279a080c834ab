"""What ships beside trained weights: a Platt calibration fitted on dev scores (through the engine, windows and
all, so it matches deployed logits) and a model card stating data, recipe, metrics and the data's licence terms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crossrank.model.calibration import Calibrator
from crossrank.train.data import RankingList

# Terms of the judged sets crossrank knows; a model trained on them inherits them.
DATA_TERMS = {
    "trec-dl-2021": "MS MARCO passages and TREC DL judgments: non-commercial research use only (MS MARCO terms).",
    "trec-dl-2020": "MS MARCO passages and TREC DL judgments: non-commercial research use only (MS MARCO terms).",
    "wikiqa": "WikiQA: Microsoft Research Data License Agreement (non-commercial research).",
    "trecqa": "TrecQA: TREC QA track questions/answers (research use, NIST/LDC-derived text).",
    "scifact": "SciFact: CC BY-NC 2.0 (non-commercial).",
    "npl": "NPL (Vaswani) test collection: research use.",
}


def fit_calibration(model_dir: Path, lists: Sequence[RankingList], rel: int = 1, method: str = "platt",
                    backend: str = "torch", scores: Sequence[np.ndarray] | None = None) -> Calibrator:
    """Fit the calibrator on (logit, label ≥ rel) of labelled lists, scored by the engine unless `scores` (one
    array per list, as `CrossEncoderTeacher.score_lists` returns) are given; saves calibration.json."""
    labelled = [i for i, item in enumerate(lists) if item.labels is not None]
    if not labelled:
        raise ValueError("calibration needs dev lists with labels")
    if scores is None:
        from crossrank.train.teacher import CrossEncoderTeacher

        scores = CrossEncoderTeacher(model_dir, backend, progress=False).score_lists([lists[i] for i in labelled])
    else:
        scores = [scores[i] for i in labelled]
    logits = np.concatenate(list(scores))
    labels = np.concatenate([lists[i].labels >= rel for i in labelled])
    calibrator = Calibrator.fit(logits, labels, method)  # type: ignore[arg-type]
    calibrator.save(Path(model_dir))
    return calibrator


def write_model_card(model_dir: Path, *, title: str, summary: str, data: Sequence[str], command: str,
                     metrics_markdown: str = "", notes: str = "") -> Path:
    """README.md for a checkpoint: what it is, how it was trained (training.json when present), how it scores,
    and the terms of every dataset it saw."""
    model_dir = Path(model_dir)
    training = model_dir / "training.json"
    recipe = ""
    if training.is_file():
        info = json.loads(training.read_text(encoding="utf-8"))
        keys = ("steps", "best_step", "pairs_seen", "wall_seconds", "device", "best_dev_ndcg@10", "dev")
        recipe = "\n".join(f"| {k} | {info.get(k)} |" for k in keys)
        recipe = "| | |\n|---|---|\n" + recipe + "\n\nConfiguration: `" + json.dumps(info.get("config", {})) + "`\n"
    terms = "\n".join(f"- `{name}`: {DATA_TERMS.get(name.split(':')[0], 'see the dataset source')}" for name in data)
    text = (f"# {title}\n\n{summary}\n\n## Training data\n\n" + "\n".join(f"- `{d}`" for d in data)
            + f"\n\n## Recipe\n\n```\n{command}\n```\n\n{recipe}\n"
            + (f"## Evaluation\n\n{metrics_markdown}\n\n" if metrics_markdown else "")
            + (f"{notes}\n\n" if notes else "")
            + "## Licence terms of the training data\n\nThe weights are derived from the data below and inherit its "
              f"terms: use them for research only, not commercially.\n\n{terms}\n")
    path = model_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
