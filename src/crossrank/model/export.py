"""ONNX export, once per checkpoint content: torch → ONNX → fused transformer graph → optional dynamic int8.

Exports are cached under `<cache>/onnx/<content-hash>-<head>/`, so a changed checkpoint re-exports and an
unchanged one never does. A file lock makes concurrent first uses export once; files appear atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from crossrank.file_lock import exclusive_lock
from crossrank.model.checkpoint import Checkpoint, cache_dir
from crossrank.model.gated import is_gated
from crossrank.model.graphs import Head, build_graph, input_names
from crossrank.model.library_output import library_output_as_debug

Quantize = Literal["int8"] | None
QUANTIZATIONS = (None, "int8")
EXPORT_VERSION = "2"  # bump when the export recipe changes, so old caches are not reused
# Dynamic int8 on the fused graph: the projections/FFN (MatMul) and the fused attention (QAttention). Embeddings
# stay fp32 (cheap lookups, and int8 tables cost ranking agreement); weights are int8 per output channel with
# the full range — u8 activations × s8 weights is the AVX-512 VNNI path, reduce_range only loses precision.
# The one-segment graph of a factorised model keeps its attention fp32: on the two training sets the default model
# is chosen on (trec-dl-2021, SciFact train) MatMul-only int8 averaged 0.003 nDCG@10 above all-int8 (see the card).
INT8_OP_TYPES: dict[str, list[str]] = {"classification": ["MatMul", "Attention"],
                                       "embedding": ["MatMul", "Attention"], "segments": ["MatMul"]}
log = logging.getLogger(__name__)


def export_dir(checkpoint: Checkpoint, head: Head) -> Path:
    return cache_dir() / "onnx" / f"{checkpoint.content_hash}-{head}-v{EXPORT_VERSION}"


def onnx_model_path(checkpoint: Checkpoint, head: Head, quantize: Quantize = None) -> Path:
    """The cached ONNX file for this checkpoint/head/quantisation, exporting it first if needed."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    directory = export_dir(checkpoint, head)
    target = directory / ("model.int8.onnx" if quantize == "int8" else "model.onnx")
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(directory / ".lock"), library_output_as_debug():
        fp32 = directory / "model.onnx"
        if not fp32.is_file():
            _export_fp32(checkpoint, head, fp32)
        if quantize == "int8" and not target.is_file():
            _quantize_int8(fp32, target, INT8_OP_TYPES[head])
    return target


@contextlib.contextmanager
def _atomic_target(target: Path) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _export_fp32(checkpoint: Checkpoint, head: Head, target: Path) -> None:
    log.info("exporting %s to ONNX once (cached under %s)", checkpoint.path.name, target.parent)
    graph = build_graph(checkpoint, head)
    if hasattr(getattr(graph, "model", None), "set_attn_implementation"):
        # Traced SDPA attention (transformers' default) hides the pattern ONNX Runtime's fusion matches, leaving
        # attention as ~20 unfused ops a layer; the eager path fuses into one Attention kernel, same numbers.
        graph.model.set_attn_implementation("eager")
    names = input_names(graph)
    dummy = {name: torch.ones((2, 16), dtype=torch.long) for name in names}
    dummy["token_type_ids"] = torch.zeros((2, 16), dtype=torch.long)
    args = tuple(dummy[name] for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"output": {0: "batch"}}
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        raw = Path(scratch) / "raw.onnx"
        with torch.inference_mode():
            torch.onnx.export(
                graph, args, str(raw), dynamo=False, input_names=names, output_names=["output"],
                dynamic_axes=axes, opset_version=17, do_constant_folding=True,
            )
        with _atomic_target(target) as tmp:
            fused = _fuse_transformer_ops(raw, tmp, checkpoint)
    (target.parent / "manifest.json").write_text(
        json.dumps({"source": str(checkpoint.path), "content_hash": checkpoint.content_hash, "head": head,
                    "inputs": names, "torch": torch.__version__, "export_version": EXPORT_VERSION,
                    "fused_operators": fused, "int8_op_types": INT8_OP_TYPES[head]}, indent=2)
    )


def _fuse_transformer_ops(source: Path, target: Path, checkpoint: Checkpoint) -> dict[str, int]:
    """Fuse attention, LayerNorm and GELU into ONNX Runtime's contrib kernels (the main CPU speed-up).

    Returns the fused-operator counts (recorded in the manifest); a graph whose attention did not fuse
    still runs, but is logged, since it is several times slower.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    config = checkpoint.config
    # The "bert" fusion patterns match every BERT-family encoder; where a pattern does not match
    # (e.g. DeBERTa's disentangled attention) the graph is left as exported.
    optimized = optimize_model(
        str(source), model_type="bert", num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)), opt_level=1, use_gpu=False,
    )
    optimized.save_model_to_file(str(target))
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    layers = int(config.get("num_hidden_layers", 0))
    # The gated cross-encoder's two-pattern attention has no fused kernel; its projections and FFN still fuse.
    if not is_gated(config) and fused.get("Attention", 0) < layers:
        log.warning("%s: attention fused in %d of %d layers; the ONNX graph will be slow",
                    checkpoint.path, fused.get("Attention", 0), layers)
    return fused


def _quantize_int8(source: Path, target: Path, op_types: list[str]) -> None:
    """Dynamic int8: weights quantised once, activations per batch (uses VNNI where the CPU has it)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("quantising it to int8 once")
    # The fused graph holds contrib ops shape inference cannot type; their outputs are float.
    options = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
    with _atomic_target(target) as tmp:
        quantize_dynamic(str(source), str(tmp), op_types_to_quantize=op_types, weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=False, extra_options=options)
