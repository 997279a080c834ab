"""ONNX Runtime backend: a cached, graph-optimised export (optionally dynamic int8) of the same graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxBackend:
    name = "onnx"

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.inputs = [node.name for node in self.session.get_inputs()]
        self.model_path = model_path

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        # InferenceSession.run is thread-safe; each call gets its own outputs.
        return self.session.run(None, {name: batch[name] for name in self.inputs})[0]
