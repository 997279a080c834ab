"""crossrank context selection as a LlamaIndex node postprocessor (`pip install 'crossrank[llamaindex]'`).

    from crossrank.integrations.llamaindex import CrossrankContextPostprocessor

    postprocessor = CrossrankContextPostprocessor(budget_tokens=512)   # the bundled cross-encoder and bi-encoder
    query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[postprocessor])

Each returned `NodeWithScore` holds one selected snippet as a new `TextNode`: its text is an exact span of one
input node's text (`get_content(MetadataMode.NONE)`, the text without metadata, which is what the cross-encoder
reads, with the `title_key` metadata value as title), its id is "<source node id>:<start>-<end>", it keeps the
source node's metadata (a shallow copy), relationships (so `ref_doc_id` still names the source document) and
templates, and its `start_char_idx`/`end_char_idx` are offsets in that document when the source node has them.
The list is in context order (the `order` field) and fits `budget_tokens` as crossrank renders it.

`NodeWithScore.score` is the snippet's calibrated probability (in [0, 1], comparable across queries, the value
`min_probability` applies to), or None with model=None, which has no probabilities. The crossrank metadata
(`crossrank_source_index`, `crossrank_source_id` = the source node id, `crossrank_start`/`crossrank_end` in the
source node's text, `crossrank_marker`, `crossrank_score` = logit, `crossrank_probability`,
`crossrank_passage_probability`, `crossrank_tokens`) is excluded from the text the LLM and the embedder see.

When no node reaches `min_probability` the result is an empty list (abstention); the reason is logged (logger
"crossrank.integrations", INFO) and `select_context` returns the whole `crossrank.context.Context`.
"""

from __future__ import annotations

from typing import Any

from crossrank.context import Context
from crossrank.integrations._common import ContextSettings, missing_extra, snippet_fields, source_position

try:
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError as error:
    raise missing_extra(__name__, "llama-index-core", "llamaindex") from error

__all__ = ["CrossrankContextPostprocessor"]


class CrossrankContextPostprocessor(ContextSettings, BaseNodePostprocessor):
    """Select the evidence in `nodes` that best answers the query within `budget_tokens`. Settings are
    `crossrank.context.ContextSelector`'s, as fields; models load once, at construction. The async path is
    LlamaIndex's default (the same call in a thread); the selector is safe to share across threads."""

    @classmethod
    def class_name(cls) -> str:
        return "CrossrankContextPostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("CrossrankContextPostprocessor needs the query: pass query_bundle or query_str")
        with self.callback_manager.event(CBEventType.RERANKING, payload={
                EventPayload.NODES: nodes, EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.MODEL_NAME: "crossrank"}) as event:
            context = self.select_context(nodes, query_bundle.query_str)
            out = [_snippet_node(nodes[source_position(s)].node, s) for s in context.snippets]
            event.on_end(payload={EventPayload.NODES: out})
        return out

    def select_context(self, nodes: list[NodeWithScore], query: str) -> Context:
        """The selector's full answer for these nodes: snippets (their `doc_id` is the node's position as a
        string), `abstained` and `reason`, what was `dropped` and why, `render()`."""
        nodes = _nodes(nodes)
        return self._select(query, [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
                            [n.node.metadata for n in nodes])


def _nodes(nodes: Any) -> list[NodeWithScore]:
    if not isinstance(nodes, (list, tuple)):
        raise TypeError(f"nodes must be a list of NodeWithScore, not {type(nodes).__name__}")
    for position, node in enumerate(nodes):
        if not isinstance(node, NodeWithScore):
            raise TypeError(f"nodes[{position}] is a {type(node).__name__}, not a NodeWithScore")
    return list(nodes)


def _snippet_node(source: Any, snippet: Any) -> NodeWithScore:
    fields = snippet_fields(snippet, source.node_id)
    offset = getattr(source, "start_char_idx", None)
    node = TextNode(
        id_=f"{source.node_id}:{snippet.start}-{snippet.end}", text=snippet.text,
        metadata={**source.metadata, **fields},
        excluded_embed_metadata_keys=[*source.excluded_embed_metadata_keys, *fields],
        excluded_llm_metadata_keys=[*source.excluded_llm_metadata_keys, *fields],
        relationships=dict(source.relationships), metadata_template=source.metadata_template,
        metadata_separator=source.metadata_separator,
        start_char_idx=None if offset is None else offset + snippet.start,
        end_char_idx=None if offset is None else offset + snippet.end,
        **({"text_template": source.text_template} if isinstance(source, TextNode) else {}))
    return NodeWithScore(node=node, score=fields["crossrank_probability"])
