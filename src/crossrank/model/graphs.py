"""The torch modules crossrank runs and exports: a relevance-logit graph (a transformers sequence classifier,
or crossrank's gated cross-encoder), a mean-pooled embedding graph, and the gated cross-encoder's one-segment
graph (`crossrank.model.factorised`).

All take (input_ids, attention_mask[, token_type_ids]) and return one float tensor, so the torch and ONNX
backends are interchangeable behind the same three inputs.
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from torch import nn

from crossrank.model.checkpoint import Checkpoint
from crossrank.model.gated import GatedCrossEncoder, is_gated

Head = Literal["classification", "embedding", "segments"]


class ClassificationGraph(nn.Module):
    """Sequence-classification logits, shape [batch, num_labels]."""

    def __init__(self, model: nn.Module, uses_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.uses_token_types = uses_token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001 - traced by the exporter
        kwargs = {"token_type_ids": token_type_ids} if self.uses_token_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


class EmbeddingGraph(nn.Module):
    """Mean of the last hidden states over real tokens, L2-normalised (sentence-transformers' recipe)."""

    def __init__(self, model: nn.Module, uses_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.uses_token_types = uses_token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001
        kwargs = {"token_type_ids": token_type_ids} if self.uses_token_types else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


class SegmentGraph(nn.Module):
    """One segment of a gated cross-encoder whose gates are closed, on its own: `[CLS] text [SEP]`, positions from
    0, token type 0 — what the joint pass computes for that segment when it cannot see the other. Returns
    [batch, hidden + 1]: the L2-normalised mean-pool times sqrt(scale), so a query row · a document row is the
    joint head's scale · cosine, and the [CLS] term `cls_head(h[CLS])` (only the query's counts: the joint pass
    reads [CLS] at position 0, the query's)."""

    uses_token_types = False  # one segment: every token type is 0

    def __init__(self, gated: GatedCrossEncoder) -> None:
        super().__init__()
        self.model = gated.bert
        self.cls_head = gated.cls_head
        self.log_scale = gated.log_scale

    def forward(self, input_ids, attention_mask) -> torch.Tensor:  # noqa: ANN001 - traced by the exporter
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = nn.functional.normalize((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9), p=2.0, dim=-1)
        return torch.cat([pooled * (0.5 * self.log_scale).exp(), self.cls_head(hidden[:, 0])], dim=-1)


def input_names(graph: nn.Module) -> list[str]:
    names = ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if graph.uses_token_types else names


def build_graph(checkpoint: Checkpoint, head: Head) -> nn.Module:
    if head == "classification" and is_gated(checkpoint.config):
        return GatedCrossEncoder.from_checkpoint(checkpoint.path)
    if head == "segments":
        if not is_gated(checkpoint.config):
            raise ValueError(f"{checkpoint.path}: the segments graph needs a gated cross-encoder")
        return SegmentGraph(GatedCrossEncoder.from_checkpoint(checkpoint.path)).eval()
    model = checkpoint.load_torch(head)
    accepts = "token_type_ids" in inspect.signature(model.forward).parameters
    uses_token_types = accepts and int(checkpoint.config.get("type_vocab_size", 0)) > 1
    graph = ClassificationGraph(model, uses_token_types) if head == "classification" else EmbeddingGraph(
        model, uses_token_types
    )
    return graph.eval()


@torch.inference_mode()
def run_graph(graph: nn.Module, batch: dict, device: torch.device | None = None) -> torch.Tensor:
    tensors = {name: torch.from_numpy(batch[name]).to(device) for name in input_names(graph)}
    return graph(**tensors)
