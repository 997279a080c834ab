"""Fine-tune a cross-encoder on ranking lists: grouped batches, label and distillation losses, AdamW with warmup
and budget-aware linear decay, bf16 autocast, periodic dev nDCG@10, best-checkpoint selection, early stopping,
resume, and a wall-clock budget. The checkpoint it writes is the layout the engine loads (fp16 safetensors).
"""

from __future__ import annotations

import json
import math
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crossrank.datasets import BeirDataset, Qrels, Run, ranked
from crossrank.model.backends.cpu_features import cpu_has_native_bf16
from crossrank.model.batching import iter_batches
from crossrank.model.checkpoint import Checkpoint, resolve_model_path
from crossrank.model.factorised import distinct_segments, segment_batches
from crossrank.model.gated import GatedCrossEncoder, fp16_state, is_gated, write_pair_tokenizer
from crossrank.model.graphs import ClassificationGraph, SegmentGraph
from crossrank.model.tokenization import EncodedRow, PairEncoder, load_tokenizer
from crossrank.train.data import RankingList, candidate_lists
from crossrank.train.losses import LABEL_LOSSES, TEACHER_LOSSES
from crossrank.train.teacher import fuse

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# Parameters that start at zero, at a fixed constant or fresh (a new classifier head, DistilBERT's pre_classifier
# included) and need a larger step than the pretrained body.
HEAD_PREFIXES = ("model.classifier.", "model.pre_classifier.", "model.bert.pooler.", "model.pooler.", "cls_head.",
                 "log_scale", "cross_gates")
ARCHITECTURES = ("auto", "gated", "classifier")
FREEZE_NEEDS_GATES = "freeze_gates needs a gated student (architecture 'gated')"


@dataclass
class TrainConfig:
    base: str = "minilm"
    architecture: str = "auto"
    gradient_checkpointing: bool = False
    # Keep a gated student's cross-segment gates where they start: closed gates stay exactly 0, so the trained
    # model is still scored factorised (each query and passage window encoded once, passages' vectors storable).
    freeze_gates: bool = False
    max_length: int = 256
    batch_tokens: int = 8192
    group_size: int = 16
    lists_per_step: int = 32
    labelled_fraction: float = 0.25
    label_loss: str | None = "listwise"
    label_weight: float = 1.0
    teacher_loss: str | None = "kl"
    teacher_weight: float = 1.0
    temperature: float = 0.3
    first_stage_weight: float = 0.2
    lr: float = 3e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    steps: int = 1000
    max_minutes: float | None = None
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    eval_every: int = 200
    patience: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.label_loss is not None and self.label_loss not in LABEL_LOSSES:
            raise ValueError(f"label_loss must be one of {sorted(LABEL_LOSSES)} or None, got {self.label_loss!r}")
        if self.teacher_loss is not None and self.teacher_loss not in TEACHER_LOSSES:
            raise ValueError(f"teacher_loss must be one of {sorted(TEACHER_LOSSES)} or None, got {self.teacher_loss!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.freeze_gates and self.architecture == "classifier":
            raise ValueError(FREEZE_NEEDS_GATES)
        if self.label_loss is None and self.teacher_loss is None:
            raise ValueError("at least one of label_loss and teacher_loss is needed")
        for name in ("group_size", "lists_per_step", "steps", "grad_accum", "eval_every", "max_length", "batch_tokens"):
            if getattr(self, name) < 1 or (name == "group_size" and self.group_size < 2):
                raise ValueError(f"{name} must be positive (group_size at least 2), got {getattr(self, name)}")
        if not 0 <= self.labelled_fraction <= 1 or not 0 <= self.warmup < 1:
            raise ValueError("labelled_fraction must be in [0, 1] and warmup in [0, 1)")


@dataclass
class DevSet:
    """Candidates to rerank and the qrels to score them with (ideal DCG from all judgments)."""

    name: str
    lists: list[RankingList]
    qrels: Qrels

    @classmethod
    def from_dataset(cls, dataset: BeirDataset, depth: int = 100) -> DevSet:
        return cls(f"{dataset.name}:{dataset.split}", candidate_lists(dataset, depth), dataset.qrels)


def ndcg_at_10(qrels: Qrels, run: Run) -> float:
    """nDCG@10 through the evaluation module (ir-measures); a small trec_eval-equivalent fallback (linear gains)
    where ir-measures is not installed, e.g. on a bare GPU box."""
    try:
        from crossrank.evaluate.metrics import evaluate_run
    except ImportError:
        values = []
        for qid, judged in qrels.items():
            ranking = ranked(run.get(qid, {}))[:10]
            dcg = sum(max(judged.get(doc, 0), 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking))
            ideal = sorted((max(v, 0) for v in judged.values()), reverse=True)[:10]
            idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
            values.append(dcg / idcg if idcg > 0 else 0.0)
        return float(np.mean(values)) if values else 0.0
    return evaluate_run(qrels, run, ["nDCG@10"])["nDCG@10"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_student(base: str, architecture: str = "auto") -> tuple[Checkpoint, torch.nn.Module]:
    """The student as a module returning [batch, 1] logits.

    "gated": the gated cross-encoder, continued from a gated checkpoint or started from a bi-encoder's weights
    (scoring exactly as the bi-encoder at step 0). "classifier": a one-logit transformers sequence classifier,
    the base as is when it already is one, else its body with a new head. "auto": classifier when the base is a
    sequence classifier, else gated.
    """
    from transformers import AutoModelForSequenceClassification

    checkpoint = Checkpoint.open(resolve_model_path(base))
    if architecture == "auto":
        classifier = any(name.endswith("ForSequenceClassification")
                         for name in checkpoint.config.get("architectures") or [])
        architecture = "classifier" if classifier and not is_gated(checkpoint.config) else "gated"
    if architecture == "gated":
        if is_gated(checkpoint.config):
            return checkpoint, GatedCrossEncoder.from_checkpoint(checkpoint.path)
        return checkpoint, GatedCrossEncoder.from_bi_encoder(checkpoint.path)
    if is_gated(checkpoint.config):
        raise ValueError(f"{checkpoint.path} is a gated cross-encoder; train it with architecture='gated'")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint.path), num_labels=1, dtype=torch.float32, local_files_only=True)
    uses_token_types = int(checkpoint.config.get("type_vocab_size", 0)) > 1
    return checkpoint, ClassificationGraph(model, uses_token_types)


def save_checkpoint(student: torch.nn.Module, base: Path, out: Path, max_length: int) -> Path:
    """The engine's layout: fp16 safetensors + config + tokenizer files, model_max_length = the trained length."""
    if isinstance(student, GatedCrossEncoder):
        return student.save(out, base, max_length)
    model = student.model
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=fp16_state(model), safe_serialization=True)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config.update(dtype="float16", num_labels=1)
    config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (base / name).is_file() and base.resolve() != out.resolve():
            shutil.copy(base / name, out / name)
    tokenizer_config = out / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text(encoding="utf-8")) if tokenizer_config.is_file() else {}
    settings["model_max_length"] = max_length
    tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return out


@dataclass(frozen=True)
class _Raised:
    error: BaseException


def _prefetch(iterator: Iterator, size: int = 4) -> Iterator:
    """Run a batch iterator in a thread (tokenisation releases the GIL) so the device never waits on it. What the
    iterator raises is raised here, in the training loop, which would otherwise wait forever for the next batch."""
    buffer: queue.Queue = queue.Queue(size)
    done = object()

    def fill() -> None:
        try:
            for item in iterator:
                buffer.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            buffer.put(_Raised(exc))
        else:
            buffer.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, _Raised):
            raise item.error
        yield item


@dataclass
class TrainResult:
    best_metric: float | None
    best_step: int
    steps: int
    pairs_seen: int
    wall_seconds: float
    history: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainConfig, train: Sequence[RankingList], out: str | Path,
                 dev: DevSet | None = None, log: Callable[[str], None] = print) -> None:
        if not train:
            raise ValueError("no training lists")
        usable = [item for item in train if self._has_signal(config, item)]
        if not usable:
            raise ValueError("no training list carries labels or teacher scores the configured losses can use")
        self.config, self.out, self.dev, self.log = config, Path(out), dev, log
        self.labelled = [item for item in usable if item.labels is not None and item.labels.max() > 0]
        self.others = [item for item in usable if not (item.labels is not None and item.labels.max() > 0)]
        self.device = resolve_device(config.device)
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.checkpoint, self.model = load_student(config.base, config.architecture)
        self.model.to(self.device)
        if config.freeze_gates and not isinstance(self.model, GatedCrossEncoder):
            raise ValueError(FREEZE_NEEDS_GATES)
        # Frozen closed gates: the student is trained one segment at a time, as the engine scores it
        # (`crossrank.model.factorised`) — the same logits and gradients as the joint pass, on fewer, cheaper tokens.
        self.segments = SegmentGraph(self.model) if (
            config.freeze_gates and not self.model.cross_gates.detach().any()) else None
        if isinstance(self.model, GatedCrossEncoder):
            self.model.cross_gates.requires_grad_(not config.freeze_gates)
            self.model.gradient_checkpointing = config.gradient_checkpointing
            self.out.mkdir(parents=True, exist_ok=True)
            write_pair_tokenizer(self.checkpoint.path, self.out, config.max_length)
            tokenizer, self.pad_id = load_tokenizer(self.out)
        else:
            tokenizer, self.pad_id = load_tokenizer(self.checkpoint.path)
        self.pair_encoder = PairEncoder(tokenizer, config.max_length, long_documents="truncate", window_overlap=0)
        trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        head = [p for n, p in trained if n.startswith(HEAD_PREFIXES)]
        body = [p for n, p in trained if not n.startswith(HEAD_PREFIXES)]
        self.optimizer = torch.optim.AdamW([{"params": body, "lr": config.lr, "base_lr": config.lr},
                                            {"params": head, "lr": config.head_lr, "base_lr": config.head_lr}],
                                           weight_decay=config.weight_decay)
        self.autocast = config.bf16 and (self.device.type == "cuda" or cpu_has_native_bf16())
        self.step, self.pairs_seen, self.history = 0, 0, []
        self.best_metric: float | None = None
        self.best_step = 0
        self.elapsed_before = 0.0

    @staticmethod
    def _has_signal(config: TrainConfig, item: RankingList) -> bool:
        labelled = config.label_loss is not None and item.labels is not None and item.labels.max() > 0
        return labelled or (config.teacher_loss is not None and item.teacher is not None)

    # ----- batches -----
    def _group(self, item: RankingList, rng: random.Random) -> list[int]:
        """One anchor (a judged positive drawn by gain, else the teacher's top) and random others."""
        n, size = len(item.documents), self.config.group_size
        if item.labels is not None and item.labels.max() > 0:
            gains = 2.0 ** item.labels - 1
            anchor = rng.choices(range(n), weights=gains.tolist())[0]
        elif item.teacher is not None:
            anchor = int(np.argmax(item.teacher))
        else:
            anchor = 0
        others = [i for i in range(n) if i != anchor]
        return [anchor, *rng.sample(others, min(size - 1, len(others)))]

    def _batches(self, rng: random.Random, skip: int = 0) -> Iterator[dict]:
        """Batches drawn from `rng`, the first `skip` drawn but not built: a resumed run continues the very stream
        of lists an uninterrupted run would have seen."""
        config = self.config
        n_labelled = round(config.lists_per_step * config.labelled_fraction) if self.labelled and self.others else (
            config.lists_per_step if self.labelled else 0)
        while True:
            chosen = rng.choices(self.labelled, k=n_labelled) if n_labelled else []
            chosen += rng.choices(self.others, k=config.lists_per_step - n_labelled) if self.others else []
            groups = [self._group(item, rng) for item in chosen]
            if skip:
                skip -= 1
                continue
            queries = [item.query for item, group in zip(chosen, groups, strict=True) for _ in group]
            documents = [item.documents[i] for item, group in zip(chosen, groups, strict=True) for i in group]
            rows, _ = self.pair_encoder.encode(queries, documents)
            width = config.group_size
            mask = np.zeros((len(chosen), width), dtype=bool)
            labels = np.zeros((len(chosen), width), dtype=np.float32)
            teacher = np.zeros((len(chosen), width), dtype=np.float32)
            has_labels = np.zeros(len(chosen), dtype=bool)
            has_teacher = np.zeros(len(chosen), dtype=bool)
            for row, (item, group) in enumerate(zip(chosen, groups, strict=True)):
                mask[row, : len(group)] = True
                if item.labels is not None and item.labels.max() > 0:
                    labels[row, : len(group)] = item.labels[group]
                    has_labels[row] = True
                if item.teacher is not None:
                    fused = fuse(item.teacher, item.first_stage, config.first_stage_weight)
                    teacher[row, : len(group)] = fused[group]
                    has_teacher[row] = True
            yield {**self._inputs(rows, config.batch_tokens), "mask": mask, "labels": labels, "teacher": teacher,
                   "has_labels": has_labels, "has_teacher": has_teacher}

    def _inputs(self, rows: Sequence[EncodedRow], batch_tokens: int) -> dict:
        """Length-sorted micro-batches under a token budget (short inputs are not padded to the longest): of the
        joint pair rows, or — factorised — of each distinct query and document segment once, with every pair's
        (query, document) segment positions."""
        if self.segments is None:
            return {"micro_batches": list(iter_batches(rows, batch_tokens, self.pad_id)), "outputs": len(rows),
                    "pairs": None}
        segments, pairs = distinct_segments(rows)
        micro = [(indices, {k: arrays[k] for k in ("input_ids", "attention_mask")})
                 for indices, arrays in segment_batches(segments, batch_tokens, self.pad_id)]
        return {"micro_batches": micro, "outputs": len(segments), "pairs": pairs}

    def _logits(self, inputs: dict) -> torch.Tensor:
        """One logit per pair row of `_inputs`: the joint graph's, or the segment vectors' dot product plus the
        query's [CLS] term (`FactorisedScorer.logits`, differentiable)."""
        device = self.device
        graph = self.model if self.segments is None else self.segments
        outputs = None
        for indices, arrays in inputs["micro_batches"]:
            tensors = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in arrays.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
                out = graph(**tensors).float()
            if outputs is None:
                outputs = torch.zeros((inputs["outputs"], out.shape[1]), device=device)
            outputs = outputs.index_put((torch.from_numpy(indices).to(device),), out)
        if inputs["pairs"] is None:
            return outputs[:, 0]
        pairs = torch.from_numpy(inputs["pairs"]).to(device)
        query, document = outputs[pairs[:, 0]], outputs[pairs[:, 1]]
        return (query[:, :-1] * document[:, :-1]).sum(-1) + query[:, -1]

    def _loss(self, batch: dict) -> torch.Tensor:
        config, device = self.config, self.device
        mask = torch.from_numpy(batch["mask"]).to(device)
        flat = self._logits(batch)
        logits = torch.zeros(mask.shape, device=device, dtype=flat.dtype).masked_scatter(mask, flat)
        loss = logits.sum() * 0.0
        rows = torch.from_numpy(batch["has_labels"]).to(device)
        if config.label_loss is not None and rows.any():
            labels = torch.from_numpy(batch["labels"]).to(device)
            loss = loss + config.label_weight * LABEL_LOSSES[config.label_loss](logits[rows], labels[rows], mask[rows])
        rows = torch.from_numpy(batch["has_teacher"]).to(device)
        if config.teacher_loss is not None and rows.any():
            teacher = torch.from_numpy(batch["teacher"]).to(device)
            extra = {"temperature": config.temperature} if config.teacher_loss == "kl" else {}
            loss = loss + config.teacher_weight * TEACHER_LOSSES[config.teacher_loss](
                logits[rows], teacher[rows], mask[rows], **extra)
        return loss

    # ----- evaluation -----
    @torch.inference_mode()
    def score_lists(self, lists: Sequence[RankingList], batch_tokens: int = 65536) -> list[np.ndarray]:
        self.model.eval()
        queries = [item.query for item in lists for _ in item.documents]
        documents = [doc for item in lists for doc in item.documents]
        rows, _ = self.pair_encoder.encode(queries, documents)
        flat = self._logits(self._inputs(rows, batch_tokens)).cpu().numpy() if rows else np.zeros(0, np.float32)
        self.model.train()
        bounds = np.cumsum([0] + [len(item.documents) for item in lists])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def evaluate(self, dev: DevSet) -> float:
        run = {item.query_id: dict(zip(item.document_ids, scores.tolist(), strict=True))
               for item, scores in zip(dev.lists, self.score_lists(dev.lists), strict=True)}
        return ndcg_at_10(dev.qrels, run)

    # ----- state -----
    def _state_path(self) -> Path:
        return self.out / "trainer_state.pt"

    def _save_state(self, elapsed: float) -> None:
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "pairs_seen": self.pairs_seen, "history": self.history, "best_metric": self.best_metric,
                    "best_step": self.best_step, "elapsed": elapsed, "config": asdict(self.config),
                    "torch_rng": torch.get_rng_state(),  # dropout: a resumed run draws the same masks
                    "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
                   self._state_path())

    def _load_state(self) -> None:
        state = torch.load(self._state_path(), map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.pairs_seen, self.history = state["step"], state["pairs_seen"], state["history"]
        self.best_metric, self.best_step, self.elapsed_before = state["best_metric"], state["best_step"], state["elapsed"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.log(f"resumed at step {self.step} (best {self.best_metric} at {self.best_step})")

    def _learning_rate_factor(self, elapsed: float) -> float:
        """Linear warmup, then linear decay to 0 at whichever ends first: the step count or the time budget."""
        config = self.config
        progress = self.step / config.steps
        if config.max_minutes:
            progress = max(progress, elapsed / (60 * config.max_minutes))
        if progress < config.warmup:
            return max(progress / config.warmup, 1e-3)
        return max(0.0, (1 - progress) / (1 - config.warmup))

    def _checkpoint(self, metric: float | None, elapsed: float) -> None:
        if metric is not None:
            self.history.append({"step": self.step, "pairs": self.pairs_seen, "seconds": round(elapsed, 1),
                                 "dev_ndcg@10": round(metric, 4)})
            self.log(f"step {self.step} pairs {self.pairs_seen} {elapsed:.0f}s dev nDCG@10 {metric:.4f}")
        if metric is None or self.best_metric is None or metric > self.best_metric:
            self.best_metric, self.best_step = metric, self.step
            save_checkpoint(self.model, self.checkpoint.path, self.out, self.config.max_length)
        self._save_state(elapsed)
        self._write_summary(elapsed)

    def _write_summary(self, elapsed: float) -> None:
        summary = {"config": asdict(self.config), "best_step": self.best_step, "best_dev_ndcg@10": self.best_metric,
                   "steps": self.step, "pairs_seen": self.pairs_seen, "wall_seconds": round(elapsed, 1),
                   "device": str(self.device), "dev": self.dev.name if self.dev else None,
                   "train_lists": {"labelled": len(self.labelled), "unlabelled": len(self.others)},
                   "history": self.history}
        (self.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    def train(self) -> TrainResult:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if config.resume and self._state_path().is_file():
            self._load_state()
        start = time.monotonic() - self.elapsed_before
        if self.dev is not None and self.step == 0:
            self._checkpoint(self.evaluate(self.dev), 0.0)
        batches = _prefetch(self._batches(random.Random(config.seed), skip=self.step * config.grad_accum))
        evals_without_gain = 0
        self.model.train()
        progress = tqdm(total=config.steps, initial=self.step, desc="train", mininterval=10)
        while self.step < config.steps:
            elapsed = time.monotonic() - start
            if config.max_minutes and elapsed > 60 * config.max_minutes:
                self.log(f"time budget of {config.max_minutes} min reached at step {self.step}")
                break
            factor = self._learning_rate_factor(elapsed)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            for _ in range(config.grad_accum):
                batch = next(batches)
                loss = self._loss(batch) / config.grad_accum
                loss.backward()
                self.pairs_seen += int(batch["mask"].sum())
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item() * config.grad_accum:.4f}", best=self.best_metric)
            if self.step % config.eval_every == 0 or self.step == config.steps:
                before = self.best_metric
                self._checkpoint(self.evaluate(self.dev) if self.dev else None, time.monotonic() - start)
                evals_without_gain = 0 if self.best_metric != before else evals_without_gain + 1
                if config.patience is not None and evals_without_gain >= config.patience:
                    self.log(f"early stop: no dev gain in {config.patience} evaluations")
                    break
        progress.close()
        elapsed = time.monotonic() - start
        if self.step % config.eval_every != 0 and self.step != config.steps:
            self._checkpoint(self.evaluate(self.dev) if self.dev else None, elapsed)
        self._write_summary(elapsed)
        return TrainResult(self.best_metric, self.best_step, self.step, self.pairs_seen, elapsed, self.history)
