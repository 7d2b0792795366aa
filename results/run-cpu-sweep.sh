#!/usr/bin/env bash
# Regenerates the committed CPU results: the full sweep (with a 1 s per-call time guard), then
# the headline configuration V=50257, d=1024, K=1024, N=2048 without a time guard.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m vqbench.compare --heads softmax softmax:chunk=256 adaptive hierarchical hierarchical:tree=huffman \
    lowrank vq --vocab 10000 32000 50257 128000 256000 --d-model 512 1024 4096 --codebook 256 1024 4096 \
    --tokens 1 64 2048 --threads 2 --min-run-time 0.2 --time-budget-s 1 --out results --name cpu-sweep \
    --no-progress "$@"
python -m vqbench.compare --heads softmax softmax:chunk=256 adaptive hierarchical hierarchical:tree=huffman \
    lowrank vq:K=1024 vq:K=1024,path=scatter vq:K=1024,bias=1 --vocab 50257 --d-model 1024 --tokens 2048 \
    --threads 2 --min-run-time 0.2 --out results --name headline --no-progress "$@"
