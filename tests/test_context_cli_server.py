"""`crossrank context` and `POST /v1/context`: cited, budgeted context for an LLM from an index, through the CLI and
the HTTP server, with the tiny random models (mechanics, not quality). Bad input is a clear one-line error or a
4xx, and the index is left exactly as it was."""

from __future__ import annotations

from pathlib import Path

from crossrank.context import TokenizerTokens, token_counter

# ---- the token counter ---------------------------------------------------------------------------------------


def test_a_tokenizer_that_pads_or_truncates_is_counted_unpadded(tiny_model_dir: Path):
    """MiniLM's tokenizer.json pads every text to 128 and truncates at 128: counted as it is, every snippet would
    cost 128 tokens and a 600-word one would pass as 128."""
    from tokenizers import Tokenizer

    counter = TokenizerTokens.from_file(tiny_model_dir)
    short, long = counter.count(["Paris is the capital of France.", "word " * 600])
    assert short < 20 and long == 600
    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert raw.padding is not None and raw.truncation is not None
    assert token_counter(raw).count(["hello world"]) == [2]
    assert raw.padding is not None and raw.truncation is not None  # the caller's tokenizer is not changed
