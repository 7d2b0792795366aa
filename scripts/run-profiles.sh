#!/usr/bin/env bash
# Top-operator profiles (torch.profiler, 3 recorded steps) of every row of the CPU headline
# (results/headline.csv and headline-thp.csv) that runs over RATIO (default 2) times its floor, as
# `python -m vqbench.report --floors` derives it: the measured breakdown behind each reason given in
# results/profiles/README.md. Each table goes to results/profiles/<spec>_V<V>_<op>_<dtype>_<allocator>.md; the
# TensorBoard traces go to the git-ignored results/traces/ (tensorboard --logdir results/traces).
# Run on a quiet machine, after the headline files it reads. SPECS (a Python regular expression, default every
# spec) keeps the rows whose spec it matches from the start: SPECS=vq retakes VQ's profiles alone, after a change
# to VQ re-measured its rows.
set -euo pipefail
cd "$(dirname "$0")/.."
RATIO="${RATIO:-2}"
SPECS="${SPECS:-}"
mkdir -p results/profiles
python -m vqbench.report --floors | python -c "
import csv, re, sys
seen = set()
for r in csv.DictReader(sys.stdin):
    over = r['ratio'] not in ('', 'nan') and float(r['ratio']) > float(sys.argv[1])
    over = over and re.match(sys.argv[2], r['spec']) is not None
    key = (r['spec'], r['op'], r['dtype'], r['cpu_allocator'], r['V'], r['d'], r['N'])
    if r['file'] in ('headline.csv', 'headline-thp.csv') and over and key not in seen:
        seen.add(key)
        print(*key, sep='\t')
" "$RATIO" "$SPECS" | while IFS=$'\t' read -r spec op dtype allocator vocab d tokens; do
    name="$(echo "${spec}_V${vocab}_${op}_${dtype}_${allocator}" | tr ':=,' '-__')"
    python -m vqbench.profile --head "$spec" --op "$op" --vocab "$vocab" --d-model "$d" --tokens "$tokens" \
        --dtype "$dtype" --cpu-allocator "$allocator" --threads 2 --top 12 > "results/profiles/$name.md"
    echo "results/profiles/$name.md"
done
