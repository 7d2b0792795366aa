#!/usr/bin/env bash
# The CUDA rows, in one run of under 8 minutes on one GPU; every stage resumes what an earlier, interrupted run
# left in OUTDIR, so a second run finishes the first:
#   0. peers      liger-kernel and cut-cross-entropy (pure Python) installed from the wheels in wheels/ (git-ignored,
#                 carried with the working tree: the GPU machine has no network), into a temporary folder; the
#                 machine's torch brings triton. Fetch them on a machine with network:
#                   pip download --no-deps -d wheels liger-kernel cut-cross-entropy packaging
#   1. self-check the logits GEMM at V=50257 vs 50304 in bf16, fp32 and tf32 (python -m vqbench.gpu_check),
#                 OUTDIR/cuda-selfcheck.{md,json}; at most 2 minutes
#   2. headline   V=50257, d=1024, K=1024, N=2048: every head, softmax and low-rank also padded to a multiple of 64,
#                 vq also with bias, every peer; bfloat16, then tf32, then float32; ops logits, log_probs, loss,
#                 train, decode (CUDA peak memory in the rows); then which peers ran
#   3. sweep      V in {10000, 50257, 128000, 256000} x d in {1024, 4096} x K in {256, 1024, 4096} x
#                 N in {64, 2048, 8192}, the same heads but the torch.compile peers (they recompile for every
#                 shape) and ops, bfloat16 first, a 0.5 s per-call time guard;
#                 cut where the 8 minutes end (a rerun resumes it)
# Rows go to OUTDIR/cuda-*.csv (the long format of `python -m vqbench.compare`, GPU name in every row), tables
# to OUTDIR/cuda-*.md, each stage's machine-load record to OUTDIR/cuda-*.load.jsonl: 8 files, what a lent machine
# sends back. Each stage's own output goes to a temporary folder; its last line (its tail when it fails) is
# printed.
#
#   bash scripts/run-cuda.sh OUTDIR             # on a CUDA machine
#   bash scripts/run-cuda.sh OUTDIR --dry-run   # anywhere: the same stages on the CPU, on a tiny grid
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 2 ] && [ "$2" != "--dry-run" ]; }; then
    echo "usage: bash scripts/run-cuda.sh OUTDIR [--dry-run]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
DRY=${2:-}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
left() { echo $(( LIMIT - (SECONDS - START) )); }

# 0. peers from the carried wheels, only those the machine lacks; vqbench from this working tree; the machine's
# own torch (never a pip download)
PEERS=$(mktemp -d)
LOGS=$(mktemp -d)
trap 'rm -rf "$PEERS" "$LOGS"' EXIT
for module in liger_kernel cut_cross_entropy packaging; do
    "$PY" -c "import $module" 2>/dev/null && continue
    wheel=$(ls wheels/"$module"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "peers: no wheel for $module in wheels/; its peer will be skipped"
        continue
    fi
    "$PY" -m pip install --quiet --no-index --no-deps --target "$PEERS" "$wheel"
done
export PYTHONPATH="$PEERS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, tabulate, tqdm, vqbench; print('torch', torch.__version__, 'vqbench', vqbench.__version__)"

# the default heads (each head's COMPARED specs; vq's K set per stage), each with a V-wide matrix also padded to a
# multiple of 64, and every peer: from the heads' own metadata, so a new head is run with no edit here
mapfile -t HEADS < <("$PY" - <<'PYTHON'
from vqbench.heads.registry import default_specs, head_class, parse_spec
specs = [s for s in default_specs() if parse_spec(s)[0] != "vq"]
padded = [s + ("," if ":" in s else ":") + "pad=64" for s in specs
          if any(o.name == "pad" for o in head_class(parse_spec(s)[0]).OPTIONS)]
print(*specs, *padded, *head_class("peer").EXAMPLES, sep="\n")
PYTHON
)
OPS=(logits log_probs loss train decode)
DTYPES=(bfloat16 tf32 float32)
if [ "$DRY" = "--dry-run" ]; then
    DEVICE=cpu
    CHECK=(--dry-run)
    HEADLINE=(--vocab 300 --d-model 16 --tokens 8)
    HEADLINE_VQ=(vq:K=16 vq:K=16,bias=1)
    SWEEP=(--vocab 200 400 --d-model 16 --tokens 4 8)
    SWEEP_VQ="vq:K={8,16}"
    TIMING=(--min-run-time 0.002 --ceilings small --threads 1)
    LIMIT=3000  # a shared CPU: the dry run tests the stages, not the GPU's time budget
    # the headline runs every head; the sweep leaves out the peers that compile per shape (minutes on a CPU,
    # CCE's CPU path included)
    NOT_SWEPT='impl=(compile|cce)'
else
    DEVICE=cuda
    CHECK=()
    nvidia-smi -L
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
    HEADLINE=(--vocab 50257 --d-model 1024 --tokens 2048)
    HEADLINE_VQ=(vq:K=1024 vq:K=1024,bias=1)
    SWEEP=(--vocab 10000 50257 128000 256000 --d-model 1024 4096 --tokens 64 2048 8192)
    SWEEP_VQ="vq:K={256,1024,4096}"
    TIMING=(--min-run-time 0.05)
    LIMIT=440  # the stages; the wrap-up after them (peers line, tables) takes seconds
    # torch.compile recompiles for every shape: the compiled peers (a minute or more each) stay in the headline
    NOT_SWEPT='impl=compile'
fi
mapfile -t SWEEP_HEADS < <(printf '%s\n' "${HEADS[@]}" | grep -Ev "$NOT_SWEPT")
COMMON=(--device "$DEVICE" --ops "${OPS[@]}" --out "$OUT" --no-progress --resume "${TIMING[@]}")

# 1. self-check, once
if [ ! -f "$OUT/cuda-selfcheck.json" ]; then
    timeout 120 "$PY" -m vqbench.gpu_check --out "$OUT" "${CHECK[@]}" > "$LOGS/cuda-selfcheck.log" 2>&1 \
        || { tail -n 20 "$LOGS/cuda-selfcheck.log"; echo "self-check: failed, the run goes on"; }
fi
[ -f "$OUT/cuda-selfcheck.json" ] && echo "self-check: $OUT/cuda-selfcheck.md"

# run NAME DTYPE ARGS...: one precision of one stage, cut where the run's time ends; 0 done, 124 cut
run() {
    local name=$1 dtype=$2 status=0
    shift 2
    if [ "$(left)" -le 5 ]; then
        echo "$name $dtype: not started, the ${LIMIT} s are spent; run the script again to measure it"
        return 124
    fi
    timeout "$(left)" "$PY" -m vqbench.compare "$@" --dtype "$dtype" --name "$name" "${COMMON[@]}" \
        >> "$LOGS/$name.log" 2>&1 || status=$?
    if [ "$status" -eq 124 ]; then
        echo "$name $dtype: stopped at the ${LIMIT} s limit; run the script again to finish it"
    elif [ "$status" -ne 0 ]; then
        tail -n 20 "$LOGS/$name.log"
        exit "$status"
    else
        # what it measured, then whether the machine was busy meanwhile (compare's last two lines)
        echo "$name $dtype: $(grep '^measured ' "$LOGS/$name.log" | tail -n 1); $(tail -n 1 "$LOGS/$name.log")"
    fi
    return "$status"
}

# 2. headline, then 3. sweep, each precision in turn; a cut stage leaves the rest to the next run
CUT=()
for dtype in "${DTYPES[@]}"; do
    run cuda-headline "$dtype" --heads "${HEADS[@]}" "${HEADLINE_VQ[@]}" "${HEADLINE[@]}" || { CUT+=(cuda-headline); break; }
done
"$PY" - "$OUT/cuda-headline.csv" <<'PYTHON'
import sys
from vqbench.results import read_rows
rows = [r for r in read_rows(sys.argv[1]) if r["head"] == "peer" and r["op"] in ("loss", "train")]
ran = sorted({f"{r['spec']} {r['dtype']}" for r in rows if r["status"] == "ok"})
missed = {r["spec"]: r["reason"] for r in rows if r["status"] != "ok"}
print("peers ran: " + (", ".join(ran) or "none"))
for spec, reason in sorted(missed.items()):
    print(f"peers not run: {spec}: {reason}")
PYTHON
for dtype in "${DTYPES[@]}"; do
    run cuda-sweep "$dtype" --heads "${SWEEP_HEADS[@]}" "$SWEEP_VQ" "${SWEEP[@]}" --time-budget-s 0.5 || { CUT+=(cuda-sweep); break; }
done
# a cut stage's tables, from every row it measured
for name in "${CUT[@]}"; do
    [ -f "$OUT/$name.csv" ] && "$PY" -m vqbench.compare --from "$OUT/$name.csv" --name "$name" --out "$OUT" > /dev/null
done
rm -f "$OUT"/cuda-*.csv.lock  # no writer is left
