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
# one asv machine per CPU model, so that no history line mixes machines. Its description is saved in full
# through asv's API: `asv machine --yes --machine NAME` would save the name only (asv keeps only fields that
# differ from the detected ones), and results would then carry no CPU, OS or RAM.
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')-$(nproc)cpu"
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
