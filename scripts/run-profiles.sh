#!/usr/bin/env bash
# Top-operator profiles (torch.profiler, 3 recorded steps) of the ops that stay furthest over their
# floor in results/headline.md and results/cpu-floors.md: the evidence behind each gap named in
# results/README.md. Each table goes to results/profiles/<head>_<V>_<op>.md; the TensorBoard traces
# go to the git-ignored results/traces/ (tensorboard --logdir results/traces).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/profiles
profile() {  # spec op V
    local name
    name="$(echo "$1" | tr ':=,' '-__')_V$3_$2"
    python -m vqbench.profile --head "$1" --op "$2" --vocab "$3" --d-model 1024 --tokens 2048 --threads 2 \
        --top 12 > "results/profiles/$name.md"
    echo "results/profiles/$name.md"
}
profile vq:K=1024 logits_into 50257
profile vq:K=1024 log_probs_into 50257
profile vq:K=1024 log_probs 50257
profile vq:K=256 logits_into 50257
profile vq:K=1024,bias=1 logits_into 50257
profile hierarchical loss 50257
profile hierarchical train 50257
profile hierarchical:tree=huffman loss 50257
profile hierarchical:tree=huffman train 50257
profile hierarchical:tree=huffman log_probs_into 50257
profile adaptive log_probs 128000
