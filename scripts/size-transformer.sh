#!/usr/bin/env bash
# Training speed of candidate transformer-track sizes on this machine, to choose the plan's size before any
# long run (issue 31: a softmax epoch of WikiText-2 in cl100k_base in about 30 minutes, the output layer
# most of the parameters). Each candidate trains STEPS steps of 16 x 128 tokens from scratch (bf16 autocast
# where the CPU has it) and reports tokens/s and the output layer's share of a step; the minutes per epoch
# follow from the training split's token count. Writes results/quality/transformer-size.{csv,md}.
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
python - "$scratch" "$STEPS" "$NAME" "${PLAN:-}" <<'PY'
import csv, glob, json, os, sys
from tabulate import tabulate
from vqbench.training.data import load_corpus
scratch, steps, name, plan = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
train_tokens = load_corpus(vocabulary="cl100k_base").ids["train"].numel()
rows = []
for path in sorted(glob.glob(os.path.join(scratch, "*", "summary.json")), key=os.path.getmtime):
    s = json.load(open(path))
    c = s["config"]
    rows.append({**({"variant": os.path.basename(os.path.dirname(path))} if plan else {}),
                 "head": c["head"], "tied": bool(c.get("tie_embeddings")), "layers": c["layers"], "d": c["d_model"], "threads": s["threads"],
                 "steps": steps, "tokens_per_s": round(s["tokens_per_s"], 1),
                 "minutes_per_epoch": round(train_tokens / s["tokens_per_s"] / 60, 1),
                 "output_share": round(s["output_share"], 3), "output_params": s["output_params"],
                 "total_params": s["total_params"], "autocast": s["autocast"], "cpu_model": s["cpu_model"],
                 "torch_version": s["torch_version"], "git_commit": s["git_commit"]})
if plan:  # each variant's speed against the plan's reference, measured in this one run
    reference = rows[0]["tokens_per_s"]
    for r in rows:
        r["speed_vs_first"] = round(r["tokens_per_s"] / reference, 2)
with open(f"results/quality/{name}.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
first = rows[0]
what = (f"each variant of `{plan}` at its size, flags and swept rate (the first row is its reference; "
        "speed_vs_first: tokens/s over the first row's; a learned map's re-assignments, every 500 steps, fall "
        "outside the steps timed)" if plan else "candidate sizes")
command = f"PLAN={plan} bash scripts/size-transformer.sh" if plan else "bash scripts/size-transformer.sh"
with open(f"results/quality/{name}.md", "w") as f:
    f.write(f"# Transformer track: training speed, {what}\n\nMeasured by `{command}` "
            f"({steps} steps of 16 x 128 tokens from scratch per row, the first steps included; "
            f"{first['cpu_model']}, torch {first['torch_version']}, autocast {first['autocast']}, commit "
            f"{first['git_commit']}), on a quiet machine. Minutes per epoch: the {train_tokens:,} training "
            f"tokens of WikiText-2 in cl100k_base over tokens/s. Output share: the head's loss forward and "
            f"backward over a whole step, timed on some steps.\n\n")
    f.write(tabulate([{k: v for k, v in r.items() if k not in ("cpu_model", "torch_version", "git_commit",
                                                                "autocast")} for r in rows],
                     headers="keys", tablefmt="github") + "\n")
print(f"results/quality/{name}.md")
PY
