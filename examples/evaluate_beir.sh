#!/usr/bin/env bash
# Evaluate the reranker on a judged BEIR folder (corpus.jsonl, queries.jsonl, qrels/, runs/): here TREC DL 2020
# from ../shared/datasets (or $CROSSRANK_DATASETS), reranking its published BM25 top-100 for the first 10 queries.
# Drop --max-queries for the full set.
#     bash examples/evaluate_beir.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
datasets="${CROSSRANK_DATASETS:-$here/../../shared/datasets}"
out="${1:-eval-results/trec-dl-2020}"
crossrank eval "$datasets/trec-dl-2020" --run "$datasets/trec-dl-2020/runs/bm25-top100.trec" \
    --pipelines "run,run>>ce" --max-queries 10 --depths 10,20 --timing-queries 2 --out "$out" \
    --report "$out/report.html"
