"""Inference backends: one `run(batch) -> np.ndarray` over the same padded int64 inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from crossrank.model.checkpoint import Checkpoint

BackendName = Literal["torch", "onnx"]
BACKENDS = ("torch", "onnx")


class Backend(Protocol):
    """Runs one padded batch. Implementations must be safe to call from several threads at once."""

    name: str

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...


def load_backend(checkpoint: Checkpoint, head: str, backend: BackendName, quantize: str | None,
                 threads: int | None, device: str = "cpu") -> Backend:
    """Build the named backend for a checkpoint; shared by the cross-encoder and the bi-encoder. A `device` other
    than the CPU needs the torch backend (ONNX Runtime here is the CPU build)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        if quantize is not None:
            raise ValueError("quantize='int8' needs backend='onnx'")
        from crossrank.model.backends.torch_backend import TorchBackend
        from crossrank.model.graphs import build_graph

        return TorchBackend(build_graph(checkpoint, head), threads, device)
    if device != "cpu":
        raise ValueError(f"device={device!r} needs backend='torch'")
    from crossrank.model.backends.onnx_backend import OnnxBackend
    from crossrank.model.export import onnx_model_path

    return OnnxBackend(onnx_model_path(checkpoint, head, quantize), threads)
