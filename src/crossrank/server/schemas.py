"""Request and response bodies for the rerank endpoints, shaped exactly as Cohere's v1/v2 and Jina's clients
send and parse them. Unknown rerank request fields are ignored (clients add new ones, e.g. Cohere's `priority`);
optional fields accept explicit nulls because the SDKs send them. Types are exact (`true` is not 1, "3" is not 3;
3.0 is 3, as JSON Schema says), and no string anywhere in a request may hold a lone surrogate (JSON allows
`"\ud800"`; UTF-8 does not), so such text is a 422 here instead of a failure deep in the tokenizer or the database.
The published schema says everything the validation checks, so a schema-valid request is never refused as
invalid."""

from __future__ import annotations

import functools
import inspect
import json
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)
from typing_extensions import TypedDict

from crossrank.context import MAX_BUDGET_TOKENS, ContextSelector, Granularity, Order, Style
from crossrank.server.config import TOKENIZER_NAME as CONFIGURED_TOKENIZER_NAME

# At least one character str.strip() keeps. Spelled out because `\s` means different sets in Python, Rust (pydantic)
# and ECMA (JSON Schema) regexes, and the published pattern must accept exactly what validation accepts.
NOT_BLANK = r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("query is empty or only whitespace")
    return query


QueryText = Annotated[str, Field(description="The search query.", json_schema_extra={"pattern": NOT_BLANK}),
                      AfterValidator(_not_blank)]


class TextDocument(TypedDict):
    """A document object: `text` plus any other fields, which are echoed back and may be named in rank_fields."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    text: str


DocumentIn = str | TextDocument


def document_text(document: DocumentIn, rank_fields: list[str] | None) -> str:
    """The text the model reads: the string itself, an object's `text`, or its `rank_fields` as "key: value"
    lines in the given order (Cohere v1). Fields a document lacks are skipped; with none of them, its text."""
    if isinstance(document, str):
        return document
    if rank_fields is None:
        return document["text"]
    lines = []
    for name in rank_fields:
        value = document.get(name)
        if value is not None:
            lines.append(f"{name}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines) if lines else document["text"]


def document_out(document: DocumentIn) -> dict[str, Any]:
    """How a returned document is echoed: strings as {"text": ...}, objects unchanged."""
    return {"text": document} if isinstance(document, str) else dict(document)


def _unicode_problem(value: Any, where: str) -> str | None:
    """Where a lone surrogate hides in a JSON value, if anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{where or 'body'}: character {exc.start} is a lone surrogate ({value[exc.start]!a}), not text"
        return None
    if isinstance(value, dict):
        items = list(value.items())
        for key, _ in items:
            if (problem := _unicode_problem(key, f"{where}.<key>" if where else "<key>")) is not None:
                return problem
        pairs = ((f"{where}.{key}" if where else str(key), item) for key, item in items)
    elif isinstance(value, list):
        pairs = ((f"{where}[{i}]", item) for i, item in enumerate(value))
    else:
        return None
    return next((problem for path, item in pairs if (problem := _unicode_problem(item, path)) is not None), None)


class RequestBody(BaseModel):
    """Base of every request body: unknown fields refused, only encodable text, numbers that are JSON numbers."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _exact(cls, data: Any) -> Any:
        if (problem := _unicode_problem(data, "")) is not None:
            raise ValueError(problem)
        if isinstance(data, dict):
            for name in _numeric_fields(cls):
                if isinstance(value := data.get(name), (bool, str)):
                    raise ValueError(f"{name}: expected a JSON number, got {type(value).__name__} {value!r}")
        return data


@functools.cache
def _numeric_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """Fields typed only as numbers (int, float, optionally None), where lax parsing would take `true` or "3"."""
    def kinds(annotation: Any) -> list[Any]:
        return [get_args(k)[0] if get_origin(k) is Annotated else k
                for k in (get_args(annotation) or (annotation,)) if k is not type(None)]

    return tuple(name for name, info in model.model_fields.items()
                 if all(kind in (int, float) for kind in kinds(info.annotation)))


class RerankRequest(RequestBody):
    """Fields common to Cohere v1/v2 and Jina rerank requests."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Accepted for compatibility; the server's loaded model answers.")
    query: QueryText
    documents: list[DocumentIn] = Field(min_length=1, description="Strings or objects with a string `text` field.")
    top_n: Annotated[int, Field(ge=1)] | None = Field(None, description="Return only the best N results (default: "
                                                                        "all).")
    return_documents: StrictBool | None = Field(None, description="Echo each document in its result (default "
                                                                  "false).")

    def texts(self) -> list[str]:
        return [document_text(document, None) for document in self.documents]

    def token_cap(self, window_tokens: int) -> int | None:
        return None


class RerankV1Request(RerankRequest):
    """Cohere v1 (and Jina): `rank_fields` picks object fields to read; `max_chunks_per_doc` caps long documents."""

    rank_fields: list[str] | None = Field(None, min_length=1, description="Object fields to rank on, in order, read "
                                          "as 'name: value' lines; fields a document lacks are skipped (with none "
                                          "of them, its text is read).")
    max_chunks_per_doc: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Read at most this many windows per document.")

    def texts(self) -> list[str]:
        return [document_text(document, self.rank_fields) for document in self.documents]

    def token_cap(self, window_tokens: int) -> int | None:
        return None if self.max_chunks_per_doc is None else self.max_chunks_per_doc * window_tokens


class RerankV2Request(RerankRequest):
    """Cohere v2: `max_tokens_per_doc` truncates each document to that many tokens."""

    max_tokens_per_doc: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Truncate documents to this many tokens.")

    def token_cap(self, window_tokens: int) -> int | None:
        return self.max_tokens_per_doc


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(ge=0, le=1, description="Calibrated probability of relevance.")
    document: dict[str, Any] | None = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class Tokens(BaseModel):
    input_tokens: int
    output_tokens: int = 0


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens


class Usage(BaseModel):
    """Jina's usage block."""

    total_tokens: int
    prompt_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    meta: Meta
    usage: Usage | None = None


class ErrorResponse(BaseModel):
    message: str


INDEX_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Index names: letters, digits, '_', '.', '-', not starting with '.', so no name can leave the index root."""


FilterValue = StrictBool | int | float | str


class FilterRange(RequestBody):
    """A range (or inequality) on one field; values compare as stored (numbers numerically, ISO dates as text)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    gt: FilterValue = None  # type: ignore[assignment]  # absent, never null
    gte: FilterValue = None  # type: ignore[assignment]
    lt: FilterValue = None  # type: ignore[assignment]
    lte: FilterValue = None  # type: ignore[assignment]
    ne: FilterValue = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _not_empty(self) -> FilterRange:
        if not self.model_fields_set:
            raise ValueError("an empty range; give at least one of gt, gte, lt, lte, ne")
        return self


FilterCondition = FilterValue | Annotated[list[FilterValue], Field(min_length=1)] | FilterRange


FILTERS_DESCRIPTION = ('Metadata filters, all of which must hold: {"lang": "en"} (equal), {"lang": ["en", "de"]} '
                       '(any of), {"year": {"gte": 2020, "lt": 2024}} (range). A field no document in the index has '
                       'is a 409 (so typos are caught).')


def store_filters(filters: dict[str, FilterCondition] | None) -> dict[str, Any] | None:
    """Request filters as `crossrank.store.filters` reads them."""
    if filters is None:
        return None
    return {name: condition.model_dump(include=condition.model_fields_set)
            if isinstance(condition, FilterRange) else condition for name, condition in filters.items()}


class PipelineSpec(RequestBody):
    """Which stages run on an index: retrieve (BM25 and/or dense) → fuse → rerank → LambdaMART, as
    `crossrank.pipeline.search_pipeline` builds them (shared by /search and judged evaluations)."""

    retrievers: list[Literal["bm25", "dense"]] | None = Field(
        None, min_length=1, description="bm25 and/or dense (default: all the index has; dense on an index without "
                                        "vectors is a 409).")
    first_k: int = Field(100, ge=1, le=10000, description="Candidates per retriever.")
    fusion: Literal["rrf", "weighted"] = Field("rrf", description="How several retrievers' lists merge: rrf "
                                                                   "(reciprocal ranks) or weighted (min-max scores).")
    rerank_k: int = Field(50, ge=0, le=1000, description="Candidates the cross-encoder rescores (0: none).")
    first_stage_weight: Annotated[float, Field(ge=0, lt=1)] | None = Field(
        None, description="Weight of the first stage's z-scored score in the final score (default: the "
                                      "model's fusion.json weight for this first stage, fused or single; 0: the "
                                      "cross-encoder alone).")
    ltr: StrictBool = Field(False, description="Reorder the reranked list with the server's LambdaMART model "
                                               "(`crossrank serve --ltr MODEL`; 409 when it has none).")


class SearchRequest(PipelineSpec):
    """Retrieve (BM25 and/or dense) → fuse → rerank → cut on a named index, through `crossrank.pipeline`."""

    index: str = Field(pattern=INDEX_NAME, description="Name of an index under the server's index root.")
    query: QueryText
    k: int = Field(10, ge=1, le=1000, description="Results to return.")
    filters: dict[str, FilterCondition] | None = Field(None, description=FILTERS_DESCRIPTION)
    explain: StrictBool = Field(False, description="Include the pipeline trace (candidates in/out, ms per stage).")

    def filter_dict(self) -> dict[str, Any] | None:
        """The filters as `crossrank.store.filters` reads them."""
        return store_filters(self.filters)


class SearchHit(BaseModel):
    id: str
    doc_id: str
    title: str
    text: str
    metadata: dict[str, Any]
    score: float
    scores: dict[str, float]
    ranks: dict[str, int]
    first_stage_rank: int | None = None


class SearchResponse(BaseModel):
    index: str
    query: str
    results: list[SearchHit]
    pipeline: str | None = None
    trace: list[dict[str, Any]] | None = None
    query_terms: list[str] | None = Field(
        None, description="With `explain`: the query's words as BM25 matches them (lower-cased, stop words "
                          "dropped, unstemmed), for highlighting.")


class DocumentBody(RequestBody):
    text: str = Field(pattern=NOT_BLANK, description="The document's text (not blank: delete the id instead).")
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class IndexDocument(DocumentBody):
    id: str = Field(min_length=1, max_length=512, pattern=NOT_BLANK)


class AddDocumentsRequest(RequestBody):
    documents: list[IndexDocument] = Field(min_length=1)
    dense: StrictBool = Field(True, description="Only when this request creates the index: also store dense vectors.")


class CreateIndexRequest(RequestBody):
    dense: StrictBool = Field(True, description="Also store dense vectors (for the `dense` retriever).")


class IndexChange(BaseModel):
    index: str
    generation: int
    documents: int
    passages: int


class IndexList(BaseModel):
    indexes: list[str]


# ---- /v1/context ------------------------------------------------------------------------------------------------

_SELECTOR_DEFAULTS = {name: parameter.default
                      for name, parameter in inspect.signature(ContextSelector.__init__).parameters.items()}
"""The library's defaults, so the published schema shows the numbers the selector actually uses."""

TOKENIZER_NAME = f"^{CONFIGURED_TOKENIZER_NAME}$"


class ContextRequest(RequestBody):
    """Select cited evidence for an LLM from a named index: retrieve, rerank the top `candidates`, keep passages
    over the relevance floor, drop duplicates and pack `budget_tokens` (see `crossrank.context`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"index": "docs", "query": "how are long documents scored?", "budget_tokens": 1500},
        {"index": "docs", "query": "how are long documents scored?", "budget_tokens": 4000, "granularity": "passage",
         "order": "ends", "style": "xml", "tokenizer": "llama3", "filters": {"lang": "en"}},
    ]})

    index: str = Field(pattern=INDEX_NAME, description="Name of an index under the server's index root.")
    query: QueryText
    budget_tokens: int = Field(gt=0, le=MAX_BUDGET_TOKENS, description=(
        "Tokens the whole rendered context may cost, in any style (counted with `tokenizer`, else estimated)."))
    granularity: Granularity = Field(_SELECTOR_DEFAULTS["granularity"], description=(
        "sentence: quote only the answering sentences of each passage; passage: whole passages (cut to their "
        "leading sentences when the rest does not fit)."))
    order: Order = Field(_SELECTOR_DEFAULTS["order"], description=(
        "score: best first; document: each source's snippets together, in reading order; ends: best first and "
        "last, weakest in the middle (against lost-in-the-middle in long contexts)."))
    style: Style = Field("numbered", description=(
        "How `rendered` is written: numbered ([1] title: text), xml (<source id=\"1\" ...>) or markdown; every "
        "style opens each snippet with its citation marker and fits the budget."))
    abstain_below: float = Field(_SELECTOR_DEFAULTS["abstain_below"], ge=0, le=1, description=(
        "When even the best passage's calibrated probability is below this, the answer is an abstention "
        "(`abstained`: true, no snippets, `reason` says why): nothing retrieved looks like an answer."))
    min_probability: float = Field(_SELECTOR_DEFAULTS["min_probability"], ge=0, le=1, description=(
        "Relevance floor on the cross-encoder's calibrated probability: weaker passages are left out (none left is "
        "also an abstention)."))
    candidates: int = Field(_SELECTOR_DEFAULTS["candidates"], ge=1, le=1000, description=(
        "Passages the cross-encoder reads after retrieval and fusion (held to max_documents and "
        "max_request_tokens like /search's rerank_k; 413 beyond)."))
    neighbours: int = Field(_SELECTOR_DEFAULTS["neighbours"], ge=0, description=(
        "Sentences either side of a selected sentence, for coherence (granularity sentence)."))
    mmr_lambda: float = Field(_SELECTOR_DEFAULTS["mmr_lambda"], ge=0, le=1, description=(
        "Below 1 trades relevance for novelty (maximal marginal relevance over bi-encoder embeddings)."))
    filters: dict[str, FilterCondition] | None = Field(None, description=FILTERS_DESCRIPTION)
    tokenizer: str | None = Field(None, pattern=TOKENIZER_NAME, description=(
        "Name of a tokenizer the server was started with (`crossrank serve --context-tokenizer NAME=PATH`) to "
        "count the budget exactly as the reading LLM will; an unknown name is a 404 that lists the configured ones. "
        "Default: a conservative estimate from UTF-8 bytes. Clients never name server files."))

    def filter_dict(self) -> dict[str, Any] | None:
        return store_filters(self.filters)


class ContextSnippet(BaseModel):
    marker: int = Field(description="The citation marker: [marker] in the rendered text.")
    doc_id: str
    passage_id: str
    title: str
    text: str = Field(description="Exactly the passage's text[start:end], cut at sentence boundaries.")
    start: int = Field(description="Character offset of the snippet in its passage.")
    end: int
    score: float = Field(description="The cross-encoder logit the snippet was selected by.")
    probability: float = Field(description="Its calibrated probability.")
    passage_probability: float = Field(description="The whole passage's, which the relevance floor applies to.")
    tokens: int = Field(description="The most its rendered block costs in any style.")
    metadata: dict[str, Any]


class ContextDropped(BaseModel):
    doc_id: str
    passage_id: str
    start: int
    end: int
    reason: Literal["empty", "abstain", "floor", "duplicate", "budget"] = Field(description=(
        "empty: a blank passage; abstain: the context abstained (the best passage is below abstain_below); "
        "floor: below min_probability; duplicate: same or near-same text as a kept snippet (detail names it); "
        "budget: did not fit in what was left."))
    probability: float
    detail: str


class ContextResponse(BaseModel):
    index: str
    model: str = Field(description="The cross-encoder that scored the evidence.")
    query: str
    abstained: bool = Field(description="True when nothing looks like an answer (the best passage is below "
                                        "abstain_below, or none reached the floor): answer 'not found'.")
    reason: str | None = Field(description="Why the context abstained (null otherwise).")
    budget: int
    tokens: int = Field(description="The rendered context's size in the style that costs most (≤ budget).")
    tokenizer: str = Field(description="What counted the tokens: a configured tokenizer's name or the estimate.")
    granularity: Granularity
    order: Order
    abstain_below: float
    min_probability: float
    style: Style
    rendered: str = Field(description="The context as prompt text in `style`; empty when abstained.")
    snippets: list[ContextSnippet] = Field(description="In prompt order, markers 1..n.")
    dropped: list[ContextDropped] = Field(description="Evidence left out and why.")
