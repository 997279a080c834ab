"""The gated cross-encoder: step-0 equality with the bi-encoder on real weights, the gates' effect, the
checkpoint round trip, torch/ONNX/int8 parity, and training it through the trainer's distillation branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_bi_encoder

from crossrank.model.checkpoint import Checkpoint
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.gated import GatedCrossEncoder, is_gated
from crossrank.model.tokenization import load_tokenizer

QUERIES = ["what is the capital of france", "how do vaccines work", "what is the capital of france"]
DOCUMENTS = ["Paris is the capital and largest city of France.",
             "Vaccines train the immune system to recognise a pathogen before an infection.",
             "The mitochondrion is the powerhouse of the cell."]


def _scores(model: GatedCrossEncoder, model_dir, queries, documents) -> np.ndarray:  # noqa: ANN001
    from crossrank.model.batching import pad_batch
    from crossrank.model.tokenization import PairEncoder

    tokenizer, pad = load_tokenizer(model_dir)
    rows, _ = PairEncoder(tokenizer, 128).encode(queries, documents)
    batch = pad_batch(rows, pad)
    with torch.inference_mode():
        return model(**{name: torch.from_numpy(value) for name, value in batch.items()})[:, 0].numpy()


@pytest.mark.slow
def test_step_zero_scores_are_the_bi_encoders_cosine(minilm_dir, tmp_path) -> None:  # noqa: ANN001
    from crossrank.model.embedding import BiEncoder

    model = GatedCrossEncoder.from_bi_encoder(minilm_dir)
    from crossrank.model.gated import write_pair_tokenizer

    write_pair_tokenizer(minilm_dir, tmp_path, 256)
    scores = _scores(model, tmp_path, QUERIES, DOCUMENTS) / model.log_scale.exp().item()
    encoder = BiEncoder.from_pretrained(minilm_dir, backend="torch")
    cosine = np.einsum("ij,ij->i", encoder.encode(QUERIES), encoder.encode(DOCUMENTS))
    np.testing.assert_allclose(scores, cosine, atol=1e-4)
    assert scores[0] > scores[2]  # and it ranks as the bi-encoder does: Paris over mitochondria


def test_closed_gates_score_as_the_bi_encoder_and_open_gates_do_not(tiny_gated_dir) -> None:  # noqa: ANN001
    from crossrank.model.embedding import BiEncoder

    model = GatedCrossEncoder.from_checkpoint(tiny_gated_dir)
    opened = _scores(model, tiny_gated_dir, QUERIES, DOCUMENTS)
    with torch.no_grad():
        model.cross_gates.zero_()
        model.cls_head.weight.zero_()
    closed = _scores(model, tiny_gated_dir, QUERIES, DOCUMENTS) / model.log_scale.exp().item()
    encoder = BiEncoder.from_pretrained(tiny_gated_dir.parent / "bi", backend="torch")
    cosine = np.einsum("ij,ij->i", encoder.encode(QUERIES), encoder.encode(DOCUMENTS))
    np.testing.assert_allclose(closed, cosine, atol=1e-3)  # the saved checkpoint is fp16
    assert not np.allclose(opened / model.log_scale.exp().item(), cosine, atol=1e-2)


def test_checkpoint_round_trip_and_engine_loading(tiny_gated_dir) -> None:  # noqa: ANN001
    checkpoint = Checkpoint.open(tiny_gated_dir)
    assert is_gated(checkpoint.config) and checkpoint.num_labels == 1
    tokenizer, _ = load_tokenizer(tiny_gated_dir)
    encoding = tokenizer.encode("a question", "a passage")
    assert encoding.tokens.count("[CLS]") == 2 and encoding.type_ids[-1] == 1
    engine = CrossEncoder.from_pretrained(tiny_gated_dir, backend="torch")
    direct = _scores(GatedCrossEncoder.from_checkpoint(tiny_gated_dir), tiny_gated_dir, QUERIES, DOCUMENTS)
    np.testing.assert_allclose(engine.predict(list(zip(QUERIES, DOCUMENTS, strict=True))), direct, atol=1e-5)


def test_onnx_and_int8_match_torch(tiny_gated_dir) -> None:  # noqa: ANN001
    pairs = list(zip(QUERIES, DOCUMENTS, strict=True)) + [("river", "boats carry cargo down the wide river " * 30)]
    reference = CrossEncoder.from_pretrained(tiny_gated_dir, backend="torch").predict(pairs)
    onnx = CrossEncoder.from_pretrained(tiny_gated_dir, backend="onnx").predict(pairs)
    np.testing.assert_allclose(onnx, reference, atol=1e-4)
    int8 = CrossEncoder.from_pretrained(tiny_gated_dir, backend="onnx", quantize="int8").predict(pairs)
    np.testing.assert_allclose(int8, reference, atol=0.1 * max(1.0, float(np.abs(reference).max())))


TRAIN_DOCUMENTS = ["apple orchard apples", "river boats", "mountain ropes", "apple pie", "river delta floods"]
TEACHER = np.array([3.0, -1.0, -2.0, 1.0, 0.0], dtype=np.float32)


def _distil(tmp_path, **overrides):  # noqa: ANN001, ANN003, ANN202 - (trainer, scores before, scores after)
    from crossrank.train.data import RankingList
    from crossrank.train.trainer import TrainConfig, Trainer

    source = tiny_bi_encoder(tmp_path / "bi")
    lists = [RankingList(query="apple", documents=TRAIN_DOCUMENTS, teacher=TEACHER, query_id="q",
                         document_ids=list("abcde"))]
    settings = dict(base=str(source), architecture="gated", label_loss=None, teacher_loss="kl", temperature=1.0,
                    first_stage_weight=0.0, group_size=5, lists_per_step=2, steps=30, lr=1e-3, head_lr=1e-2,
                    warmup=0.0, eval_every=30, device="cpu", bf16=False, max_length=128)
    trainer = Trainer(TrainConfig(**settings | overrides), lists, tmp_path / "out", log=lambda _: None)
    before = trainer.score_lists(lists)[0]
    trainer.train()
    return trainer, before, trainer.score_lists(lists)[0]


def _agreement(scores: np.ndarray) -> float:
    return float(np.corrcoef(scores, TEACHER)[0, 1])


@pytest.mark.slow
def test_trainer_distils_a_teacher_into_the_gated_student(tmp_path) -> None:  # noqa: ANN001
    trainer, before, after = _distil(tmp_path)
    assert _agreement(after) > _agreement(before)
    assert trainer.model.cross_gates.abs().sum().item() > 0  # the gates learned to open
    engine = CrossEncoder.from_pretrained(tmp_path / "out", backend="torch")
    assert is_gated(engine.checkpoint.config) and engine.factorised is None  # open gates: the joint graph
    np.testing.assert_allclose(engine.predict([("apple", d) for d in TRAIN_DOCUMENTS]), after, atol=0.05)


@pytest.mark.slow
def test_frozen_gates_stay_closed_so_the_trained_model_is_still_factorised(tmp_path) -> None:  # noqa: ANN001
    from crossrank.train.trainer import TrainConfig

    trainer, before, after = _distil(tmp_path, freeze_gates=True)
    assert _agreement(after) > _agreement(before)  # the body and head still learn
    assert trainer.model.cross_gates.abs().sum().item() == 0
    engine = CrossEncoder.from_pretrained(tmp_path / "out", backend="torch")
    assert engine.factorised is not None
    np.testing.assert_allclose(engine.predict([("apple", d) for d in TRAIN_DOCUMENTS]), after, atol=0.05)
    with pytest.raises(ValueError, match="freeze_gates needs a gated student"):
        TrainConfig(base=str(tmp_path / "bi"), architecture="classifier", freeze_gates=True)


def test_frozen_closed_gates_train_one_segment_at_a_time_with_the_joint_graphs_loss_and_gradients(
        tmp_path) -> None:  # noqa: ANN001
    import random

    from crossrank.train.data import RankingList
    from crossrank.train.trainer import TrainConfig, Trainer

    source = tiny_bi_encoder(tmp_path / "bi")
    lists = [RankingList(query="apple", documents=TRAIN_DOCUMENTS, teacher=TEACHER, query_id="q",
                         document_ids=list("abcde"), labels=[1, 0, 0, 0, 0])]
    settings = dict(base=str(source), architecture="gated", label_loss="listwise", teacher_loss="kl",
                    temperature=1.0, first_stage_weight=0.0, group_size=5, lists_per_step=3, device="cpu",
                    bf16=False, max_length=128)
    joint = Trainer(TrainConfig(**settings), lists, tmp_path / "joint", log=lambda _: None)
    factorised = Trainer(TrainConfig(**settings, freeze_gates=True), lists, tmp_path / "factorised",
                         log=lambda _: None)
    assert joint.segments is None and factorised.segments is not None
    batches = [next(trainer._batches(random.Random(0))) for trainer in (joint, factorised)]

    def tokens(batch: dict) -> int:
        return sum(arrays["attention_mask"].sum() for _, arrays in batch["micro_batches"])

    # the query is read once for the step, each distinct document once: far fewer tokens than 15 joint pairs
    assert tokens(batches[1]) < 0.5 * tokens(batches[0])
    losses = []
    for trainer, batch in zip((joint, factorised), batches, strict=True):
        trainer.model.eval()  # no dropout: the two passes must agree exactly
        losses.append(trainer._loss(batch))
        losses[-1].backward()
    assert losses[1].item() == pytest.approx(losses[0].item(), abs=1e-5)
    for (name, ours), (_, theirs) in zip(factorised.model.named_parameters(), joint.model.named_parameters(),
                                         strict=True):
        if name != "cross_gates":  # frozen in the factorised run, learnable in the joint one
            np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(factorised.score_lists(lists)[0], joint.score_lists(lists)[0], atol=1e-5)
    # gates that are not all closed train jointly even when frozen: factorising would change the scores
    with torch.no_grad():
        joint.model.cross_gates[0, 0] = 0.5
    joint.model.save(tmp_path / "open", source, max_length=128)
    reopened = Trainer(TrainConfig(**settings | {"base": str(tmp_path / "open"), "freeze_gates": True}), lists,
                       tmp_path / "reopened", log=lambda _: None)
    assert reopened.segments is None


def test_weight_space_blend_runs_from_the_start_to_the_tuned_model(tiny_gated_dir) -> None:  # noqa: ANN001
    start = GatedCrossEncoder.from_bi_encoder(tiny_gated_dir.parent / "bi")
    tuned = GatedCrossEncoder.from_checkpoint(tiny_gated_dir)
    ends = {alpha: GatedCrossEncoder.weight_space_blend(start, tuned, alpha) for alpha in (0.0, 0.5, 1.0)}
    for alpha, model in ((0.0, start), (1.0, tuned)):
        np.testing.assert_allclose(_scores(ends[alpha], tiny_gated_dir, QUERIES, DOCUMENTS),
                                   _scores(model, tiny_gated_dir, QUERIES, DOCUMENTS), atol=1e-6)
    middle = ends[0.5].state_dict()
    for name, value in tuned.state_dict().items():
        torch.testing.assert_close(middle[name], (start.state_dict()[name] + value) / 2)
    assert 0 < middle["cross_gates"].min() and middle["cross_gates"].max() < tuned.cross_gates.max()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        GatedCrossEncoder.weight_space_blend(start, tuned, 1.5)
    wider = GatedCrossEncoder.from_checkpoint(tiny_gated_dir)
    wider.cross_gates = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="names or shapes"):
        GatedCrossEncoder.weight_space_blend(start, wider, 0.5)
