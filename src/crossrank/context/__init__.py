"""Context for an LLM: select, deduplicate and pack the best evidence into a token budget, with citations."""

from crossrank.context.result import STYLES, Context, Dropped, Snippet, Style
from crossrank.context.selection import (
    DEFAULT_ABSTAIN_BELOW,
    DEFAULT_MIN_PROBABILITY,
    GRANULARITIES,
    MAX_BUDGET_TOKENS,
    ORDERS,
    ContextSelector,
    Granularity,
    Order,
    select_context,
)
from crossrank.context.tokens import EstimatedTokens, TokenCounter, TokenizerTokens, token_counter

__all__ = ["DEFAULT_ABSTAIN_BELOW", "DEFAULT_MIN_PROBABILITY", "GRANULARITIES", "MAX_BUDGET_TOKENS", "ORDERS",
           "STYLES", "Context", "ContextSelector", "Dropped", "EstimatedTokens", "Granularity", "Order", "Snippet",
           "Style", "TokenCounter", "TokenizerTokens", "select_context", "token_counter"]
