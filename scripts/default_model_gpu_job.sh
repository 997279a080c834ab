#!/usr/bin/env bash
# The default model's recipe (scripts/train_default_model.py) as one GPU job, for when a GPU is lent: teacher
# scores where missing, four variants side by side on the GPU for $MINUTES each, selection of the best by
# trec-dl-2021 nDCG@10 (the selection lists; trec-dl-2020, SciFact test and NPL are never read), then calibration
# and adapt.json fitted on trec-dl-2021 and fusion.json on trec-dl-2021 + SciFact train. Prepare on CPU first
# (4 s, needs the datasets):
#   python scripts/train_default_model.py prepare --out .gpu/data --pseudo 5000
# Usage: DATA=.gpu/data OUT=out MINUTES=10 bash scripts/default_model_gpu_job.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
S=scripts/train_default_model.py; W=${WORK:-/tmp/crossrank-job}; mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 $S teach --data "$DATA" || exit 1          # cached: only the teachers a list lacks are computed
python3 $S fit --data "$DATA" || exit 1
common=(--data "$DATA" --device "${DEVICE:-cuda}" --steps 100000 --max-minutes "$MINUTES" --eval-every 100
        --select-depth 100 --lists-per-step 64 --group-size 16 --max-length 256 ${EXTRA:-})
python3 $S train "${common[@]}" --out "$W/A" --lr 4e-5 --temperature 0.5 > "$W/A.log" 2>&1 &   # the CPU recipe
python3 $S train "${common[@]}" --out "$W/B" --lr 2e-5 --temperature 0.5 > "$W/B.log" 2>&1 &   # half the rate
python3 $S train "${common[@]}" --out "$W/C" --lr 4e-5 --temperature 1.0 > "$W/C.log" 2>&1 &   # softer teacher
python3 $S train "${common[@]}" --out "$W/D" --lr 4e-5 --temperature 0.5 --head-lr 1e-2 > "$W/D.log" 2>&1 &  # gates open faster
wait
for v in A B C D; do echo "== $v"; grep -h "dev nDCG\|budget\|Error\|error" "$W/$v.log" | tail -40; done
best=$(python3 -c "
import json
r={v: json.load(open('$W/'+v+'/training.json'))['best_dev_ndcg@10'] or 0 for v in 'ABCD'}
print(max(r, key=r.get))")
echo "best variant by trec-dl-2021: $best"
python3 -c "
import json
json.dump({v: json.load(open('$W/'+v+'/training.json')) for v in 'ABCD'}, open('$OUT/variants.json','w'), indent=1)"
rm -f "$W/$best/trainer_state.pt"
python3 $S finalize --data "$DATA" --model "$W/$best" || exit 1
python3 $S fusion --data "$DATA" --model "$W/$best" || exit 1
cp -r "$W/$best" "$OUT/model"
sha256sum "$OUT/model/model.safetensors"
