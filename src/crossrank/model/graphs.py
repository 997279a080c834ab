"""The torch modules crossrank runs and exports: a relevance-logit graph (a transformers sequence classifier,
or crossrank's gated cross-encoder) and a mean-pooled embedding graph.

Both take (input_ids, attention_mask[, token_type_ids]) and return one float tensor, so the torch and ONNX
backends are interchangeable behind the same three inputs.
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from torch import nn

from crossrank.model.checkpoint import Checkpoint
from crossrank.model.gated import GatedCrossEncoder, is_gated

Head = Literal["classification", "embedding"]


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


def input_names(graph: nn.Module) -> list[str]:
    names = ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if graph.uses_token_types else names


def build_graph(checkpoint: Checkpoint, head: Head) -> nn.Module:
    if head == "classification" and is_gated(checkpoint.config):
        return GatedCrossEncoder.from_checkpoint(checkpoint.path)
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
