"""crossrank: multi-stage neural ranking (retrieve, fuse, rerank with a cross-encoder, evaluate, serve)."""

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.embedding import BiEncoder
from crossrank.types import Document, RankResult

__all__ = ["BiEncoder", "CrossEncoder", "Document", "RankResult"]
__version__ = "0.1.0"
