#!/usr/bin/env bash
# Before/after of a head's rewrite on one machine in one session (absolute times from two sessions do not
# compare: the machines differ). The headline size (V=50257, d=1024, N=2048, float32 and bfloat16, PyTorch's
# default CPU allocator, 2 threads) of the given heads and ops, measured by the code of BEFORE (checked out in a
# temporary git worktree) and by the working tree's, alternately, RUNS times each (default 3): before-1, after-1,
# before-2, ...; the runs of one side show how far the machine drifted meanwhile (on a shared VM, small ops move by
# 1.5x within minutes). Writes results/archive/ab-BEFORE-AFTER/{before,after}-I.csv and, from them
# (python -m vqbench.repro), after-I-vs-before-I.md for each I and before-I-vs-before-1.md for I > 1.
# Run on a quiet machine (no training, tests or other benchmark). Two heads, two ops, three runs a side: 2.5 minutes.
#   bash scripts/run-ab.sh BEFORE "SPEC [SPEC ...]" "OP [OP ...]"
#   e.g. bash scripts/run-ab.sh e26c054 "hierarchical:tree=huffman hierarchical:tree=huffman,sparse_grad=1" "loss train"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 3 ]; then
    echo "usage: bash scripts/run-ab.sh BEFORE \"SPEC...\" \"OP...\"" >&2
    exit 2
fi
before="$(git rev-parse --short "$1^{commit}")"
after="$(git rev-parse --short HEAD)"
read -r -a specs <<< "$2"
read -r -a ops <<< "$3"
runs="${RUNS:-3}"
out="results/archive/ab-$before-$after"
if [ -e "$out" ]; then
    echo "$out: exists; move it away first (a measurement is never overwritten)" >&2
    exit 1
fi
tree="$(mktemp -d)/before"
git worktree add --quiet --detach "$tree" "$before"
trap 'git worktree remove --force "$tree"' EXIT
ARGS=(--heads "${specs[@]}" --vocab 50257 --d-model 1024 --tokens 2048 --dtype float32 bfloat16 --ops "${ops[@]}"
      --cpu-allocator default --threads 2 --min-run-time 0.2 --no-progress)
for run in $(seq "$runs"); do
    # python -m runs the package in the current folder: the worktree's code for "before"
    (cd "$tree" && python -m vqbench.compare "${ARGS[@]}" --out "$OLDPWD/$out" --name "before-$run")
    python -m vqbench.compare "${ARGS[@]}" --out "$out" --name "after-$run"
done
for run in $(seq "$runs"); do
    python -m vqbench.repro "$out/before-$run.csv" "$out/after-$run.csv" --out "$out/after-$run-vs-before-$run.md"
    if [ "$run" -gt 1 ]; then
        python -m vqbench.repro "$out/before-1.csv" "$out/before-$run.csv" --out "$out/before-$run-vs-before-1.md"
    fi
done
echo "wrote $out"
