"""The reference backend: the PyTorch module itself, in inference mode; fp32, or bf16 autocast where the CPU has
bfloat16 matrix units."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
from torch import nn

from crossrank.model.backends.cpu_features import cpu_has_native_bf16
from crossrank.model.graphs import run_graph

log = logging.getLogger(__name__)


class TorchBackend:
    """`device` ("cpu", "cuda", ...) is where the graph runs; inputs and outputs stay numpy on the host, in fp32 on
    every device, so a GPU teacher scores as the CPU engine does.

    `bf16` runs the matrix products in bfloat16 under autocast (embeddings, LayerNorm, softmax and the outputs stay
    fp32). On a CPU with AMX tiles oneDNN then uses them: about twice ONNX Runtime's fp32 per query; without them
    bf16 is emulated and slower (`cpu_has_native_bf16`). The Linear layers' weights and biases are cast to bf16
    once, here: autocast would cast them on every call to the same values (identical scores), and that copy cost
    ~10 % per query (trec-dl-2021's BM25 top-100, p50 320 → 287 ms). Given `compile_for` (the checkpoint's content
    hash, the head and its longest input; `load_backend` passes it for bf16 on the CPU), it runs the graph compiled
    ahead of time for this machine (`crossrank.model.backends.compiled`), eager where that is off or fails."""

    name = "torch"

    def __init__(self, graph: nn.Module, threads: int | None = None, device: str = "cpu", bf16: bool = False,
                 compile_for: tuple[str, str, int] | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide in torch; documented on CrossEncoder
        self.device = torch.device(device)
        self.graph = graph.to(self.device)
        self.bf16 = bf16
        if bf16:
            for module in self.graph.modules():
                if isinstance(module, nn.Linear):
                    module.to(torch.bfloat16)
        if bf16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("bf16 on a CPU without AMX or AVX512-BF16 is emulated: expect it slower than fp32 "
                        "(ONNX fp32 is the fast choice here)")
        self.compiled = None
        if compile_for is not None:
            from crossrank.model.backends.compiled import load_compiled

            self.compiled = load_compiled(self.graph, *compile_for)
            if self.compiled is not None:
                self.graph = None  # the package holds its own weights; the eager copy was ~50 MB of a server's RSS

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled(batch)
        precision = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                     else contextlib.nullcontext())
        with precision:
            return run_graph(self.graph, batch, self.device).float().cpu().numpy()
