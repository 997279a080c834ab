#!/usr/bin/env bash
# Fine-tune the default cross-encoder on judgments (a BEIR folder with qrels and candidates: trec-dl-2021, a
# training set, from ../shared/datasets or $CROSSRANK_DATASETS), then compare it with the bundled model on
# TREC DL 2020's first 10 queries. A real run wants hundreds of steps; this one shows the mechanics.
#     bash examples/fine_tune.sh [MODEL_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
datasets="${CROSSRANK_DATASETS:-$here/../../shared/datasets}"
model="${1:-models/dl21-ce}"
crossrank train --train "$datasets/trec-dl-2021:test" --steps 4 --lists-per-step 4 --group-size 4 \
    --eval-every 2 --no-calibrate --out "$model"
crossrank eval "$datasets/trec-dl-2020" --run "$datasets/trec-dl-2020/runs/bm25-top100.trec" \
    --pipelines "run,run>>ce:default,run>>ce:$(basename "$model")" -m default -m "$model" \
    --max-queries 10 --no-curve --timing-queries 1
