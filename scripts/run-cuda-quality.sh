#!/usr/bin/env bash
# The transformer track's quality runs (configs/quality-transformer.json) on one GPU, in under 10 minutes:
# LANES runs at a time share the GPU (`python -m vqbench.quality run --device cuda`), the whole step is cut
# at LIMIT seconds, and the tables of whatever finished are written. Run folders (log.jsonl, summary.json)
# and the tables go to OUTDIR/quality/; checkpoints (hundreds of MB each) to CHECKPOINTS (default
# /tmp/vqbench-quality-checkpoints), outside OUTDIR, so a run cut at the limit resumes on this machine only.
#
#   bash scripts/run-cuda-quality.sh OUTDIR             # on a CUDA machine
#   bash scripts/run-cuda-quality.sh OUTDIR --dry-run   # anywhere: seed 0 of every run on the CPU, tiny sizes
#   ONLY="softmax vq-K5013" bash scripts/run-cuda-quality.sh OUTDIR   # only these runs or variants
#   PLAN=configs/premise-transformer.json bash scripts/run-cuda-quality.sh OUTDIR   # another plan: the premise
#   PLAN="configs/quality-transformer.json configs/premise-transformer.json" bash ...  # several, lanes shared
# After the runs, the oracle estimates (OUTDIR/quality/oracle-PLAN.csv, --add; oracle-PLAN-BODY.csv for a
# premise body variant other than the reference) from every premise body of each plan that this machine holds
# a best.pt of, at the K of the plan's premise variants: a frozen-body head and the estimate from the same body
# come back from one session, as its checkpoints stay on the machine.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 2 ] && [ "$2" != "--dry-run" ]; }; then
    echo "usage: bash scripts/run-cuda-quality.sh OUTDIR [--dry-run]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1/quality" && cd "$1" && pwd)
DRY=${2:-}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
read -r -a PLANS <<< "${PLAN:-configs/quality-transformer.json}"

if ! "$PY" -c "import vqbench" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch, tiktoken, vqbench; print('torch', torch.__version__, 'vqbench', vqbench.__version__)"

if [ "$DRY" = "--dry-run" ]; then
    DEVICE=cpu
    LANES=2
    LIMIT=500
    ORACLE_LIMIT=600
    CHECKPOINTS=${CHECKPOINTS:-$OUT/checkpoints}
    # each plan with tiny sizes, one epoch, seed 0 of every run (and of the learning-rate sweep): every head,
    # flag and step runs once; OUTDIR/NAME.json, named as the plan so that its oracle file is too
    for index in "${!PLANS[@]}"; do
        tiny=$OUT/$(basename "${PLANS[$index]}")
        "$PY" - "${PLANS[$index]}" "$tiny" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))
flags = dict(zip(plan["common_flags"][::2], plan["common_flags"][1::2]))
flags.update({"--layers": "1", "--d-model": "64", "--heads": "2", "--bptt": "16", "--batch-size": "4",
              "--warmup": "2", "--cosine-epochs": "1", "--train-tokens": "1200", "--eval-tokens": "300",
              "--checkpoint-every": "1000", "--log-every": "5"})
plan.update(epochs=1, first=[], best_seeds={}, common_flags=[x for pair in flags.items() for x in pair])
if "lr_sweep" in plan:  # the sweep at the same tiny size: its runs, the choice and its table run once
    plan["lr_sweep"]["flags"] = ["--train-tokens", "1200", "--warmup", "2", "--cosine-epochs", "1"]
for run in plan["runs"]:
    run["seeds"] = [0] if run["seeds"] else []  # a frozen-body-only variant trains no joint run
    run["flags"] = [f if f != "500" else "3" for f in run.get("flags", [])]  # a re-assignment within the epoch
json.dump(plan, open(sys.argv[2], "w"), indent=1)
EOF
        PLANS[$index]=$tiny
    done
else
    DEVICE=cuda
    LANES=${LANES:-8}  # 8 runs of the transformer plan shared an H200 well (16 CPU cores: one each, two threads)
    LIMIT=${LIMIT:-420}
    ORACLE_LIMIT=${ORACLE_LIMIT:-120}
    CHECKPOINTS=${CHECKPOINTS:-/tmp/vqbench-quality-checkpoints}
    nvidia-smi -L
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
fi
mkdir -p "$CHECKPOINTS"

status=0
timeout --signal=INT "$LIMIT" "$PY" -m vqbench.quality run --plan "${PLANS[@]}" --results "$OUT/quality" \
    --checkpoints "$CHECKPOINTS" --device "$DEVICE" --lanes "$LANES" ${ONLY:+--only $ONLY} \
    > "$OUT/quality-run.log" 2>&1 || status=$?
if [ "$status" -eq 124 ]; then
    echo "quality run: stopped at the ${LIMIT} s limit; run the script again on this machine to resume"
elif [ "$status" -ne 0 ]; then
    tail -n 20 "$OUT/quality-run.log"
    for log in "$CHECKPOINTS"/*.stdout.log; do [ -f "$log" ] && tail -n 3 "$log"; done
    exit 1
fi

# per plan and premise body variant (default: its reference), the oracle's estimate from each body trained here
# (a best.pt in CHECKPOINTS), at the K of its premise variants, into oracle-PLAN.csv for the reference's bodies and
# oracle-PLAN-BODY.csv for another variant's (an oracle file pairs by seed: one body per seed in each)
ORACLE_END=$((SECONDS + ORACLE_LIMIT))  # one limit for all the oracle calls, so the script keeps its 10 minutes
for plan in "${PLANS[@]}"; do
    bodies=$("$PY" -c 'import sys, vqbench.quality as q; print(*q.Plan(sys.argv[1]).premise_bodies)' "$plan")
    read -r -a BODIES <<< "$bodies"
    for body in "${BODIES[@]}"; do
        mapfile -t ORACLE < <("$PY" - "$plan" "$CHECKPOINTS" "$body" <<'EOF'
import os, sys
from vqbench.heads.registry import parse_spec
from vqbench.quality import Plan
plan, checkpoints, body = Plan(sys.argv[1]), sys.argv[2], sys.argv[3]
flags = dict(zip(plan.common[::2], plan.common[1::2]))
entry = next(e for e in plan.entries if e["name"] == body)
models = [os.path.join(checkpoints, plan.planned(entry, seed).run, "best.pt") for seed in entry["seeds"]]
models = [m for m in models if os.path.exists(m)]
ks = sorted({parse_spec(e["head"])[1]["K"] for e in plan.entries if e["name"] in plan.premise})
stem = os.path.splitext(os.path.basename(sys.argv[1]))[0]
if models and ks:  # the oracle file's name first, then its arguments
    print(stem + ("" if body == plan.reference()["name"] else "-" + body) + ".csv")
    print("--vocabulary", flags.get("--vocabulary", "word"), "--K", *ks, "--model", *models, sep="\n")
EOF
        )
        left=$((ORACLE_END - SECONDS))
        if [ "${#ORACLE[@]}" -gt 0 ] && [ "$left" -le 0 ]; then
            echo "oracle: no time left of ${ORACLE_LIMIT} s for oracle-${ORACLE[0]}"
        elif [ "${#ORACLE[@]}" -gt 0 ]; then
            status=0
            ORACLE_CSV=$OUT/quality/oracle-${ORACLE[0]}
            timeout "$left" "$PY" -m vqbench.oracle "${ORACLE[@]:1}" --device "$DEVICE" --out "$ORACLE_CSV" --add \
                >> "$OUT/oracle.log" 2>&1 || status=$?
            if [ "$status" -eq 0 ]; then
                echo "oracle: $ORACLE_CSV"
            else
                tail -n 5 "$OUT/oracle.log"
                echo "oracle: stopped ($status); the runs' files are kept"
            fi
        fi
    done
done
"$PY" -m vqbench.quality table --plan "${PLANS[@]}" --results "$OUT/quality" > "$OUT/quality-table.log" 2>&1 \
    || { tail -n 5 "$OUT/quality-table.log"; exit 1; }
echo "quality: $(ls "$OUT"/quality/runs | wc -l) runs, tables in $OUT/quality"
