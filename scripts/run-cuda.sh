#!/usr/bin/env bash
# The CUDA rows, in one run of under 8 minutes on one GPU (an H200 took the sizes below):
#   cuda-headline  V=50257, d=1024, N=2048 (vq: K=1024): every head (and vq with bias), float32 and bfloat16, ops logits, log_probs,
#                  loss, train, decode (CUDA peak memory in the rows);
#   cuda-sweep     V in {10000, 50257, 128000, 256000} x d in {1024, 4096} x K in {256, 1024, 4096} x
#                  N in {64, 2048, 8192}, the same heads, dtypes and ops, a 0.5 s per-call time guard.
# Rows go to OUTDIR/cuda-*.csv (the long format of `python -m vqbench.compare`, GPU name in every row) and
# the tables to OUTDIR/cuda-*.md. Each step resumes what an earlier, interrupted run left in OUTDIR, so a
# second run finishes the first.
#
#   bash scripts/run-cuda.sh OUTDIR             # on a CUDA machine
#   bash scripts/run-cuda.sh OUTDIR --dry-run   # anywhere: the same steps on the CPU, on a tiny grid
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 2 ] && [ "$2" != "--dry-run" ]; }; then
    echo "usage: bash scripts/run-cuda.sh OUTDIR [--dry-run]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
DRY=${2:-}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# vqbench from this working tree; the machine's own torch (never a pip download)
if ! "$PY" -c "import vqbench" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch, tabulate, tqdm, vqbench; print('torch', torch.__version__, 'vqbench', vqbench.__version__)"

# the default heads (each head's COMPARED specs, vq's K set per step) and every peer
mapfile -t HEADS < <("$PY" -c "from vqbench.registry import default_specs; print(*[s for s in default_specs() if s != 'vq'], sep='\n')")
mapfile -t -O "${#HEADS[@]}" HEADS < <("$PY" -c "from vqbench.registry import head_class; print(*head_class('peer').EXAMPLES, sep='\n')")
OPS=(logits log_probs loss train decode)
if [ "$DRY" = "--dry-run" ]; then
    DEVICE=cpu
    HEADLINE=(--vocab 300 --d-model 16 --tokens 8)
    HEADLINE_VQ=(vq:K=16 vq:K=16,bias=1)
    SWEEP=(--vocab 200 400 --d-model 16 --tokens 4 8)
    SWEEP_VQ="vq:K={8,16}"
    TIMING=(--min-run-time 0.002 --ceilings small --threads 1)
    LIMIT=120
else
    DEVICE=cuda
    nvidia-smi -L
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
    HEADLINE=(--vocab 50257 --d-model 1024 --tokens 2048)
    HEADLINE_VQ=(vq:K=1024 vq:K=1024,bias=1)
    SWEEP=(--vocab 10000 50257 128000 256000 --d-model 1024 4096 --tokens 64 2048 8192)
    SWEEP_VQ="vq:K={256,1024,4096}"
    TIMING=(--min-run-time 0.05)
    LIMIT=420
fi
COMMON=(--device "$DEVICE" --dtype float32 bfloat16 --ops "${OPS[@]}" --out "$OUT" --no-progress --resume
        "${TIMING[@]}")

"$PY" -m vqbench.compare --heads "${HEADS[@]}" "${HEADLINE_VQ[@]}" "${HEADLINE[@]}" --name cuda-headline "${COMMON[@]}" \
    > "$OUT/cuda-headline.log" 2>&1 || { tail -n 20 "$OUT/cuda-headline.log"; exit 1; }
echo "cuda-headline: $(tail -n 1 "$OUT/cuda-headline.log")"
# the sweep is cut at LIMIT seconds; what it measured stays, and a rerun resumes the rest
status=0
timeout "$LIMIT" "$PY" -m vqbench.compare --heads "${HEADS[@]}" "$SWEEP_VQ" "${SWEEP[@]}" --time-budget-s 0.5 \
    --name cuda-sweep "${COMMON[@]}" > "$OUT/cuda-sweep.log" 2>&1 || status=$?
if [ "$status" -eq 124 ]; then
    echo "cuda-sweep: stopped at the ${LIMIT} s limit; run the script again to finish it"
    "$PY" -m vqbench.compare --from "$OUT/cuda-sweep.csv" --name cuda-sweep --out "$OUT" > /dev/null
elif [ "$status" -ne 0 ]; then
    tail -n 20 "$OUT/cuda-sweep.log"
    exit "$status"
else
    echo "cuda-sweep: $(tail -n 1 "$OUT/cuda-sweep.log")"
fi
rm -f "$OUT"/cuda-*.csv.lock  # no writer is left; the GPU machine returns at most 8 files
