#!/usr/bin/env bash
# The GPU job that trained crossrank-minilm-l6-v1: teacher scores, four recipe variants side by side on one GPU
# (selection by trec-dl-2020 nDCG@10), then a short scifact-train adaptation of the winner scored on scifact test.
# Inputs (prepared on CPU by `train_default_model.py prepare --scifact`): $DATA, base weights in $BASE.
# Usage: DATA=.gpu/data BASE=.gpu/base OUT=out MINUTES=5 bash scripts/default_model_gpu_job.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
S=scripts/train_default_model.py; W=${WORK:-/tmp/crossrank-job}; mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
[ -n "${SKIP_TEACH:-}" ] || python3 $S teach --data "$DATA" --teacher "$BASE" --device "${DEVICE:-cuda}" || exit 1
common=(--data "$DATA" --base "$BASE" --device "${DEVICE:-cuda}" --steps 100000 --max-minutes "$MINUTES" --eval-every 200
        --lists-per-step 64 --group-size 16 --max-length 256 ${EXTRA:-})
python3 $S train "${common[@]}" --out "$W/A" > "$W/A.log" 2>&1 &                        # KL(ensemble) + listwise labels
python3 $S train "${common[@]}" --out "$W/B" --label-loss '' > "$W/B.log" 2>&1 &        # KL(ensemble) only
python3 $S train "${common[@]}" --out "$W/C" --lr 6e-5 > "$W/C.log" 2>&1 &              # A with a 2x learning rate
python3 $S train "${common[@]}" --out "$W/D" --first-stage-weight 0 > "$W/D.log" 2>&1 & # A, bi-encoder-only teacher
wait
for v in A B C D; do echo "== $v"; grep -h "dev nDCG\|budget\|Error\|error" "$W/$v.log" | tail -40; done
best=$(python3 -c "
import json,sys
r={v: json.load(open('$W/'+v+'/training.json'))['best_dev_ndcg@10'] or 0 for v in 'ABCD'}
print(max(r, key=r.get))")
echo "best variant: $best"
python3 -c "
import json
json.dump({v: json.load(open('$W/'+v+'/training.json')) for v in 'ABCD'}, open('$OUT/variants.json','w'), indent=1)"
cp "$W/$best/config.json" "$OUT/config.json"
(cd "$W/$best" && split -b 15M -d model.safetensors "$OUT/model.safetensors.part")
sha256sum "$W/$best/model.safetensors"
python3 $S train --data "$DATA" --base "$W/$best" --device "${DEVICE:-cuda}" --lists scifact-train.jsonl.gz \
  --dev scifact-test.jsonl.gz --dev-qrels scifact-test-qrels.json --dev-name scifact:test --teacher-loss '' \
  --labelled-fraction 1 --lists-per-step 32 --group-size 16 --max-length 256 --lr 1e-5 --head-lr 1e-5 \
  --steps 100000 --max-minutes "${SCIFACT_MINUTES:-1}" --eval-every 40 ${EXTRA:-} --out "$W/scifact" 2>&1 | grep -v Warning | tail -30
cp "$W/scifact/training.json" "$OUT/scifact-adaptation.json"
