#!/bin/bash
# The issue-6 experiments, end to end, through the CLI: feature logs (the cross-encoder in its own pass, joined),
# LambdaMART from judgments, and from simulated clicks (naive vs IPS, ± clipping, ± dwell), 3 seeds each.
# Usage: scripts/ltr_experiments.sh WORKDIR [dl|scifact]...   (needs $CROSSRANK_DATASETS or ../shared/datasets)
# Cost on 2 cores: DL ~40 min of feature logging; SciFact ~1.5 h (bi-encoder over 81k train rows + CE top 20).
set -euo pipefail
W=$1; shift; mkdir -p "$W"
SEEDS=${SEEDS:-"1 2 3"}

features() {  # SPLIT RUN CE_DEPTH OUT_PREFIX: bm25/dense/fusion features, then CE features, joined
  local split=$1 run=$2 ce_depth=$3 out=$4 run_flag=()
  [ "$run" != "-" ] && run_flag=(--run "$run")
  [ -f "$out.all.tsv" ] && return
  crossrank ltr features "$split" "${run_flag[@]}" --model none --out "$out.nolm.tsv"
  crossrank ltr features "$split" "${run_flag[@]}" --model default --no-dense --ce-depth "$ce_depth" --out "$out.ce.tsv"
  crossrank ltr join "$out.nolm.tsv" "$out.ce.tsv" --out "$out.all.tsv"
}

judged_and_clicks() {  # NAME TRAIN TEST QRELS ALL_K K [extra ltr options]: all features on the top ALL_K;
  # judged vs click labels on the top K shown to the simulated users
  local name=$1 train=$2 test=$3 qrels=$4 all_k=$5 k=$6; shift 6
  for s in $SEEDS; do
    crossrank ltr train -f "$train.all.tsv" --test "$test.all.tsv" --qrels "$qrels" --top-k "$all_k" --seed "$s" "$@" \
      --json "$W/$name-all-s$s.json" > "$W/$name-all-s$s.log"
    crossrank ltr train -f "$train.nolm.tsv" --test "$test.nolm.tsv" --qrels "$qrels" --top-k "$k" --seed "$s" "$@" \
      --json "$W/$name-judged-s$s.json" > "$W/$name-judged-s$s.log"
    [ -f "$W/$name-clicks-s$s.jsonl" ] || crossrank clicks simulate -f "$train.nolm.tsv" --out "$W/$name-clicks-s$s.jsonl" \
      --user pbm --sessions 1000 --depth "$k" --logging bm25 --swap-prob 0.3 --noise 0.1 --seed "$s"
    for mode in naive ips ipsclip naivedwell ipsdwell; do
      case $mode in naive) f=(--no-debias);; ips) f=(--debias);; ipsclip) f=(--debias --max-weight 10);;
                    naivedwell) f=(--no-debias --dwell 30);; ipsdwell) f=(--debias --dwell 30);; esac
      crossrank clicks train -f "$train.nolm.tsv" --log "$W/$name-clicks-s$s.jsonl" "${f[@]}" --test "$test.nolm.tsv" \
        --qrels "$qrels" --top-k "$k" --seed "$s" "$@" --json "$W/$name-$mode-s$s.json" > "$W/$name-$mode-s$s.log"
    done
  done
}

sets=("$@"); [ ${#sets[@]} -eq 0 ] && sets=(dl scifact)
for set in "${sets[@]}"; do
  case $set in
    dl) features trec-dl-2021:test bm25-top100 100 "$W/dl21"; features trec-dl-2020:test bm25-top100 100 "$W/dl20"
        judged_and_clicks dl "$W/dl21" "$W/dl20" trec-dl-2020:test 100 20 --leaves 7 --min-data-in-leaf 50;;
    scifact) features scifact:train - 20 "$W/sf-train"; features scifact:test - 20 "$W/sf-test"
             judged_and_clicks sf "$W/sf-train" "$W/sf-test" scifact:test 20 20;;
    *) echo "unknown set $set (dl, scifact)" >&2; exit 2;;
  esac
done
echo "results: $W/*.json (systems → mean and per-query nDCG@10, paired tests vs the baseline)"
