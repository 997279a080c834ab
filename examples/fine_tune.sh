#!/usr/bin/env bash
# Fine-tune the default cross-encoder on your own judgments (a BEIR folder with qrels/train.tsv), then compare
# it with the bundled model on the test split. A real run wants hundreds of steps; this one shows the mechanics.
#     bash examples/fine_tune.sh [MODEL_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="${1:-models/tiny-beir-ce}"
crossrank train --train "$here/data/tiny-beir:train" --steps 4 --lists-per-step 4 --group-size 4 \
    --eval-every 2 --no-calibrate --out "$model"
crossrank eval "$here/data/tiny-beir" --pipelines "bm25,bm25>>ce:default,bm25>>ce:$(basename "$model")" \
    -m default -m "$model" --no-curve --timing-queries 1
