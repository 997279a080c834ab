"""crossrank: multi-stage neural ranking (retrieve, fuse, rerank with a cross-encoder, evaluate, serve).

The public names load on first use (PEP 562), so `import crossrank` and the CLI's `--help` stay fast."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.embedding import BiEncoder
    from crossrank.types import Document, RankResult

__all__ = ["BiEncoder", "CrossEncoder", "Document", "RankResult"]
__version__ = "0.1.0"
_HOMES = {"CrossEncoder": "crossrank.model.cross_encoder", "BiEncoder": "crossrank.model.embedding",
          "Document": "crossrank.types", "RankResult": "crossrank.types"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'crossrank' has no attribute {name!r}")
