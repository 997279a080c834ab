"""Inference backends: one `run(batch) -> np.ndarray` over the same padded int64 inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from crossrank.model.checkpoint import Checkpoint

BackendName = Literal["auto", "torch", "onnx"]
BACKENDS = ("auto", "torch", "onnx")
# Reduced precision, by backend: dynamic int8 is an ONNX graph, bf16 torch's autocast.
Precision = Literal["int8", "bf16"] | None
PRECISIONS = (None, "int8", "bf16")


class Backend(Protocol):
    """Runs one padded batch. Implementations must be safe to call from several threads at once."""

    name: str

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...


def resolve_backend(backend: BackendName, quantize: Precision, device: str = "cpu") -> tuple[str, Precision]:
    """The (backend, precision) that runs: "auto" is the fastest faithful one here. On a CPU with AMX tiles that is
    torch in bf16 autocast (about three times ONNX fp32 per query and within 0.002 nDCG@10 of it on every judged set
    measured; README, "Reranking speed"), elsewhere ONNX fp32. An explicit precision decides the backend (int8 is
    an ONNX graph, bf16 torch's autocast); any device but the CPU runs torch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if quantize not in PRECISIONS:
        raise ValueError(f"quantize must be one of {PRECISIONS}, got {quantize!r}")
    if backend != "auto":
        return backend, quantize
    if device != "cpu" or quantize == "bf16":
        return "torch", quantize
    if quantize == "int8":
        return "onnx", quantize
    from crossrank.model.backends.cpu_features import cpu_has_amx

    return ("torch", "bf16") if cpu_has_amx() else ("onnx", None)


def load_backend(checkpoint: Checkpoint, head: str, backend: BackendName, quantize: Precision,
                 threads: int | None, device: str = "cpu") -> Backend:
    """Build the named backend for a checkpoint; shared by the cross-encoder and the bi-encoder. A `device` other
    than the CPU needs the torch backend (ONNX Runtime here is the CPU build); "auto" is `resolve_backend`'s."""
    backend, quantize = resolve_backend(backend, quantize, device)
    if backend == "torch":
        if quantize == "int8":
            raise ValueError("quantize='int8' needs backend='onnx'")
        from crossrank.model.backends.torch_backend import TorchBackend
        from crossrank.model.graphs import build_graph

        # Only CPU bf16 is compiled; nothing else needs the checkpoint's content hash (a read of every weight byte).
        compiles = quantize == "bf16" and device == "cpu"
        return TorchBackend(build_graph(checkpoint, head), threads, device, bf16=quantize == "bf16",
                            compile_for=(checkpoint.content_hash, head, checkpoint.max_position_embeddings)
                            if compiles else None)
    if quantize == "bf16":
        raise ValueError("quantize='bf16' needs backend='torch'")
    if device != "cpu":
        raise ValueError(f"device={device!r} needs backend='torch'")
    from crossrank.model.backends.onnx_backend import OnnxBackend
    from crossrank.model.export import onnx_model_path

    return OnnxBackend(onnx_model_path(checkpoint, head, quantize), threads)
