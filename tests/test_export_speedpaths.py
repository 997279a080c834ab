"""The export recipe's speed paths: attention really fuses, int8 quantises what it should, parity holds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from crossrank.model.checkpoint import Checkpoint
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.export import EXPORT_VERSION, export_dir, onnx_model_path

PAIRS = [("what do immune cells do", "T cells and B cells defend the body against infection."),
         ("what do immune cells do", "The stock market closed higher on Tuesday."),
         ("capital of france", "Paris is the capital and largest city of France, on the Seine.")]


def op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_fp32_graph_is_fused_into_ort_transformer_kernels(tiny_model_dir):
    checkpoint = Checkpoint.open(tiny_model_dir)
    ops = op_counts(onnx_model_path(checkpoint, "classification"))
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    # One Attention kernel per layer (not ~20 Softmax/Where/MatMul ops), LayerNorms folded into the residuals.
    assert ops["Attention"] == layers and ops["Softmax"] == 0
    assert ops["SkipLayerNormalization"] == 2 * layers and ops["EmbedLayerNormalization"] == 1
    manifest = json.loads((export_dir(checkpoint, "classification") / "manifest.json").read_text())
    assert manifest["export_version"] == EXPORT_VERSION and manifest["fused_operators"]["Attention"] == layers


def test_int8_graph_quantises_projections_and_attention_but_not_embeddings(tiny_model_dir):
    ops = op_counts(onnx_model_path(Checkpoint.open(tiny_model_dir), "classification", "int8"))
    assert ops["QAttention"] > 0 and ops["Attention"] == 0 and ops["MatMulInteger"] > 0
    assert ops["EmbedLayerNormalization"] == 1 and ops["QEmbedLayerNormalization"] == 0


def test_fused_graph_matches_torch_with_padding_in_the_batch(tiny_model_dir):
    # Pairs of different lengths share a padded batch: the fused attention must mask the padding exactly.
    pairs = PAIRS + [(query, document * 6) for query, document in PAIRS]
    onnx_logits = CrossEncoder.from_pretrained(tiny_model_dir, backend="onnx").predict(pairs)
    torch_logits = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch").predict(pairs)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)
