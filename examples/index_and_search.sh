#!/usr/bin/env bash
# Index a folder (Markdown, text, HTML, PDF, JSONL/CSV) and search it: BM25 + dense, fused, reranked.
#     bash examples/index_and_search.sh [INDEX_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
index="${1:-example-index}"
crossrank index "$index" --from "$here/docs"
crossrank search "$index" "how are long documents scored" --top-k 3
crossrank search "$index" "vaccines" --top-k 2 --filter lang=en --format json
