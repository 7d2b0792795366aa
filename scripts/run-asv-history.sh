#!/usr/bin/env bash
# Full (not --quick) asv runs of the commits in benchmarks/history.txt and of HEAD, into results/asv/.
# Run on a quiet machine (no training, tests or other benchmark): about ten minutes per commit on 2 cores (the default grid).
# asv skips a commit whose results are already there for this machine; pass --overwrite to measure again.
set -euo pipefail
cd "$(dirname "$0")/.."
commits="$(mktemp)"
trap 'rm -f "$commits"' EXIT
grep -v '^#' benchmarks/history.txt | awk 'NF {print $1}' | xargs -n1 git rev-parse > "$commits"
git rev-parse HEAD >> "$commits"
# one asv machine per kind of CPU, so that no history line mixes machines: its model name, its best vector tier
# (a virtual machine may show one model name, "AMD EPYC", for CPUs with and without AVX-512) and its cores.
# ASV_MACHINE=NAME continues another line: the committed AMD-EPYC-2cpu history was measured on the AMD EPYC
# with AVX-512 bf16 before the tier was part of the name. The description is saved in full through asv's API:
# `asv machine --yes --machine NAME` would save the name only (asv keeps only fields that differ from the
# detected ones), and results would then carry no CPU, OS or RAM.
model="$(lscpu | sed -n 's/^Model name: *//p' | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')"
tier="$(python -c 'from vqbench.measuring.provenance import vector_tier; print(vector_tier() or "novector")')"
machine="${ASV_MACHINE:-$model-$tier-$(nproc)cpu}"
python - "$machine" <<'EOF'
import sys
from asv.machine import Machine, MachineCollection
MachineCollection.save(sys.argv[1], {**Machine.get_defaults(), "machine": sys.argv[1], "version": 1})
EOF
if [ "${1:-}" = --overwrite ]; then
    asv run "HASHFILE:$commits" --machine "$machine" --show-stderr
else
    asv run "HASHFILE:$commits" --machine "$machine" --show-stderr --skip-existing-commits
fi
