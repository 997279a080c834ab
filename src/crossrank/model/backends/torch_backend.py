"""The reference backend: the PyTorch module itself, fp32, inference mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crossrank.model.graphs import run_graph


class TorchBackend:
    name = "torch"

    def __init__(self, graph: nn.Module, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide in torch; documented on CrossEncoder
        self.graph = graph

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return run_graph(self.graph, batch).float().numpy()
