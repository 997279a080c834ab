"""crossrank context selection as a LangChain document compressor (`pip install 'crossrank[langchain]'`).

    from crossrank.integrations.langchain import CrossrankContextCompressor

    compressor = CrossrankContextCompressor(budget_tokens=512)   # the bundled cross-encoder and bi-encoder
    snippets = compressor.compress_documents(retrieved_documents, "who wrote hamlet?")

or as the `base_compressor` of LangChain's `ContextualCompressionRetriever`. Each returned `Document` is one
selected snippet: `page_content` is an exact span of one input's `page_content`, `metadata` is that input's
metadata (a shallow copy) plus the crossrank fields below, and the list is in context order (the `order` field).
Together they fit `budget_tokens` as rendered by `crossrank.context.Context.render` in any style, and so also as
the plain texts joined by blank lines.

crossrank fields: `crossrank_source_index` (position of the quoted input in `documents`), `crossrank_source_id`
(its `Document.id`, None when it has none), `crossrank_start`/`crossrank_end` (the span in its `page_content`),
`crossrank_marker` (the citation number in the rendered context), `crossrank_score` (cross-encoder logit),
`crossrank_probability` (calibrated probability, also as `relevance_score`, the key LangChain rerankers use),
`crossrank_passage_probability` (the whole input's) and `crossrank_tokens`.

When no input reaches `min_probability` the result is an empty list: the selector abstains rather than hand the
LLM noise. The reason is logged (logger "crossrank.integrations", INFO); `select_context` returns the whole
`crossrank.context.Context` (reason, dropped spans, rendering) for the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict

from crossrank.context import Context
from crossrank.integrations._common import ContextSettings, missing_extra, snippet_fields, source_position

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError as error:
    raise missing_extra(__name__, "langchain-core", "langchain") from error

__all__ = ["CrossrankContextCompressor"]


class CrossrankContextCompressor(ContextSettings, BaseDocumentCompressor):
    """Select the evidence in `documents` that best answers `query` within `budget_tokens`, as LangChain
    `Document`s. Settings are `crossrank.context.ContextSelector`'s, as fields; models load once, at construction.
    `acompress_documents` is LangChain's default (the same call in an executor thread); the selector is safe to
    share across threads."""

    model_config = ConfigDict(extra="forbid")

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The selected snippets in context order; an empty list when the selector abstains."""
        del callbacks  # no LLM or tool runs here to report to
        context = self.select_context(documents, query)
        out = []
        for snippet in context.snippets:
            source = documents[source_position(snippet)]
            fields = snippet_fields(snippet, source.id)
            out.append(Document(page_content=snippet.text, metadata={
                **source.metadata, **fields, "relevance_score": fields["crossrank_probability"]}))
        return out

    def select_context(self, documents: Sequence[Document], query: str) -> Context:
        """The selector's full answer for these inputs: snippets (their `doc_id` is the input's position as a
        string), `abstained` and `reason`, what was `dropped` and why, `render()`."""
        documents = _documents(documents)
        return self._select(query, [d.page_content for d in documents], [d.metadata for d in documents])


def _documents(documents: Any) -> Sequence[Document]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a sequence of langchain_core Documents, not {type(documents).__name__}")
    for position, document in enumerate(documents):
        if not isinstance(document, Document):
            raise TypeError(f"documents[{position}] is a {type(document).__name__}, not a langchain_core Document")
    return documents
