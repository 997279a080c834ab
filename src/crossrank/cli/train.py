"""`crossrank train`: fine-tune a cross-encoder on judged BEIR/TREC folders (and prepared list files)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from crossrank.cli.app import app
from crossrank.cli.common import SeedOption
from crossrank.train.loss_names import LABEL_LOSS_NAMES, TEACHER_LOSS_NAMES


@app.command()
def train(
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the trained checkpoint.")],
    base: Annotated[str, typer.Option(help="Start checkpoint: a dir, 'default' (bundled model) or 'minilm'.")] = "default",
    train_specs: Annotated[list[str] | None, typer.Option("--train", help="DATASET[:split], repeatable.")] = None,
    train_lists: Annotated[list[str] | None, typer.Option("--train-lists", help="Prepared lists file, repeatable.")] = None,
    dev: Annotated[str | None, typer.Option(help="DATASET[:split] for dev nDCG@10 and checkpoint selection.")] = None,
    loss: Annotated[str, typer.Option(help=f"Label loss: {', '.join(sorted(LABEL_LOSS_NAMES))} or none.")] = "listwise",
    teacher_loss: Annotated[str, typer.Option(help=f"Distillation loss: {', '.join(sorted(TEACHER_LOSS_NAMES))} or none.")] = "none",
    teacher: Annotated[str, typer.Option(help="Bi-encoder teacher dir, or 'minilm' (bundled).")] = "minilm",
    steps: Annotated[int, typer.Option(help="Optimizer steps (upper bound with --max-minutes).")] = 1000,
    max_minutes: Annotated[float | None, typer.Option(help="Wall-clock budget; the LR schedule follows it.")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate of the encoder body.")] = 2e-5,
    head_lr: Annotated[float, typer.Option(help="Learning rate of the pooler and classifier head.")] = 1e-3,
    architecture: Annotated[str, typer.Option(
        help="Student: 'gated' (starts as the bi-encoder; the default for a bi-encoder or gated base), "
             "'classifier' ([CLS] head; the default for a classifier base) or 'auto'.")] = "auto",
    freeze_gates: Annotated[bool, typer.Option(
        help="Keep a gated student's cross-segment gates where they start: from the bundled model (gates closed) "
             "the result still scores factorised, each passage encoded once, its vectors storable in an index.")
    ] = False,
    max_length: Annotated[int, typer.Option(help="Tokens per (query, document) pair.")] = 256,
    group_size: Annotated[int, typer.Option(help="Documents per list in a batch (1 anchor + negatives).")] = 16,
    lists_per_step: Annotated[int, typer.Option(help="Lists per optimizer step.")] = 32,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    eval_every: Annotated[int, typer.Option(help="Steps between dev evaluations.")] = 200,
    patience: Annotated[int | None, typer.Option(help="Stop after this many evaluations without a dev gain.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 …")] = "auto",
    seed: SeedOption = 0,
    resume: Annotated[bool, typer.Option(help="Resume from OUT/trainer_state.pt.")] = False,
    calibrate: Annotated[bool, typer.Option(help="Fit Platt calibration on the dev scores.")] = True,
) -> None:
    """Fine-tune a cross-encoder: lists from judged splits, label and distillation losses, dev selection."""
    from crossrank.train.run import train_from_datasets
    from crossrank.train.trainer import TrainConfig

    try:
        config = TrainConfig(
            base=base, architecture=architecture, freeze_gates=freeze_gates, max_length=max_length,
            group_size=group_size, lists_per_step=lists_per_step,
            label_loss=None if loss == "none" else loss, teacher_loss=None if teacher_loss == "none" else teacher_loss,
            lr=lr, head_lr=head_lr, steps=steps, max_minutes=max_minutes, grad_accum=grad_accum, seed=seed,
            device=device, eval_every=eval_every, patience=patience, resume=resume)
        result = train_from_datasets(config, out, train=train_specs or [], train_lists=train_lists or [], dev=dev,
                                     teacher=teacher if config.teacher_loss else None, calibrate=calibrate)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps({"out": out, "best_dev_ndcg@10": result.best_metric, "best_step": result.best_step,
                           "steps": result.steps, "pairs": result.pairs_seen, "seconds": round(result.wall_seconds, 1)}))
