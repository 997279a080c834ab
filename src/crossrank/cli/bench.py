"""`crossrank bench`: rerank speed and int8 fidelity of the engine on this machine."""

from __future__ import annotations

import json
import os
import platform
from typing import Annotated

import typer

from crossrank.cli.app import app
from crossrank.cli.common import JsonOption, ModelOption, ThreadsOption, fail


@app.command()
def bench(
    model: ModelOption = None,
    dataset: Annotated[str | None, typer.Option(help="BEIR DATASET[:split] whose run to rerank (default: "
                                                     "synthetic text, no data needed).")] = None,
    run: Annotated[str | None, typer.Option(help="Shipped run name or TREC run file (with --dataset).")] = None,
    queries: Annotated[int, typer.Option(min=1, help="Queries to rerank.")] = 10,
    candidates: Annotated[int, typer.Option(min=1, help="Candidates per query.")] = 100,
    document_words: Annotated[int, typer.Option(min=1, help="Synthetic document length in words.")] = 60,
    variants: Annotated[str, typer.Option(help="Comma-separated: torch, onnx, onnx-int8, torch-bf16; the first is the "
                                               "reference for speed-up and τ.")] = "torch,onnx,onnx-int8,torch-bf16",
    repeats: Annotated[int, typer.Option(min=1, help="Passes over the queries per variant (median).")] = 3,
    threads: ThreadsOption = None,
    batch_tokens: Annotated[int | None, typer.Option(help="Token budget per forward pass.")] = None,
    json_out: JsonOption = None,
) -> None:
    """Rerank the same candidates with each backend: pairs/s, per-query latency, load time, τ vs reference."""
    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    from crossrank.bench import dataset_input, run_bench, synthetic_input
    from crossrank.model.checkpoint import Checkpoint
    from crossrank.model.tokenization import load_tokenizer

    names = [v.strip() for v in variants.split(",") if v.strip()]
    try:
        if dataset is not None:
            data = dataset_input(dataset, run, queries, candidates)
        else:
            tokenizer, _ = load_tokenizer(Checkpoint.open(model).path)
            data = synthetic_input(list(tokenizer.get_vocab()), queries, candidates, document_words=document_words)
        with tqdm(total=len(names) * repeats * len(data.queries), unit="query", desc="bench") as bar:
            results = run_bench(data, model, names, repeats, threads, batch_tokens, on_query=bar.update)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise fail(str(exc)) from exc

    table = Table(title=f"rerank speed: {data.source}, {data.pairs} pairs, {repeats} repeats")
    for column in ("variant", "pairs/s", "× first", "p50 ms/query", "p95 ms/query", "load s", "τ vs first"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in results:
        table.add_row(r.variant, f"{r.pairs_per_second:.1f}", f"{r.speedup_vs_reference:.2f}", f"{r.p50_ms:.0f}",
                      f"{r.p95_ms:.0f}", f"{r.load_seconds:.1f}", f"{r.tau_vs_reference:.3f}")
    Console().print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({
            "input": data.source, "pairs": data.pairs, "repeats": repeats, "model": model or "default",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
            "results": [r.to_dict() for r in results]}, indent=2), encoding="utf-8")
