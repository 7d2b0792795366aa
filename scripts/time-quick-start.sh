#!/usr/bin/env bash
# Wall time of README's main job (the default grid) and of one small configuration, into
# results/wall-times.md. Run on a quiet machine: no training, tests or other benchmark at the same time.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
SMALL=(--heads softmax vq:K=64 adaptive --vocab 4000 --d-model 64 --tokens 64 --ops log_probs loss)
wall() {  # seconds of one command, its output discarded
    local start end
    start=$(date +%s.%N); "$@" > /dev/null 2>&1; end=$(date +%s.%N)
    python -c "print(f'{$end - $start:.0f}')"
}
default_s=$(wall python -m vqbench.compare --out "$scratch/default" --no-progress)
small_s=$(wall python -m vqbench.compare "${SMALL[@]}" --out "$scratch/small" --no-progress)
cat > results/wall-times.md <<MD
# Wall times of the quick start

Measured by \`bash scripts/time-quick-start.sh\` on $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, quiet machine.

| command | wall time |
|---|---|
| \`python -m vqbench.compare\` (the default grid) | ${default_s} s |
| \`python -m vqbench.compare ${SMALL[*]}\` | ${small_s} s |
MD
echo results/wall-times.md
