#!/usr/bin/env bash
# Fetches, from the npm registry, the scripts and styles that asv's published site loads from
# public CDNs, unpacked under DIR (default .asv-vendor), for scripts/check_asv_site.py --vendor DIR.
set -euo pipefail
dir=${1:-.asv-vendor}
mkdir -p "$dir" && cd "$dir"
npm pack -q jquery@3.3.1 flot@0.8.3 flot-orderbars@1.0.0 stupid-table-plugin@1.1.3 blueimp-md5@2.19.0 bootstrap@3.1.1 >/dev/null
for f in *.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
