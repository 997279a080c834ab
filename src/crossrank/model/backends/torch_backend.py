"""The reference backend: the PyTorch module itself, fp32, inference mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crossrank.model.graphs import run_graph


class TorchBackend:
    """`device` ("cpu", "cuda", ...) is where the graph runs; inputs and outputs stay numpy on the host, in fp32 on
    every device, so a GPU teacher scores as the CPU engine does."""

    name = "torch"

    def __init__(self, graph: nn.Module, threads: int | None = None, device: str = "cpu") -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide in torch; documented on CrossEncoder
        self.device = torch.device(device)
        self.graph = graph.to(self.device)

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return run_graph(self.graph, batch, self.device).float().cpu().numpy()
