"""Would an early-exit cascade pay on the default model? (issue 15's "fewer layers")

    python scripts/early_exit_probe.py [--dataset trec-dl-2021] [--fit-on trec-dl-2021 scifact]
                                       [--out eval-results/early-exit.json]

A cascade runs every candidate through the first L of the model's 6 layers, ranks them there with a cheap exit
head and sends only the top K through the rest; it pays when it saves a good share of the layer work and the final
top 10 stays what the full model would return. The bundled model is factorised (each document window is encoded on
its own, `crossrank.model.factorised`), so an exit head is a document vector read at layer L and compared with the
query's final vector. Heads per layer: the mean-pool of layer L as it is ("pooled"), and ridge maps to the final
vector (distillation at its cheapest: closed form, no labels, no queries) from layer L's mean-pool ("ridge:<corpora>")
or from the mean-pools of the embeddings and every layer up to L side by side ("stack:<corpora>"), fitted on the
documents of each `--fit-on` corpus alone and of all of them together. For each (L, K) it reports the share of
the full model's top 10 that survives, nDCG@10 of the cascade (survivors by the final score, the rest after them by
the exit score) against the full model's, and the share of the layer work done (token-weighted).

Reads training sets only (trec-dl-2021 and its shipped BM25 top-100 by default; scifact's train split); the fitting
reads corpus documents, never queries or judgments.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crossrank.datasets import BeirDataset, ranked
from crossrank.evaluate.corpus_index import corpus_index
from crossrank.evaluate.metrics import evaluate_run
from crossrank.model.batching import iter_batches
from crossrank.model.checkpoint import Checkpoint, resolve_model_path
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.graphs import build_graph
from crossrank.model.tokenization import EncodedRow
from crossrank.store.index import IndexConfig
from crossrank.types import Query

EXITS = (2, 3, 4, 5)
SURVIVORS = (20, 30, 40, 50, 60)
RIDGE = 1.0
DEPTH = 100


def first_stage(dataset: BeirDataset, max_queries: int | None) -> dict[str, list[str]]:
    """Each judged query's top-100 candidates: the set's shipped BM25 run, else BM25 over its corpus."""
    qids = sorted(qid for qid in dataset.qrels if qid in dataset.queries)[:max_queries]
    if "bm25-top100" in dataset.runs:
        run = dataset.run("bm25-top100")
        return {qid: ranked(run[qid])[:DEPTH] for qid in qids if qid in run}
    with corpus_index(dataset, IndexConfig(dense=False)) as index:
        hits = index.retrieve("bm25", [Query(dataset.queries[qid], qid) for qid in qids], DEPTH * 4)
    return {qid: list(dict.fromkeys(hit.doc_id for hit in found))[:DEPTH] for qid, found in zip(qids, hits,
                                                                                                 strict=True)}


def layer_means(graph: torch.nn.Module, segments: list[np.ndarray], pad_id: int) -> np.ndarray:
    """[segments, layers + 1, hidden]: the mean over real tokens of every layer's output (fp32, exact)."""
    rows = [EncodedRow(i, ids, np.zeros_like(ids)) for i, ids in enumerate(segments)]
    out = np.empty((len(segments), graph.model.config.num_hidden_layers + 1, graph.model.config.hidden_size),
                   dtype=np.float32)
    for indices, batch in iter_batches(rows, 4096, pad_id):
        ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
        with torch.inference_mode():
            states = graph.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                                 output_hidden_states=True).hidden_states
        weights = mask.unsqueeze(-1).float()
        out[indices] = torch.stack([(h * weights).sum(1) / weights.sum(1) for h in states], dim=1).numpy()
    return out


def query_segment(model: CrossEncoder, query: str) -> np.ndarray:
    """The query's segment as the factorised scorer encodes it (`[CLS] query [SEP]`)."""
    rows, _ = model.pair_encoder.encode([query], ["?"])
    return model.factorised.split(rows[0])[0]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def with_bias(features: np.ndarray) -> np.ndarray:
    return np.hstack([features, np.ones((len(features), 1), dtype=features.dtype)])


def stack(means: np.ndarray, layer: int) -> np.ndarray:
    """The mean-pools of the embeddings and of every layer up to `layer`, side by side."""
    return means[:, : layer + 1].reshape(len(means), -1)


def fit_ridge(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    design = with_bias(features)
    return np.linalg.solve(design.T @ design + RIDGE * np.eye(design.shape[1]), design.T @ targets)


def corpus_means(model: CrossEncoder, graph: torch.nn.Module, name: str, documents: int) -> np.ndarray:
    """Layer means of the windows of `documents` documents drawn at random (seed 0) from a set's corpus."""
    corpus = BeirDataset(name, "train" if name == "scifact" else "test").corpus
    ids = sorted(corpus)
    picked = np.random.default_rng(0).choice(len(ids), size=min(documents, len(ids)), replace=False)
    windows = model.document_segments([corpus[ids[i]].content for i in picked])
    segments = [segment for document in windows for segment in document]
    return layer_means(graph, segments, model.pad_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="trec-dl-2021")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-queries", type=int, default=None, help="the first N judged queries (default: all)")
    parser.add_argument("--fit-on", nargs="*", default=["trec-dl-2021", "scifact"],
                        help="corpora whose documents the ridge heads are fitted on")
    parser.add_argument("--fit-documents", type=int, default=4000, help="documents drawn from each fit corpus")
    parser.add_argument("--model", default=None, help="a factorised checkpoint (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=Path("eval-results/early-exit.json"))
    args = parser.parse_args()

    dataset = BeirDataset(args.dataset, args.split)
    candidates = first_stage(dataset, args.max_queries)
    corpus = dataset.corpus
    model = CrossEncoder.from_pretrained(args.model, backend="torch")
    if model.factorised is None:
        parser.error(f"{model.name} is not factorised: its exits would read query and document together")
    graph = build_graph(Checkpoint.open(resolve_model_path(args.model)), "segments")
    layers = graph.model.config.num_hidden_layers

    fits = {name: corpus_means(model, graph, name, args.fit_documents) for name in args.fit_on}
    if len(fits) > 1:
        fits["+".join(fits)] = np.concatenate(list(fits.values()))

    lists = []  # per query: id, candidates, each window's document and tokens, the query's and windows' layer means
    for qid, doc_ids in tqdm(candidates.items(), desc="encoding", unit="query"):
        windows = model.document_segments([corpus[doc_id].content for doc_id in doc_ids])
        segments = [segment for document in windows for segment in document]
        means = layer_means(graph, [query_segment(model, dataset.queries[qid]), *segments], model.pad_id)
        owner = np.repeat(np.arange(len(doc_ids)), [len(w) for w in windows])
        lists.append((qid, doc_ids, owner, np.array([len(s) for s in segments]), means[0], means[1:]))

    def document_scores(query: np.ndarray, documents: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
        scores = np.full(count, -np.inf)
        np.maximum.at(scores, owner, unit(documents) @ unit(query))
        return scores

    finals = {qid: document_scores(query[layers], documents[:, layers], owner, len(doc_ids))
              for qid, doc_ids, owner, _, query, documents in lists}
    qrels = {qid: dataset.qrels[qid] for qid in finals}  # the measure averages over every query it is given
    full = evaluate_run(qrels, {qid: dict(zip(doc_ids, finals[qid].tolist(), strict=True))
                                for qid, doc_ids, *_ in lists})["nDCG@10"]
    results = {"dataset": f"{args.dataset}/{args.split}", "queries": len(lists), "full_ndcg@10": round(full, 4),
               "fit_on": args.fit_on, "fit_documents": args.fit_documents, "exits": []}
    print(f"{args.dataset}/{args.split}: {len(lists)} queries, full model nDCG@10 {full:.4f}")
    print(f"{'exit':>4} {'head':>30} {'K':>3} {'work':>5} {'top-10 kept':>11} {'nDCG@10':>8} {'delta':>7}")
    for layer in EXITS:
        heads = {"pooled": lambda d, layer=layer: d[:, layer]}
        for name, means in fits.items():
            weights = fit_ridge(means[:, layer], unit(means[:, layers]))
            heads[f"ridge:{name}"] = lambda d, layer=layer, w=weights: with_bias(d[:, layer]) @ w
            stacked = fit_ridge(stack(means, layer), unit(means[:, layers]))
            heads[f"stack:{name}"] = lambda d, layer=layer, w=stacked: with_bias(stack(d, layer)) @ w
        for head, project in heads.items():
            for survivors in SURVIVORS:
                kept, cascade, work = [], {}, []
                for qid, doc_ids, owner, tokens, query, documents in lists:
                    early = document_scores(query[layers], project(documents), owner, len(doc_ids))
                    alive = np.zeros(len(doc_ids), dtype=bool)
                    alive[np.argsort(-early)[:survivors]] = True
                    kept.append(alive[np.argsort(-finals[qid])[:10]].mean())
                    # survivors first by the final score, the rest after them by the exit score
                    score = np.where(alive, 10 + finals[qid], early - 10)
                    cascade[qid] = dict(zip(doc_ids, score.tolist(), strict=True))
                    work.append((layer * tokens.sum() + (layers - layer) * tokens[alive[owner]].sum())
                                / (layers * tokens.sum()))
                ndcg = evaluate_run(qrels, cascade)["nDCG@10"]
                row = {"exit_layer": layer, "head": head, "survivors": survivors,
                       "work": round(float(np.mean(work)), 3), "top10_kept": round(float(np.mean(kept)), 3),
                       "ndcg@10": round(ndcg, 4), "delta": round(ndcg - full, 4)}
                results["exits"].append(row)
                print(f"{layer:>4} {head:>30} {survivors:>3} {row['work']:>5.2f} {row['top10_kept']:>11.3f} "
                      f"{ndcg:>8.4f} {ndcg - full:>+7.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
