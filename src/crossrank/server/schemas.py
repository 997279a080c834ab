"""Request and response bodies for the rerank endpoints, shaped exactly as Cohere's v1/v2 and Jina's clients
send and parse them. Unknown request fields are ignored (clients add new ones, e.g. Cohere's `priority`);
optional fields accept explicit nulls because the SDKs send them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DocumentIn = str | dict[str, Any]


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("query is empty or only whitespace")
    return query


QueryText = Annotated[str, Field(min_length=1, description="The search query."), AfterValidator(_not_blank)]


def document_text(document: DocumentIn, index: int, rank_fields: list[str] | None) -> str:
    """The text the model reads: the string itself, an object's `text`, or its `rank_fields` as "key: value"
    lines in the given order (Cohere v1)."""
    if isinstance(document, str):
        return document
    if rank_fields is None:
        text = document.get("text")
        if not isinstance(text, str):
            raise ValueError(f"documents[{index}]: an object needs a string 'text' field (or pass rank_fields)")
        return text
    lines = []
    for name in rank_fields:
        value = document.get(name)
        if value is None:
            raise ValueError(f"documents[{index}]: rank field {name!r} is missing")
        if isinstance(value, (dict, list)):
            raise ValueError(f"documents[{index}]: rank field {name!r} must be a string or number")
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


def document_out(document: DocumentIn) -> dict[str, Any]:
    """How a returned document is echoed: strings as {"text": ...}, objects unchanged."""
    return {"text": document} if isinstance(document, str) else document


class RerankRequest(BaseModel):
    """Fields common to Cohere v1/v2 and Jina rerank requests."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Accepted for compatibility; the server's loaded model answers.")
    query: QueryText
    documents: list[DocumentIn] = Field(description="Strings or objects with a string `text` field.")
    top_n: int | None = Field(None, ge=1, description="Return only the best N results (default: all).")
    return_documents: bool | None = Field(None, description="Echo each document in its result (default false).")

    def texts(self) -> list[str]:
        return [document_text(document, i, None) for i, document in enumerate(self.documents)]

    def token_cap(self, window_tokens: int) -> int | None:
        return None


class RerankV1Request(RerankRequest):
    """Cohere v1 (and Jina): `rank_fields` picks object fields to read; `max_chunks_per_doc` caps long documents."""

    rank_fields: list[str] | None = Field(None, min_length=1, description="Object fields to rank on, in order.")
    max_chunks_per_doc: int | None = Field(None, ge=1, description="Read at most this many windows per document.")

    def texts(self) -> list[str]:
        return [document_text(document, i, self.rank_fields) for i, document in enumerate(self.documents)]

    def token_cap(self, window_tokens: int) -> int | None:
        return None if self.max_chunks_per_doc is None else self.max_chunks_per_doc * window_tokens


class RerankV2Request(RerankRequest):
    """Cohere v2: `max_tokens_per_doc` truncates each document to that many tokens."""

    max_tokens_per_doc: int | None = Field(None, ge=1, description="Truncate documents to this many tokens.")

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


class SearchRequest(BaseModel):
    """Retrieve (BM25 and/or dense) → fuse → rerank → cut on a named index, through `crossrank.pipeline`."""

    model_config = ConfigDict(extra="forbid")

    index: str = Field(pattern=INDEX_NAME, description="Name of an index under the server's index root.")
    query: QueryText
    k: int = Field(10, ge=1, le=1000, description="Results to return.")
    filters: dict[str, Any] | None = Field(None, description='Metadata filters, e.g. {"lang": "en"}.')
    retrievers: list[str] | None = Field(None, min_length=1, description="bm25 and/or dense (default: all).")
    first_k: int = Field(100, ge=1, le=10000, description="Candidates per retriever.")
    rerank_k: int = Field(50, ge=0, le=1000, description="Candidates the cross-encoder rescores (0: none).")
    first_stage_weight: float | None = Field(
        None, ge=0, lt=1, description="Weight of the first stage's z-scored score in the final score (default: the "
                                      "model's fusion.json; 0: the cross-encoder alone).")
    explain: bool = Field(False, description="Include the pipeline trace (candidates in/out, ms per stage).")


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


class DocumentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class IndexDocument(DocumentBody):
    id: str = Field(min_length=1, max_length=512)


class AddDocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[IndexDocument] = Field(min_length=1)
    dense: bool = Field(True, description="Only when this request creates the index: also store dense vectors.")


class IndexChange(BaseModel):
    index: str
    generation: int
    documents: int
    passages: int
