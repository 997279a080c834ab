"""The torch backend's bf16 graph compiled ahead of time for this CPU (AOTInductor), once per checkpoint.

Eager bf16 spends much of a forward pass between the matrix products: autocast copies each activation to bf16
and back, and GELU, LayerNorm and the residual adds each walk memory on their own. Inductor fuses those into
generated C++ loops around oneDNN's AMX matrix products; on trec-dl-2021's BM25 top-100 that took the default
model's per-query p50 from ~205 to ~160 ms (README, "Reranking speed"). `torch.compile` at run time would cost
every process ~15 s before its first answer, so the graph is exported and compiled once, like the ONNX export,
and the package is cached under `<cache>/compiled/`, keyed by checkpoint content, head, torch version and the
CPU's instruction-set flags (the generated code targets the CPU it was built on). Building needs a C++ compiler;
where that or anything else fails, the backend says so once and runs eager — slower, never wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from crossrank.file_lock import exclusive_lock
from crossrank.model.backends.cpu_features import cpu_flags_signature
from crossrank.model.checkpoint import cache_dir
from crossrank.model.graphs import input_names
from crossrank.model.library_output import library_output_as_debug

if TYPE_CHECKING:
    from collections.abc import Callable

COMPILE_VERSION = "1"  # bump when the recipe changes, so old packages are not reused
ENVIRONMENT_SWITCH = "CROSSRANK_COMPILE"  # "0": never compile (eager bf16), e.g. where no C++ compiler exists
log = logging.getLogger(__name__)


def compiling_enabled() -> bool:
    return os.environ.get(ENVIRONMENT_SWITCH, "1") != "0"


def package_path(content_hash: str, head: str) -> Path:
    """The checkpoint and head name the folder; the machine (torch's version, the CPU's flags) and recipe a digest."""
    machine = f"torch{torch.__version__}-{cpu_flags_signature()}-v{COMPILE_VERSION}"
    return (cache_dir() / "compiled" / f"{content_hash}-{head}-bf16-{hashlib.sha256(machine.encode()).hexdigest()[:16]}"
            / "model.pt2")


class _Autocast(nn.Module):
    """The graph under bf16 autocast, returning fp32: what `TorchBackend.run` does eagerly, as one module."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.inner = graph  # not `graph`: the exported GraphModule's own attribute of that name would shadow it

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(*inputs).float()


def compile_package(graph: nn.Module, target: Path, max_length: int) -> None:
    """Export `graph` (its Linear layers already bf16) with a dynamic batch and length, and AOT-compile it."""
    names = input_names(graph)
    example = tuple(torch.ones((2, 16), dtype=torch.long) for _ in names)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    length = torch.export.Dim("length", min=2, max=max_length)
    dynamic = {"inputs": tuple({0: batch, 1: length} for _ in names)}
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, torch.no_grad(), library_output_as_debug():
        program = torch.export.export(_Autocast(graph).eval(), example, dynamic_shapes=dynamic)
        built = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(scratch) / "model.pt2"))
        os.replace(built, target)


def load_compiled(graph: nn.Module, content_hash: str, head: str, max_length: int
                  ) -> Callable[[dict[str, np.ndarray]], np.ndarray] | None:
    """A thread-safe `run(batch)` over the compiled package (building it first if this machine has none), or None
    where compiling is switched off or fails (the caller then runs eager)."""
    if not compiling_enabled():
        return None
    target = package_path(content_hash, head)
    try:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(target.parent / ".lock"):
                if not target.is_file():
                    log.warning("compiling the model for this CPU, once (about 20 s; cached under %s)",
                                target.parent)
                    compile_package(graph, target, max_length)
        runner = torch._inductor.aoti_load_package(str(target))
    except Exception as error:  # noqa: BLE001 - any failure means eager, which is correct, only slower
        log.warning("could not compile the bf16 graph (%s: %s); running it eagerly (slower). Set %s=0 to skip "
                    "the attempt", type(error).__name__, str(error).splitlines()[0][:200], ENVIRONMENT_SWITCH)
        shutil.rmtree(target.parent, ignore_errors=True)
        return None
    names = input_names(graph)

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return runner(*(torch.from_numpy(np.ascontiguousarray(batch[name])) for name in names)).numpy()

    return run
