"""Training: losses against hand-computed values, list building and mining, the trainer on a tiny model,
and checkpoints that the engine reads back with the trainer's scores."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crossrank.retrieve.bm25 import CorpusBM25
from crossrank.train import losses
from crossrank.train.data import RankingList, load_lists, mine_negatives, pseudo_query, save_lists
from crossrank.train.trainer import DevSet, TrainConfig, Trainer, ndcg_at_10

T = torch.tensor


def test_listwise_ce_matches_hand_value() -> None:
    logits, labels, mask = T([[2.0, 0.0, 5.0]]), T([[1.0, 0.0, 0.0]]), T([[True, True, False]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))  # the masked third entry takes no probability
    assert losses.listwise_ce(logits, labels, mask).item() == pytest.approx(expected, rel=1e-5)


def test_listwise_ce_uses_graded_gains() -> None:
    logits, labels, mask = T([[0.0, 0.0]]), T([[2.0, 1.0]]), T([[True, True]])
    # targets ∝ 2^l − 1 = (3, 1)/4; student uniform
    assert losses.listwise_ce(logits, labels, mask).item() == pytest.approx(math.log(2), rel=1e-5)


def test_kl_distillation_matches_hand_value() -> None:
    teacher, student, mask = T([[1.0, 0.0]]), T([[0.0, 0.0]]), T([[True, True]])
    p = math.exp(1) / (math.exp(1) + 1)
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert losses.kl_distillation(student, teacher, mask).item() == pytest.approx(expected, rel=1e-5)
    assert losses.kl_distillation(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        losses.kl_distillation(student, teacher, mask, temperature=0)


def test_ranknet_and_hinge_match_hand_values() -> None:
    logits, labels, mask = T([[1.0, 0.0]]), T([[0.0, 1.0]]), T([[True, True]])
    # the only ordered pair is (1 over 0): log(1 + exp(s0 − s1))
    assert losses.ranknet(logits, labels, mask).item() == pytest.approx(math.log(1 + math.e), rel=1e-5)
    assert losses.margin_hinge(T([[0.3, 0.0]]), T([[1.0, 0.0]]), mask).item() == pytest.approx(0.7, rel=1e-5)
    weighted = losses.ranknet(logits, labels, mask, ndcg_weighted=True)
    assert weighted.item() == pytest.approx(math.log(1 + math.e), rel=1e-5)  # one pair: its weight cancels


def test_margin_mse_and_bce_match_hand_values() -> None:
    mask = T([[True, True, True]])
    # teacher top is entry 0: student margins (1, 1) vs teacher margins (2, 1) → ((1−2)² + 0²) / 2
    assert losses.margin_mse(T([[1.0, 0.0, 0.0]]), T([[2.0, 0.0, 1.0]]), mask).item() == pytest.approx(0.5)
    bce = losses.pointwise_bce(T([[0.0]]), T([[2.0]]), T([[True]]), max_label=4.0)
    assert bce.item() == pytest.approx(math.log(2), rel=1e-5)  # target 0.5, p 0.5


def test_losses_without_signal_are_zero_with_gradient() -> None:
    logits = torch.zeros(1, 3, requires_grad=True)
    value = losses.listwise_ce(logits, torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and logits.grad is not None


CORPUS = {
    "d1": "the apple orchard grows red apples in autumn",
    "d2": "apple pie recipe with cinnamon and butter",
    "d3": "river boats carry cargo down the wide river",
    "d4": "the river delta floods every spring",
    "d5": "mountain climbing needs ropes and a helmet",
    "d6": "apple juice and apple cider from the orchard",
}


def test_mined_negatives_never_contain_judged_documents() -> None:
    index = CorpusBM25(list(CORPUS.values()), list(CORPUS))
    qrels = {"q1": {"d1": 1, "d6": 0}, "q2": {"d3": 2}}
    lists = mine_negatives({"q1": "apple orchard", "q2": "river", "q3": "no judgments"}, index, qrels,
                           rank_range=(0, 6), per_query=5)
    assert [item.query_id for item in lists] == ["q1", "q2"]
    for item in lists:
        judged = qrels[item.query_id]
        positives = [doc for doc in item.document_ids if judged.get(doc, 0) > 0]
        negatives = [doc for doc, label in zip(item.document_ids, item.labels, strict=True) if label == 0]
        assert positives and not set(negatives) & set(judged)
        assert len(set(item.document_ids)) == len(item.document_ids)
    with pytest.raises(ValueError, match="rank_range"):
        mine_negatives({"q1": "apple"}, index, qrels, rank_range=(3, 3))


def test_margin_filter_drops_negatives_close_to_the_positive() -> None:
    index = CorpusBM25(list(CORPUS.values()), list(CORPUS))
    scorer = lambda query, texts: np.array([1.0 if "apple" in t else 0.0 for t in texts])  # noqa: E731
    [item] = mine_negatives({"q1": "apple river"}, index, {"q1": {"d1": 1}}, rank_range=(0, 6), per_query=5,
                            scorer=scorer, margin=0.5)
    assert not any("apple" in text for text in item.documents[1:])


def test_lists_round_trip_and_reject_bad_shapes(tmp_path) -> None:
    lists = [RankingList("apple", ["a", "b"], labels=[1, 0], teacher=[0.5, 0.1], source="s", query_id="q",
                         document_ids=["x", "y"]), RankingList("river", ["b", "c"], first_stage=[2.0, 1.0])]
    loaded = load_lists(save_lists(lists, tmp_path / "lists.jsonl.gz"))
    assert [(i.query, i.documents, i.document_ids) for i in loaded] == [(i.query, i.documents, i.document_ids)
                                                                         for i in lists]
    np.testing.assert_allclose(loaded[0].teacher, [0.5, 0.1])
    assert loaded[1].labels is None
    with pytest.raises(ValueError, match="shape"):
        RankingList("q", ["a", "b"], labels=[1])
    with pytest.raises(ValueError, match="empty query"):
        RankingList("  ", ["a"])
    with pytest.raises(FileNotFoundError):
        load_lists(tmp_path / "missing.jsonl.gz")


def test_pseudo_query_is_a_span_or_sentence_of_the_passage() -> None:
    rng = random.Random(1)
    text = "Rivers carry water. Boats sail on wide rivers today. Mountains rise high above."
    for _ in range(20):
        query = pseudo_query(text, rng)
        assert query is not None and (query in text or query in text.lower().replace(".", ""))
    assert pseudo_query("too short", rng) is None


def test_ndcg_fallback_matches_hand_value_and_ir_measures(monkeypatch) -> None:
    import sys

    from crossrank.evaluate.metrics import evaluate_run

    qrels = {"q": {"a": 2, "b": 1}}
    run = {"q": {"b": 2.0, "a": 1.0}}
    graded = {"q": {"a": 2, "b": 1, "c": 3}, "r": {"x": 1}, "s": {"z": 1}}
    tied = {"q": {"b": 2.0, "a": 1.0, "d": 1.0, "c": 0.5}, "r": {"x": 1.0, "y": 1.0}}  # ties, s unanswered
    expected = evaluate_run(graded, tied, ["nDCG@10"])["nDCG@10"]
    monkeypatch.setitem(sys.modules, "crossrank.evaluate.metrics", None)  # as on a box without ir-measures
    with pytest.raises(ImportError):
        from crossrank.evaluate.metrics import evaluate_run  # the fallback is what runs below
    assert ndcg_at_10(qrels, run) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)), rel=1e-6)
    assert ndcg_at_10(graded, tied) == pytest.approx(expected, rel=1e-6)


WORDS = ["apple", "river", "mountain", "guitar", "planet", "garden", "winter", "castle", "violin", "ocean",
         "desert", "forest", "bridge", "rocket", "pepper", "island"]


def synthetic_lists(seed: int, queries: list[str], size: int = 6) -> list[RankingList]:
    """Query = a word; the relevant document contains it, the others are made of other words."""
    rng = random.Random(seed)
    lists = []
    for q, word in enumerate(queries):
        others = [w for w in WORDS if w != word]
        docs = [" ".join(rng.sample(others, 3) + [word])] + [" ".join(rng.sample(others, 4)) for _ in range(size - 1)]
        lists.append(RankingList(word, docs, labels=[1] + [0] * (size - 1), query_id=f"q{seed}-{q}",
                                 document_ids=[f"d{seed}-{q}-{i}" for i in range(size)]))
    return lists


def dev_set(seed: int = 99) -> DevSet:
    lists = synthetic_lists(seed, WORDS)
    qrels = {item.query_id: {item.document_ids[0]: 1} for item in lists}
    return DevSet("synthetic", lists, qrels)


@pytest.mark.slow
def test_tiny_model_learns_and_its_checkpoint_round_trips(tiny_model_dir, tmp_path) -> None:
    from crossrank.model.cross_encoder import CrossEncoder

    train = [item for seed in range(8) for item in synthetic_lists(seed, WORDS)]
    config = TrainConfig(base=str(tiny_model_dir), max_length=128, group_size=6, lists_per_step=16, lr=3e-3,
                         head_lr=3e-3, steps=150, eval_every=75, teacher_loss=None, bf16=False, device="cpu",
                         warmup=0.1)
    trainer = Trainer(config, train, tmp_path / "model", dev=dev_set(), log=lambda _: None)
    result = trainer.train()
    start, best = result.history[0]["dev_ndcg@10"], result.best_metric
    assert best is not None and best > start + 0.08, result.history
    assert (tmp_path / "model" / "training.json").is_file()

    # the saved (fp16) checkpoint scores in the engine exactly as the trainer scores the same weights
    saved = CrossEncoder.from_pretrained(tmp_path / "model", backend="torch")
    reloaded = Trainer(TrainConfig(base=str(tmp_path / "model"), max_length=128, teacher_loss=None, bf16=False,
                                   device="cpu"), train, tmp_path / "unused", log=lambda _: None)
    lists = dev_set().lists[:4]
    engine = saved.predict([(item.query, doc) for item in lists for doc in item.documents])
    np.testing.assert_allclose(engine, np.concatenate(reloaded.score_lists(lists)), atol=1e-5)
    assert saved.max_length == 128


def test_resume_continues_exactly_where_the_interrupted_run_stopped(tiny_model_dir, tmp_path) -> None:
    """A run killed after its step-2 state was saved, then resumed, ends with the weights of a run never stopped:
    weights, optimizer moments, the stream of training lists and the dropout RNG all come back."""
    train = synthetic_lists(0, WORDS)

    def config(**extra) -> TrainConfig:
        return TrainConfig(base=str(tiny_model_dir), max_length=128, group_size=4, lists_per_step=4, steps=5,
                           eval_every=2, teacher_loss=None, bf16=False, device="cpu", seed=3, **extra)

    straight = Trainer(config(), train, tmp_path / "straight", log=lambda _: None)
    straight.train()
    interrupted = Trainer(config(), train, tmp_path / "resumed", log=lambda _: None)
    loss, calls = interrupted._loss, []

    def crash_at_step_three(batch):  # the process dies mid-run
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loss(batch)

    interrupted._loss = crash_at_step_three
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    resumed = Trainer(config(resume=True), train, tmp_path / "resumed", log=lambda _: None)
    result = resumed.train()
    assert result.steps == 5 and result.pairs_seen == straight.pairs_seen
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    for mine, theirs in zip(resumed.optimizer.state_dict()["state"].values(),
                            straight.optimizer.state_dict()["state"].values(), strict=True):
        assert torch.equal(mine["exp_avg_sq"], theirs["exp_avg_sq"])


def test_config_and_trainer_reject_bad_input(tiny_model_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="label_loss"):
        TrainConfig(label_loss="nope")
    with pytest.raises(ValueError, match="at least one"):
        TrainConfig(label_loss=None, teacher_loss=None)
    with pytest.raises(ValueError, match="group_size"):
        TrainConfig(group_size=1)
    with pytest.raises(ValueError, match="no training lists"):
        Trainer(TrainConfig(base=str(tiny_model_dir)), [], tmp_path)
    unlabelled = [RankingList("q", ["a", "b"])]
    with pytest.raises(ValueError, match="carries labels or teacher"):
        Trainer(TrainConfig(base=str(tiny_model_dir), teacher_loss=None), unlabelled, tmp_path)


def test_cli_train_needs_data(tmp_path) -> None:
    from crossrank.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), "--base", "minilm"])
    assert result.exit_code == 2
    assert "no training data" in result.output
    classifier = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), "--architecture", "classifier",
                                          "--freeze-gates", "--train", "scifact:train"])
    assert classifier.exit_code == 2 and "freeze_gates needs a gated student" in classifier.output
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_bundled_default_model_loads_from_fp16_and_exports() -> None:
    """The shipped fp16 checkpoint: found with no path, same scores through torch, the ONNX export and the default, a
    relevant passage outranks unrelated ones, and its calibration file is applied."""
    from crossrank.model.calibration import Calibrator
    from crossrank.model.checkpoint import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME
    from crossrank.model.cross_encoder import CrossEncoder

    pairs = [("how do glaciers form", "Glaciers form where snow accumulates and compresses into ice."),
             ("how do glaciers form", "The stock market fell sharply on Monday."),
             ("how do glaciers form", "A recipe for chocolate cake with butter.")]
    torch_model = CrossEncoder.from_pretrained(backend="torch")
    onnx_model = CrossEncoder.from_pretrained(backend="onnx")
    assert torch_model.name == DEFAULT_MODEL_NAME and torch_model.max_length == 256
    torch_scores, onnx_scores = torch_model.predict(pairs), onnx_model.predict(pairs)
    np.testing.assert_allclose(torch_scores, onnx_scores, atol=1e-3)
    # The default backend (bf16 on a CPU with AMX, else ONNX fp32) rounds the matrix products' inputs at most.
    np.testing.assert_allclose(CrossEncoder.from_pretrained().predict(pairs), onnx_scores, atol=0.05)
    assert torch_scores[0] > max(torch_scores[1:])
    calibrator = Calibrator.load(BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME)
    np.testing.assert_allclose(torch_model.probabilities(torch_scores), calibrator(torch_scores), rtol=1e-6)


def write_beir(folder, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, dict[str, int]]]):
    import json

    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                                 for k, v in corpus.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()))
    for split, judged in qrels.items():
        rows = [f"{q}\t{d}\t{r}" for q, docs in judged.items() for d, r in docs.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


def test_cli_trains_from_a_beir_folder_and_writes_card_and_calibration(tiny_model_dir, tmp_path) -> None:
    import json

    from crossrank.cli import app

    data = write_beir(tmp_path / "toy", CORPUS, {"q1": "apple orchard", "q2": "river boats", "q3": "apple pie",
                                                 "q4": "river delta"},
                      {"train": {"q1": {"d1": 1}, "q2": {"d3": 1}}, "test": {"q3": {"d2": 1}, "q4": {"d4": 1}}})
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "--base", str(tiny_model_dir), "--train", f"{data}:train",
                                      "--dev", f"{data}:test", "--steps", "4", "--eval-every", "2", "--max-length",
                                      "128", "--group-size", "4", "--lists-per-step", "2", "--device", "cpu",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index('{"out"'):].splitlines()[0])
    assert summary["steps"] == 4 and summary["best_dev_ndcg@10"] is not None
    assert {"config.json", "model.safetensors", "calibration.json", "README.md", "training.json"} <= {
        p.name for p in out.iterdir()}
    assert "research only" in (out / "README.md").read_text()


def test_bi_encoder_teacher_is_the_engine_bi_encoder_on_a_device(tiny_model_dir) -> None:
    from crossrank.model.embedding import BiEncoder
    from crossrank.train.teacher import BiEncoderTeacher

    engine = BiEncoder.from_pretrained(tiny_model_dir, backend="torch")
    documents = ["apple pie with cinnamon", "the river delta floods"]
    expected = engine.encode(documents) @ engine.encode(["apple"])[0]
    scores = BiEncoderTeacher(tiny_model_dir, device="cpu").score_lists([RankingList("apple", documents)])[0]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs backend='torch'"):
        BiEncoder.from_pretrained(tiny_model_dir, backend="onnx", device="cuda")  # ONNX Runtime here is CPU-only


@pytest.mark.timeout(120)
def test_a_failing_batch_stops_training_with_its_error(tiny_model_dir, tmp_path) -> None:
    config = TrainConfig(base=str(tiny_model_dir), max_length=128, group_size=4, lists_per_step=4, steps=4,
                         teacher_loss=None, bf16=False, device="cpu")
    trainer = Trainer(config, synthetic_lists(0, WORDS), tmp_path / "m", log=lambda _: None)

    def broken(queries, documents):
        raise RuntimeError("tokenizer exploded")

    trainer.pair_encoder.encode = broken  # batches are built in the prefetch thread
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        trainer.train()


def test_distilbert_pre_classifier_trains_at_the_head_rate(tmp_path) -> None:
    from conftest import copy_tokenizer
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    base = tmp_path / "tiny-distilbert"
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=1)
    DistilBertForSequenceClassification(config).save_pretrained(base)
    copy_tokenizer(base)
    trainer = Trainer(TrainConfig(base=str(base), architecture="classifier", lr=1e-5, head_lr=1e-3, teacher_loss=None,
                                  bf16=False, device="cpu"), synthetic_lists(0, WORDS), tmp_path / "m", log=lambda _: None)
    rate = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    modules = dict(trainer.model.model.named_children())
    for name in ("pre_classifier", "classifier"):  # both start untrained: the head rate
        assert {rate[id(p)] for p in modules[name].parameters()} == {1e-3}, name
    assert {rate[id(p)] for p in modules["distilbert"].parameters()} == {1e-5}


@pytest.mark.slow
def test_distillation_alone_teaches_the_teachers_ranking(tiny_model_dir, tmp_path) -> None:
    """No labels at all: the KL loss toward a teacher that prefers the document holding the query word is the
    only signal, and dev nDCG (judged by labels the trainer never sees) must rise."""
    train = []
    for seed in range(8):
        for item in synthetic_lists(seed, WORDS):
            train.append(RankingList(item.query, item.documents, teacher=[4.0] + [0.0] * (len(item.documents) - 1),
                                     query_id=item.query_id, document_ids=item.document_ids))
    config = TrainConfig(base=str(tiny_model_dir), max_length=128, group_size=6, lists_per_step=16, lr=3e-3,
                         head_lr=3e-3, steps=80, eval_every=80, label_loss=None, teacher_loss="kl", temperature=1.0,
                         bf16=False, device="cpu", warmup=0.1)
    result = Trainer(config, train, tmp_path / "m", dev=dev_set(), log=lambda _: None).train()
    assert result.best_metric is not None and result.best_metric > result.history[0]["dev_ndcg@10"] + 0.08


def _frozen(tiny_model_dir, **extra) -> TrainConfig:
    """A config whose steps change nothing (learning rates 0): every dev evaluation scores the same."""
    return TrainConfig(base=str(tiny_model_dir), max_length=128, group_size=4, lists_per_step=4, lr=0.0, head_lr=0.0,
                       teacher_loss=None, bf16=False, device="cpu", **extra)


def test_early_stopping_after_patience_evaluations_without_gain(tiny_model_dir, tmp_path) -> None:
    messages: list[str] = []
    trainer = Trainer(_frozen(tiny_model_dir, steps=20, eval_every=2, patience=2), synthetic_lists(0, WORDS),
                      tmp_path / "m", dev=dev_set(), log=messages.append)
    result = trainer.train()
    assert result.steps == 4 and [h["step"] for h in result.history] == [0, 2, 4]  # two flat evaluations, then stop
    assert any("early stop" in message for message in messages)


def test_time_budget_stops_training_and_drives_the_learning_rate(tiny_model_dir, tmp_path) -> None:
    messages: list[str] = []
    trainer = Trainer(_frozen(tiny_model_dir, steps=50, max_minutes=1e-9), synthetic_lists(0, WORDS), tmp_path / "m",
                      log=messages.append)
    assert trainer.train().steps == 0 and any("time budget" in message for message in messages)
    # Half the budget spent at step 0 of 50: the linear decay is as far along as the clock, not the step count.
    budgeted = Trainer(_frozen(tiny_model_dir, steps=50, max_minutes=10, warmup=0.05), synthetic_lists(0, WORDS),
                       tmp_path / "b", log=lambda _: None)
    assert budgeted._learning_rate_factor(elapsed=300.0) == pytest.approx(0.5 / 0.95)
    assert budgeted._learning_rate_factor(elapsed=0.0) == pytest.approx(1e-3)  # warm-up starts near zero


def test_grad_accum_sums_several_batches_into_one_step(tiny_model_dir, tmp_path) -> None:
    trainer = Trainer(_frozen(tiny_model_dir, steps=2, grad_accum=3), synthetic_lists(0, WORDS), tmp_path / "m",
                      log=lambda _: None)
    loss, batches = trainer._loss, []

    def counting(batch):
        batches.append(int(batch["mask"].sum()))
        return loss(batch)

    trainer._loss = counting
    result = trainer.train()
    assert result.steps == 2 and len(batches) == 6 and result.pairs_seen == sum(batches) == 6 * 4 * 4
