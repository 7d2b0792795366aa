#!/usr/bin/env bash
# Regenerates the committed CPU results (2 threads, float32, THP allocator):
#   cpu-sweep  the full grid with a 1 s per-call time guard (about 80 minutes on 2 cores);
#   headline   V=50257, d=1024, K=1024, N=2048, every head and op (also the *_into ops), no time guard;
#   cpu-floors d=1024, V in {10000, 50257, 128000}, N in {64, 2048}, with a 3 s time guard:
#              the x-over-floor tables of issue 7;
#   chunk-memory  softmax train at V=128000, N=2048, plain vs chunked, no time guard.
# Pass a step name (cpu-sweep, headline, cpu-floors, chunk-memory) to run only that one.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON=(--threads 2 --min-run-time 0.2 --out results --no-progress)
HEADS=(softmax softmax:chunk=256 adaptive hierarchical hierarchical:tree=huffman lowrank)
OPS=(logits log_probs logits_into log_probs_into predict loss train)
STEP="${1:-}"
if [ -z "$STEP" ] || [ "$STEP" = cpu-sweep ]; then
python -m vqbench.compare --heads "${HEADS[@]}" vq --vocab 10000 32000 50257 128000 256000 \
    --d-model 512 1024 4096 --codebook 256 1024 4096 --tokens 1 64 2048 --time-budget-s 1 \
    --name cpu-sweep "${COMMON[@]}"
fi
if [ -z "$STEP" ] || [ "$STEP" = headline ]; then
python -m vqbench.compare --heads "${HEADS[@]}" vq:K=1024 vq:K=1024,path=scatter vq:K=1024,bias=1 \
    --vocab 50257 --d-model 1024 --tokens 2048 --ops "${OPS[@]}" decode --name headline "${COMMON[@]}"
fi
if [ -z "$STEP" ] || [ "$STEP" = cpu-floors ]; then
python -m vqbench.compare --heads "${HEADS[@]}" vq --vocab 10000 50257 128000 --d-model 1024 \
    --codebook 256 1024 4096 --tokens 64 2048 --ops "${OPS[@]}" --time-budget-s 3 \
    --name cpu-floors "${COMMON[@]}"
fi
if [ -z "$STEP" ] || [ "$STEP" = chunk-memory ]; then
python -m vqbench.compare --heads softmax softmax:chunk=256 softmax:chunk=64 --vocab 128000 --d-model 1024 \
    --tokens 2048 --ops train --name chunk-memory "${COMMON[@]}"
fi
