#!/usr/bin/env bash
# Regenerates the committed CPU results (2 threads). Run on a quiet machine: no training, tests or other
# benchmark at the same time (a second busy process triples small ops' times).
#   cpu-sweep  the full grid, float32, THP allocator, with a 1 s per-call time guard (about 80 minutes);
#   headline   V=50257, d=1024, N=2048 (vq: K=1024), every head and op (also the *_into ops and decode_dense),
#              float32 and bfloat16, no time guard: headline.csv with PyTorch's default CPU allocator (what
#              a plain process gets) and headline-thp.csv with the transparent-huge-page allocator;
#              decode.csv: the generation step at N=1 and N=64, by head.sample and the dense way; and the
#              Huffman tree's loss and training step with sparse_grad=1 in both headline files;
#   headline-runs  the plain-allocator headline's claims twice more (softmax and vq:K=1024, the ops the
#              claims table cites, both dtypes), the units in orders shuffled with seeds 2 and 3
#              (headline-run2.csv, headline-run3.csv): the claims table gives each speed-up as the median of
#              the three runs with their range; results/reproducibility.md compares the first two over the
#              units they share (python -m vqbench.repro). The claims' heads only: the whole headline
#              takes about 40 minutes a run on two cores;
#   cpu-floors d=1024, V in {10000, 50257, 128000}, N in {64, 2048}, float32 and bfloat16, 3 s time guard;
#   chunk-memory  softmax train at V=128000, N=2048, plain vs chunked, no time guard;
#   claims     on request only: both sides of the claims table's speed-ups (softmax and vq:K=1024) measured
#              again side by side in one run (compare --remeasure: their claims' units in headline.csv,
#              headline-thp.csv, decode.csv and both headline-run files; the files' other rows stay), so that
#              no claim divides rows from two sessions after a STALE=1 run re-measured one side (about 15 minutes).
# Pass a step name to run only that one. Each step resumes its results file; MODE=--overwrite starts it
# afresh (the old file is kept as a .bak- backup); STALE=1 first sets aside the units whose code changed since
# they were measured (compare --remeasure-stale: they go to NAME.csv.stale-TIME) and measures only those.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON=(--threads 2 --min-run-time 0.2 --out results --no-progress "${MODE:---resume}")
if [ "${STALE:-0}" = 1 ]; then COMMON+=(--remeasure-stale); fi
# the default heads (each head's COMPARED specs) but vq, which each step names with its own K
mapfile -t HEADS < <(python -c "from vqbench.heads.registry import default_specs; print(*[s for s in default_specs() if s != 'vq'], sep='\n')")
OPS=(logits log_probs logits_into log_probs_into predict loss train)
CLAIM_OPS=(logits log_probs logits_into log_probs_into loss train)  # the ops of the claims table's speed-ups
HEADLINE=(--vocab 50257 --d-model 1024 --tokens 2048 --dtype float32 bfloat16)
HEADLINE_HEADS=("${HEADS[@]}" vq:K=1024 vq:K=1024,path=scatter vq:K=1024,bias=1 peer:impl=torch-lce
                peer:impl=torch-lce,chunked=1 peer:impl=compile peer:impl=cce)
STEP="${1:-}"
if [ -z "$STEP" ] || [ "$STEP" = cpu-sweep ]; then
python -m vqbench.compare --heads "${HEADS[@]}" "vq:K={256,1024,4096}" --vocab 10000 32000 50257 128000 256000 \
    --d-model 512 1024 4096 --tokens 1 64 2048 --time-budget-s 1 \
    --name cpu-sweep "${COMMON[@]}"
fi
if [ -z "$STEP" ] || [ "$STEP" = headline ]; then
python -m vqbench.compare --heads "${HEADLINE_HEADS[@]}" "${HEADLINE[@]}" --ops "${OPS[@]}" decode decode_dense \
    --cpu-allocator default --name headline "${COMMON[@]}"
python -m vqbench.compare --heads "${HEADLINE_HEADS[@]}" "${HEADLINE[@]}" --ops "${OPS[@]}" decode decode_dense \
    --cpu-allocator thp --name headline-thp "${COMMON[@]}"
# the Huffman tree's training step with the touched rows' gradient only (its other ops are the dense tree's)
for file in headline:default headline-thp:thp; do
python -m vqbench.compare --heads hierarchical:tree=huffman,sparse_grad=1 "${HEADLINE[@]}" --ops loss train \
    --cpu-allocator "${file#*:}" --name "${file%%:*}" "${COMMON[@]}"
done
python -m vqbench.compare --heads "${HEADS[@]}" vq:K=1024 vq:K=1024,bias=1 --vocab 50257 --d-model 1024 \
    --tokens 1 64 --dtype float32 --ops decode decode_dense --cpu-allocator default --name decode "${COMMON[@]}"
fi
if [ -z "$STEP" ] || [ "$STEP" = headline-runs ]; then
for run in 2 3; do
python -m vqbench.compare --heads softmax vq:K=1024 "${HEADLINE[@]}" --ops "${CLAIM_OPS[@]}" \
    --cpu-allocator default --order-seed "$run" --name "headline-run$run" "${COMMON[@]}"
done
# derived from the two files just measured: written afresh (repro --out refuses to replace a file)
rm -f results/reproducibility.md
python -m vqbench.repro results/headline.csv results/headline-run2.csv --out results/reproducibility.md \
    > /dev/null
fi
if [ "$STEP" = claims ]; then
for file in headline:default headline-thp:thp; do
python -m vqbench.compare --heads softmax vq:K=1024 "${HEADLINE[@]}" --ops "${CLAIM_OPS[@]}" \
    --cpu-allocator "${file#*:}" --name "${file%%:*}" "${COMMON[@]}" --remeasure
done
python -m vqbench.compare --heads softmax vq:K=1024 --vocab 50257 --d-model 1024 --tokens 1 64 --dtype float32 \
    --ops decode decode_dense --cpu-allocator default --name decode "${COMMON[@]}" --remeasure
for run in 2 3; do
python -m vqbench.compare --heads softmax vq:K=1024 "${HEADLINE[@]}" --ops "${CLAIM_OPS[@]}" \
    --cpu-allocator default --order-seed "$run" --name "headline-run$run" "${COMMON[@]}" --remeasure
done
# derived from the two files just measured: written afresh (repro --out refuses to replace a file)
rm -f results/reproducibility.md
python -m vqbench.repro results/headline.csv results/headline-run2.csv --out results/reproducibility.md \
    > /dev/null
fi
if [ -z "$STEP" ] || [ "$STEP" = cpu-floors ]; then
python -m vqbench.compare --heads "${HEADS[@]}" "vq:K={256,1024,4096}" --vocab 10000 50257 128000 --d-model 1024 \
    --tokens 64 2048 --ops "${OPS[@]}" --time-budget-s 3 --dtype float32 bfloat16 \
    --name cpu-floors "${COMMON[@]}"
fi
if [ -z "$STEP" ] || [ "$STEP" = chunk-memory ]; then
python -m vqbench.compare --heads softmax softmax:chunk=256 softmax:chunk=64 --vocab 128000 --d-model 1024 \
    --tokens 2048 --ops train --name chunk-memory "${COMMON[@]}"
fi
