"""Load the published asv site in headless Chromium and check that it lists the benchmarks.

    asv publish && python scripts/check_asv_site.py [results/asv/html]

Serves the folder on 127.0.0.1 at a free port (the site loads its data with XHR, which
file:// URLs block), dumps the rendered DOM of the index and of one graph page, and checks
that benchmark names from the suite appear. Exits 0 on success, 1 with a message otherwise.
"""

from __future__ import annotations

import functools
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


def check(site: str) -> list:
    import tempfile

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=site)
    handler.log_message = lambda *args: None
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
    return problems


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    site = args[0] if args else "results/asv/html"
    problems = check(site)
    for problem in problems:
        print(f"asv site: {problem}", file=sys.stderr)
    if not problems:
        print(f"asv site at {site}: index and graph page list the benchmarks")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
