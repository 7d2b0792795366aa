"""Load the published asv site in headless Chromium and check that it lists the benchmarks.

    asv publish && python scripts/check_asv_site.py [results/asv/html]
    bash scripts/vendor_asv_assets.sh .asv-vendor && python scripts/check_asv_site.py --vendor .asv-vendor

The site loads jQuery, flot and Bootstrap from public CDNs. Offline, --vendor DIR serves a copy
of the site whose CDN URLs point at local files unpacked from the npm registry (see
scripts/vendor_asv_assets.sh).

Serves the folder on 127.0.0.1 at a free port (the site loads its data with XHR, which
file:// URLs block), dumps the rendered DOM of the index and of one graph page, and checks
that benchmark names from the suite appear. Exits 0 on success, 1 with a message otherwise.
"""

from __future__ import annotations

import functools
import re
import http.server
import shutil
import subprocess
import sys
import threading

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]
EXPECTED = ["bench_heads.HeadsCPU.time_loss", "bench_heads.HeadsCPU.time_train_step",
            "bench_heads.HeadsCPU.track_params"]
GRAPH = "bench_heads.HeadsCPU.time_loss"
# CDN URL in asv's pages -> file in the npm packages unpacked by scripts/vendor_asv_assets.sh
VENDOR = {
    "https://code.jquery.com/jquery-3.3.1.min.js": "jquery-3.3.1/package/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": "flot-0.8.3/package/jquery.flot.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js":
        "flot-0.8.3/package/jquery.flot.time.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        "flot-0.8.3/package/jquery.flot.selection.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        "flot-0.8.3/package/jquery.flot.categories.js",
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        "flot-orderbars-1.0.0/package/js/jquery.flot.orderBars.js",
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        "stupid-table-plugin-1.1.3/package/stupidtable.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js":
        "blueimp-md5-2.19.0/package/js/md5.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js":
        "bootstrap-3.1.1/package/dist/js/bootstrap.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css":
        "bootstrap-3.1.1/package/dist/css/bootstrap.min.css",
}


def vendored_copy(site: str, vendor: str, into: str) -> str:
    """A copy of the site whose CDN URLs point at local copies of the same files."""
    import os

    copy = os.path.join(into, "site")
    shutil.copytree(site, copy)
    os.makedirs(os.path.join(copy, "vendor"), exist_ok=True)
    for url, path in VENDOR.items():
        shutil.copy(os.path.join(vendor, path), os.path.join(copy, "vendor", os.path.basename(url)))
    for name in os.listdir(copy):
        if name.endswith(".html"):
            page = os.path.join(copy, name)
            with open(page) as f:
                text = f.read()
            for url in VENDOR:
                text = text.replace(url, "vendor/" + os.path.basename(url))
            # the integrity hashes name the CDN's minified builds, not these copies
            text = re.sub(r'\s(integrity|crossorigin)="[^"]*"', "", text)
            with open(page, "w") as f:
                f.write(text)
    return copy


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")


def dump_dom(browser: str, url: str, profile_dir: str) -> str:
    result = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--dump-dom", url],
                            capture_output=True, text=True, timeout=120)
    return result.stdout


def check(site: str, vendor: str = None) -> list:
    import tempfile

    scratch = tempfile.mkdtemp()
    if vendor:
        site = vendored_copy(site, vendor, scratch)
    handler = type("QuietHandler", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda self, *args: None})
    handler = functools.partial(handler, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    problems = []
    try:
        browser = chromium()
        with tempfile.TemporaryDirectory() as profile:
            index = dump_dom(browser, f"{base}/index.html", profile)
            missing = [name for name in EXPECTED if name not in index]
            if missing:
                problems.append(f"index page does not list {missing}")
            graph = dump_dom(browser, f"{base}/index.html#{GRAPH}", profile)
            if GRAPH not in graph or "HeadsCPU" not in graph:
                problems.append(f"graph page for {GRAPH} did not render")
    finally:
        server.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    return problems


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Check the published asv site in headless Chromium.")
    p.add_argument("site", nargs="?", default="results/asv/html")
    p.add_argument("--vendor", help="folder from scripts/vendor_asv_assets.sh, for machines without internet")
    args = p.parse_args(argv)
    site = args.site
    problems = check(site, args.vendor)
    for problem in problems:
        print(f"asv site: {problem}", file=sys.stderr)
    if not problems:
        print(f"asv site at {site}: index and graph page list the benchmarks")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
