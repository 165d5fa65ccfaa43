#!/bin/sh
# The steering benchmark of docs/results/steering_bench/README.md, one pair per run so that
# each finished pair is complete on its own (rerun the same line to resume an interrupted pair).
# Inputs: the demo's scan setup (8 languages, 4,096 train tokens each) with sums, residual means
# and 32-bin histograms, and LAPE neurons identified on it. 30 prompts per pair and 3 random sets
# per neuron condition (mean and add) kept the grid to an hour on the shared 2-core CPU.
set -e
OUT=${OUT:-docs/results/steering_bench}
WORK=${WORK:-/tmp/steering_bench}
mkdir -p "$WORK"
export OMP_NUM_THREADS=1
[ -f "$WORK/scan.safetensors" ] || langneuron scan --model gemma-3-270m \
    --corpus debian-handbook --languages en,fr,de,es,it,ru,ja,zh --split train \
    --tokens-per-language 4096 --sums --residual-means --hist 32 --out "$WORK/scan.safetensors"
[ -f "$WORK/neurons_lape.json" ] || langneuron identify --method lape \
    --out "$WORK/neurons_lape.json" "$WORK/scan.safetensors"
for pair in en:fr en:ru fr:de en:zh; do
    dir="$OUT/$(echo "$pair" | tr : _)"
    [ -f "$dir/steer_bench.json" ] && continue
    resume=""; [ -f "$dir/steer_bench.partial.jsonl" ] && resume="--resume"
    langneuron steer-bench --model gemma-3-270m --stats "$WORK/scan.safetensors" \
        --neurons "$WORK/neurons_lape.json" --pairs "$pair" --prompts 30 \
        --methods deactivate,mean,median,add,scale,diffmean \
        --strengths add=1,2,4 --strengths scale=2,4,8 --strengths diffmean=2,4,8 \
        --diffmean-layers "6;9" --random-sets 3 --random-methods mean,add \
        --max-new-tokens 16 --batch-size 64 --out-dir "$dir" --no-progress $resume
done
python docs/results/steering_bench/combine.py "$OUT"          # all pairs: table, plot, summary.md
python docs/results/steering_bench/target_activity.py "$WORK"  # target neurons on source text
