#!/usr/bin/env bash
# Training speed of candidate transformer-track sizes on this machine, to choose the plan's size before any
# long run (issue 31: a softmax epoch of WikiText-2 in cl100k_base in about 30 minutes, the output layer
# most of the parameters). Each candidate trains STEPS steps of 16 x 128 tokens from scratch (bf16 autocast
# where the CPU has it) and reports tokens/s and the output layer's share of a step; the minutes per epoch
# follow from the training split's token count. Adds its rows to results/quality/transformer-size.csv (every
# earlier measurement kept) and rewrites transformer-size.md from it, one table per measurement.
# Run on a quiet machine: no training, tests or benchmark at the same time. About 15 minutes.
#
# PLAN=configs/quality-transformer.json bash scripts/size-transformer.sh: instead of the candidate sizes, every
# variant of that plan at the plan's size, flags and swept rate (seed 0), to results/quality/transformer-speed.*:
# each head's tokens/s and output share on a quiet CPU, for plans whose runs trained on a shared GPU. A learned
# map's re-assignments (every 500 steps) fall outside the STEPS steps. About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-40}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
SPEED=(--eval-tokens 2048 --log-every 10 --checkpoint-every 100000 --steps "$STEPS")
COMMON=(--body gpt --vocabulary cl100k_base --heads 4 --bptt 128 --dropout 0.1 --batch-size 16 --optimizer adamw
        --lr 0.001 --weight-decay 0.1 --warmup 10 --clip 1.0 --autocast auto "${SPEED[@]}")
# label | head | layers | d | threads
CANDIDATES=("softmax|softmax|4|256|2" "softmax|softmax|4|192|2" "softmax|softmax|4|128|2"
            "softmax|softmax|4|128|1" "softmax:chunk=4096|softmax:chunk=4096|4|128|2" "vq-K5013|vq:K=5013|4|128|2")
NAME=transformer-size
if [ -n "${PLAN:-}" ]; then
    NAME=transformer-speed
    # one line per variant with seeds: its name, then vqbench.train's arguments (the plan's, its flags, its rate)
    mapfile -t VARIANTS < <(python - "$PLAN" <<'PY'
import os, shlex, sys
from vqbench.quality import DEFAULT_RESULTS, Plan
plan = Plan(sys.argv[1])
runs = os.path.join(DEFAULT_RESULTS, "runs")
for entry in (e for e in plan.entries if e["seeds"]):
    rate = plan.chosen_lr(entry, runs) if plan.swept(entry) else ""
    if rate is None:
        sys.exit(f"PLAN: {entry['name']}'s learning rate is not swept yet")
    run = plan.planned(entry, 0, rate)
    print(entry["name"], shlex.join(["--head", run.head, *plan.common, *run.flags]))
PY
)
    for variant in "${VARIANTS[@]}"; do
        label=${variant%% *}
        eval "args=(${variant#* })"
        python -m vqbench.train "${args[@]}" "${SPEED[@]}" --out "$scratch/$label" > "$scratch/$label.log" 2>&1 \
            || { cat "$scratch/$label.log"; exit 1; }
        echo "$label: done" >&2
    done
else
    for candidate in "${CANDIDATES[@]}"; do
        IFS='|' read -r label head layers d threads <<< "$candidate"
        out="$scratch/$label-$layers-$d-$threads"
        python -m vqbench.train --head "$head" --layers "$layers" --d-model "$d" --threads "$threads" \
            "${COMMON[@]}" --out "$out" > "$out.log" 2>&1 || { cat "$out.log"; exit 1; }
        echo "$label $layers x $d, $threads threads: done" >&2
    done
fi
python -m vqbench.reporting.speed_table "$scratch" "$STEPS" "$NAME" "${PLAN:-}"
