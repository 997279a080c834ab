#!/usr/bin/env bash
# Evaluate first stages and the reranker on a judged BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv).
#     bash examples/evaluate_beir.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-eval-results/tiny-beir}"
crossrank eval "$here/data/tiny-beir" --split test --pipelines "bm25,hybrid,hybrid>>ce" \
    --depths 5,10,20 --timing-queries 2 --out "$out" --report "$out/report.html"
