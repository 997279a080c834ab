"""One call from dataset specs to a shipped checkpoint: build lists, attach teacher scores, train, calibrate,
write the model card. The `crossrank train` command is a thin shell over `train_from_datasets`."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from crossrank.datasets import parse_dataset_spec
from crossrank.train.card import fit_calibration, write_model_card
from crossrank.train.data import RankingList, lists_from_dataset, load_lists
from crossrank.train.trainer import DevSet, TrainConfig, Trainer, TrainResult


def train_from_datasets(config: TrainConfig, out: str | Path, train: Sequence[str] = (),
                        train_lists: Sequence[str | Path] = (), dev: str | None = None, dev_depth: int = 100,
                        teacher: str | None = None, calibrate: bool = True) -> TrainResult:
    """Train on `train` specs ("wikiqa:train") and prepared list files; select on `dev`; `teacher` names a
    bi-encoder dir ("minilm" = the bundled one) whose scores feed the teacher loss."""
    lists: list[RankingList] = []
    for spec in train:
        lists += lists_from_dataset(parse_dataset_spec(spec), seed=config.seed)
    for path in train_lists:
        lists += load_lists(Path(path))
    if not lists:
        raise ValueError("no training data: give --train DATASET[:split] or --train-lists FILE")
    if teacher is not None:
        from crossrank.train.teacher import BiEncoderTeacher, attach_teacher

        missing = [item for item in lists if item.teacher is None]
        attach_teacher(missing, BiEncoderTeacher(None if teacher == "minilm" else teacher,
                                                 device=str(_device(config.device))))
    dev_set = DevSet.from_dataset(parse_dataset_spec(dev), dev_depth) if dev else None
    result = Trainer(config, lists, out, dev=dev_set).train()
    names = sorted({spec.split(":")[0].rstrip("/").split("/")[-1] for spec in train}
                   | {item.source.split("/")[0] for item in lists if item.source})
    if calibrate and dev_set is not None:
        rel = 2 if max((max(j.values(), default=0) for j in dev_set.qrels.values()), default=0) >= 3 else 1
        fit_calibration(Path(out), dev_set.lists, rel=rel)
    command = ["crossrank", "train", "--base", config.base, *(f"--train={s}" for s in train),
               *(f"--train-lists={p}" for p in train_lists), *([f"--dev={dev}"] if dev else []), f"--out={out}"]
    write_model_card(Path(out), title=Path(out).name, summary=f"Cross-encoder fine-tuned from `{config.base}`.",
                     data=names, command=shlex.join(map(str, command)) + "  # options: see Configuration")
    return result


def _device(name: str) -> str:
    from crossrank.train.trainer import resolve_device

    return str(resolve_device(name))
