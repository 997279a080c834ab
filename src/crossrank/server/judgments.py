"""Judgments over HTTP: record graded relevance for (query, document) pairs of a named index, read them back,
export them as TREC qrels, and evaluate pipelines against them. Storage is `crossrank.judgments` (append-only
files in the index directory); the evaluation runs the same stages as /search and the measures and paired tests
of `crossrank.evaluate`, so a team's own judgments feed the same loop as a shipped benchmark."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from crossrank.judgments import JudgmentStore
from crossrank.pipeline import Collapse
from crossrank.server.auth import require_api_key
from crossrank.server.indexes import IndexName, blocking, pipeline_for, registry
from crossrank.server.schemas import NOT_BLANK, PipelineSpec, QueryText, RequestBody
from crossrank.types import Query as PipelineQuery

JUDGE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_EVALUATED_QUERIES = 1000


class JudgmentIn(RequestBody):
    judge: str = Field(pattern=JUDGE_NAME, description="Who judged (letters, digits, '_', '.', '-').")
    query: QueryText
    doc_id: str = Field(min_length=1, max_length=512, pattern=NOT_BLANK, description="A document of the index.")
    passage_id: str | None = Field(None, max_length=1024, description="The passage the judge saw (optional).")
    grade: int = Field(ge=0, le=2, description="0 not relevant, 1 partly, 2 relevant.")


class JudgmentOut(BaseModel):
    judge: str
    query: str
    query_id: str
    doc_id: str
    passage_id: str | None = None
    grade: int
    time: str


class JudgmentList(BaseModel):
    judgments: list[JudgmentOut]
    judges: list[str]


class NamedPipeline(PipelineSpec):
    name: str = Field(min_length=1, max_length=64, description="How the results name it (a repeated name gets a "
                                                               "' #2' suffix).")


class EvaluationRequest(RequestBody):
    pipelines: list[NamedPipeline] = Field(min_length=1, max_length=8, description="The first is the baseline the "
                                                                                   "others are tested against.")
    judge: str | None = Field(None, pattern=JUDGE_NAME, description="Only this judge's grades (default: all "
                                                                    "judges, combined by the low median).")
    measures: list[str] = Field(["nDCG@10", "RR@10", "R@100"], min_length=1, max_length=8,
                                description="ir-measures names; the first is the primary.")
    depth: int = Field(100, ge=1, le=1000, description="Passages each pipeline returns per query (collapsed to "
                                                       "documents, best passage first).")
    permutations: int = Field(2000, ge=100, le=20000, description="Randomisation-test permutations.")


class EvaluationOut(BaseModel):
    index: str
    judge: str | None
    queries: int
    measures: list[str]
    baseline: str
    systems: list[dict[str, Any]]
    tests: dict[str, dict[str, float | int | None]]
    query_text: dict[str, str]


def judgment_out(judgment: Any) -> JudgmentOut:
    return JudgmentOut(**judgment.to_dict())


def judgments_router() -> APIRouter:
    from crossrank.server.app import error_responses

    router = APIRouter(tags=["judgments"], dependencies=[Depends(require_api_key)],
                       responses=error_responses(400, 401, 404, 409, 413, 422, 500, 503))

    @router.get("/indexes/{name}/judgments")
    async def list_judgments(request: Request, name: str = IndexName,
                             query: Annotated[str | None, Query(max_length=10000)] = None,
                             judge: Annotated[str | None, Query(pattern=JUDGE_NAME)] = None) -> JudgmentList:
        """The latest grade per (judge, query, document), optionally for one query text and/or one judge."""
        store = JudgmentStore(registry(request).path(name))
        async with registry(request).lease(name):
            judgments = await blocking(store.judgments, judge, query)
            judges = await blocking(store.judges)
        return JudgmentList(judgments=[judgment_out(j) for j in judgments], judges=judges)

    @router.post("/indexes/{name}/judgments", status_code=201)
    async def record_judgment(body: JudgmentIn, request: Request, name: str = IndexName) -> JudgmentOut:
        """Record one grade (appended with a timestamp and synced to disk before the answer; a later grade for the
        same judge, query and document supersedes it). 404 when the document is not in the index."""
        async with registry(request).lease(name) as index:
            if not await blocking(index.passages, body.doc_id):
                raise HTTPException(404, f"no document {body.doc_id!r} in index {name!r}")
            store = JudgmentStore(index.path)
            judgment = await blocking(store.record, body.judge, body.query, body.doc_id, body.grade,
                                      body.passage_id)
        return judgment_out(judgment)

    @router.get("/indexes/{name}/judgments/qrels", response_model=None,  # errors stay JSON, as everywhere
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                 "description": "TREC qrels lines."}})
    async def export_qrels(request: Request, name: str = IndexName,
                           judge: Annotated[str | None, Query(pattern=JUDGE_NAME)] = None) -> PlainTextResponse:
        """The judgments as TREC qrels (`query-id 0 doc-id grade`), for trec_eval, ir-measures or `crossrank eval`."""
        async with registry(request).lease(name) as index:
            text = await blocking(JudgmentStore(index.path).trec_text, judge)
        return PlainTextResponse(text, headers={"Content-Disposition": f'attachment; filename="{name}-qrels.txt"'})

    @router.post("/indexes/{name}/judgments/evaluate")
    async def evaluate(body: EvaluationRequest, request: Request, name: str = IndexName) -> EvaluationOut:
        """Run each pipeline over every judged query of the index and measure it against the judgments: means,
        per-query values and a paired randomisation test (Holm-corrected) of each pipeline against the first."""
        async with registry(request).lease(name) as index:
            texts, qrels = await blocking(JudgmentStore(index.path).qrels, body.judge)
            if not qrels:
                raise HTTPException(409, f"index {name!r} has no judgments{' by ' + body.judge if body.judge else ''}"
                                         " yet: judge some results first")
            if len(qrels) > MAX_EVALUATED_QUERIES:
                raise HTTPException(413, f"{len(qrels)} judged queries; this endpoint evaluates at most "
                                         f"{MAX_EVALUATED_QUERIES} — use `crossrank eval INDEX --qrels judgments`")
            queries = [PipelineQuery(text=texts[qid], id=qid) for qid in sorted(qrels)]
            runs = {}
            for spec in body.pipelines:
                system = unique_name(spec.name, runs)
                pipeline = pipeline_for(request, index, spec, k=body.depth) >> Collapse()
                results = await blocking(pipeline.run, queries)
                runs[system] = (repr(pipeline), {
                    query.id: {c.doc_id: float(len(result.candidates) - rank)
                               for rank, c in enumerate(result.candidates)}
                    for query, result in zip(queries, results, strict=True)})
        return await asyncio.to_thread(measure, name, body, texts, qrels, runs)

    return router


def unique_name(name: str, taken: dict[str, Any]) -> str:
    suffix = 2
    unique = name
    while unique in taken:
        unique, suffix = f"{name} #{suffix}", suffix + 1
    return unique


def measure(name: str, body: EvaluationRequest, texts: dict[str, str], qrels: dict[str, dict[str, int]],
            runs: dict[str, tuple[str, dict[str, dict[str, float]]]]) -> EvaluationOut:
    from crossrank.evaluate.metrics import aggregate, per_query
    from crossrank.evaluate.significance import compare_all

    try:
        values = {system: per_query(qrels, run, body.measures) for system, (_, run) in runs.items()}
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    baseline, primary = next(iter(runs)), body.measures[0]
    tests = compare_all({system: by[primary] for system, by in values.items()}, baseline, body.permutations)
    return EvaluationOut(
        index=name, judge=body.judge, queries=len(qrels), measures=body.measures, baseline=baseline,
        systems=[{"name": system, "pipeline": pipeline, "means": aggregate(values[system]),
                  "per_query": values[system]} for system, (pipeline, _) in runs.items()],
        tests={system: {key: None if math.isnan(value) else value for key, value in test.to_dict().items()}
               for system, test in tests.items()},  # a p-value over one query is NaN: JSON has null
        query_text={qid: texts[qid] for qid in qrels})
