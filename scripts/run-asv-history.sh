#!/usr/bin/env bash
# Full (not --quick) asv runs of the commits in benchmarks/history.txt and of HEAD, into results/asv/.
# Run on a quiet machine (no training, tests or other benchmark): about five minutes per commit on 2 cores.
# asv skips a commit whose results are already there for this machine; pass --overwrite to measure again.
set -euo pipefail
cd "$(dirname "$0")/.."
commits="$(mktemp)"
trap 'rm -f "$commits"' EXIT
grep -v '^#' benchmarks/history.txt | awk 'NF {print $1}' | xargs -n1 git rev-parse > "$commits"
git rev-parse HEAD >> "$commits"
# one asv machine per CPU model, so that no history line mixes machines
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')-$(nproc)cpu"
asv machine --yes --machine "$machine" > /dev/null
if [ "${1:-}" = --overwrite ]; then
    asv run "HASHFILE:$commits" --machine "$machine" --show-stderr
else
    asv run "HASHFILE:$commits" --machine "$machine" --show-stderr --skip-existing-commits
fi
