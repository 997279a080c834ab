"""What this CPU's matrix units can do, read from /proc/cpuinfo (no torch import): which precision runs fast."""

from __future__ import annotations

import hashlib
from pathlib import Path


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """bf16 pays on CPUs with AMX or AVX512-BF16 units; elsewhere it is emulated and many times slower."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_has_amx() -> bool:
    """AMX tiles: where bf16 inference is about three times ONNX Runtime's fp32 (README, "Reranking speed"), so the
    "auto" backend picks it. AVX512-BF16 alone was not measured, so it does not."""
    return "amx_bf16" in _cpu_flags()


def cpu_flags_signature() -> str:
    """A short digest of the first CPU's feature flags: code generated for one instruction set is reused only on
    CPUs with the same flags."""
    flags = next((line for line in _cpu_flags().splitlines() if line.startswith("flags")), "")
    return hashlib.sha256(flags.encode()).hexdigest()[:12]
