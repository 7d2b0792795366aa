"""python -m vqbench.plot FILE...: PNG figures from stored result rows (matplotlib).

    python -m vqbench.plot results/cpu-sweep.csv --out results/figures

Figures: latency vs V per head, one per op (log-log, one panel per N); parameters vs V;
peak memory vs N for train and log_probs. One colour per head spec, the same in every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from collections import defaultdict

from vqbench.results import ALL_OPS, numeric_problem, read_rows, select_rows

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
MARKERS = "osD^v<>pXh*"


def colours(specs):
    """A fixed colour and marker per spec: softmax first, then the rest in sorted order."""
    ordered = sorted(set(specs), key=lambda s: (s != "softmax", s))
    return {s: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, s in enumerate(ordered)}


def _series(rows, metric, x_key, **fixed):
    """{spec: [(x, value, spread)]} for ok rows matching ``fixed`` column values."""
    out = defaultdict(list)
    for r in select_rows(rows, status="ok", metric=metric, **fixed):
        spread = float(r["spread"]) if r.get("spread") else 0.0
        out[r["spec"]].append((int(r[x_key]), float(r["value"]), spread))
    return {s: sorted(set(points)) for s, points in out.items()}


def _caption(rows):
    r = {k: v or "?" for k, v in rows[0].items()}  # a file written by another tool may lack provenance columns
    return plain(f"{r.get('device_name', '?')} ({r['device']}), {r['dtype']}, {r.get('threads', '?')} threads, "
                 f"torch {r.get('torch_version', '?')}")


def plain(text: str) -> str:
    """text as matplotlib shows it literally: a '$' from a file would otherwise start mathtext (and an
    unbalanced one fails the whole figure)."""
    return text.replace("$", r"\$")


def _style(ax, xlabel, ylabel, title):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _draw(ax, series, palette):
    for spec in sorted(series, key=lambda s: (s != "softmax", s)):
        points = series[spec]
        colour, marker = palette[spec]
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.plot(xs, ys, marker=marker, color=colour, label=plain(spec), linewidth=1.5, markersize=5)


def plot_latency(rows, palette, d, out_dir, plt, sources=()):
    paths = []
    tokens = sorted({int(r["N"]) for r in rows if r["metric"] == "time" and int(r["d"]) == d})
    for op in ALL_OPS:
        if not any(r["op"] == op and r["metric"] == "time" for r in rows):
            continue
        fig, axes = plt.subplots(1, len(tokens), figsize=(max(7.5, 5.2 * len(tokens)), 5.0), squeeze=False)
        for ax, n in zip(axes[0], tokens):
            series = {s: [(x, y * 1e3, e * 1e3) for x, y, e in pts]
                      for s, pts in _series(rows, "time", "V", op=op, d=d, N=n).items()}
            _draw(ax, series, palette)
            _style(ax, "vocabulary size V (tokens)", "median latency (ms)", f"{op}, N={n} tokens")
        _legend(fig, axes)
        fig.suptitle(f"Latency of {op} vs vocabulary size, d={d}\n{_caption(rows)}", fontsize=10)
        paths.append(_save(fig, out_dir, f"latency_{op}_d{d}.png", plt, sources))
    return paths


def plot_params(rows, palette, d, out_dir, plt, sources=()):
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    series = {s: [(x, y / 1e6, e) for x, y, e in pts] for s, pts in _series(rows, "params", "V", d=d).items()}
    _draw(ax, series, palette)
    _style(ax, "vocabulary size V (tokens)", "trainable parameters (millions)", f"Output-layer parameters, d={d}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return [_save(fig, out_dir, f"params_d{d}.png", plt, sources)]


def plot_memory(rows, palette, d, vocab, out_dir, plt, sources=()):
    paths = []
    for op in ("train", "log_probs"):
        fig, ax = plt.subplots(figsize=(6.5, 4.6))
        series = {s: [(x, max(y, 1) / 2**20, e) for x, y, e in pts]
                  for s, pts in _series(rows, "peak_memory", "N", op=op, d=d, V=vocab).items()}
        if not series:
            plt.close(fig)
            continue
        _draw(ax, series, palette)
        _style(ax, "tokens per call N", "peak memory allocated (MiB)",
               f"Peak memory of {op}, V={vocab}, d={d}\n{_caption(rows)}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, out_dir, f"memory_{op}_V{vocab}_d{d}.png", plt, sources))
    return paths


def _legend(fig, axes):
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 0.90))


SOURCE_KEY = "vqbench-source"   # PNG text chunk: the files a figure was drawn from


def source_note(paths, figure_dir: str) -> str:
    """'REL sha256=HEX; ...' for the files a figure in figure_dir is drawn from, each REL relative to that
    folder: `python -m vqbench.report --check` finds a figure whose sources have changed since."""
    return "; ".join(f"{os.path.relpath(path, figure_dir)} sha256={file_sha256(path)}" for path in paths)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _save(fig, out_dir, name, plt, sources=()):
    """Draw into a fresh temporary file, then rename it to name: a link planted there is replaced, not followed."""
    path = os.path.join(out_dir, name)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110,
                        metadata={SOURCE_KEY: source_note(sources, out_dir)} if sources else None)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def pareto_frontier(points):
    """The (params, ratio) points no other point beats on both (fewer or equal parameters and a lower or
    equal ratio, one of them strictly), by increasing parameters."""
    front = []
    for params, ratio in sorted(points, key=lambda p: (p[0], p[1])):
        if not front or ratio < front[-1][1]:
            front.append((params, ratio))
    return front


def plot_quality_pareto(summary, path: str, sources=()) -> None:
    """Test perplexity ratio to softmax (mean ± std over seeds) against output-layer parameters, one point per
    variant of ``vqbench.quality.aggregate``; hollow markers for single-seed variants; the Pareto frontier
    of the mean ratios, and the paper's target region (+4% at most, with at least 95% fewer parameters)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for s in summary:
        if s["ratio_mean"] != s["ratio_mean"]:  # NaN: no paired reference seed
            continue
        colour = "#d62728" if s["head"].startswith("vq") else "#1f77b4"
        spread = 0.0 if s["ratio_std"] != s["ratio_std"] else s["ratio_std"]
        ax.errorbar(s["output_params"], s["ratio_mean"], yerr=spread, fmt="o", color=colour, capsize=3,
                    markerfacecolor=colour if s["seeds"] > 1 else "white", zorder=3)
        ax.annotate(plain(s["name"]), (s["output_params"], s["ratio_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    measured = [(s["output_params"], s["ratio_mean"]) for s in summary if s["ratio_mean"] == s["ratio_mean"]]
    front = pareto_frontier(measured)
    if len(front) > 1:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="grey", linestyle="--", linewidth=1, zorder=2, label="Pareto frontier")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xscale("log")
    from matplotlib import ticker
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(
        lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x >= 1e3 else f"{x:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    reference = [s["output_params"] / (1 - s["fewer_params"]) for s in summary
                 if s["fewer_params"] == s["fewer_params"] and s["fewer_params"] < 1]
    ax.axhline(1.04, color="grey", linestyle=":", linewidth=1)
    ax.annotate("paper's claim: +4%", (ax.get_xlim()[0], 1.04), fontsize=7, xytext=(2, 2), textcoords="offset points")
    if reference:  # the paper's promise: at most +4% with at least 95% fewer output parameters
        limit = 0.05 * reference[0]
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        x1, y0 = max(x1, 2 * limit), min(y0, 0.95)  # keep the target region in view
        ax.axvline(limit, color="grey", linestyle=":", linewidth=1)
        ax.fill_between([x0, limit], y0, 1.04, color="#2ca02c", alpha=0.08, zorder=1)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        # at the foot of the line: the VQ points crowd its top, just left of it
        ax.annotate("95% fewer params", (limit, y0), fontsize=7, rotation=90, va="bottom",
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("output-layer parameters")
    ax.set_ylabel("test perplexity / softmax (same seed)")
    ax.set_title("WikiText-2: quality vs size of the output layer (red: VQ-Logits; hollow: one seed)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _save(fig, os.path.dirname(path) or ".", os.path.basename(path), plt, sources)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="result CSV files written by vqbench.compare")
    p.add_argument("--out", default="results/figures", help="folder for the PNG files")
    p.add_argument("--d-model", type=int, default=None, help="hidden width to plot (default: 1024 if present)")
    p.add_argument("--vocab", type=int, default=None, help="V of the memory-vs-N figures (default: 50257 if present)")
    p.add_argument("--device", default=None, help="device rows to plot (default: the first in the file)")
    p.add_argument("--dtype", default=None, help="dtype rows to plot (default: the first in the file)")
    args = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for path in args.files:
        try:
            rows.extend(read_rows(path))
        except (OSError, ValueError) as error:
            p.error(str(error))
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        p.error("no measured rows in the given files")
    problem = numeric_problem(ok)
    if problem:
        p.error(f"FILE: {problem} (a cell edited by hand?)")
    device = args.device or ok[0]["device"]
    dtype = args.dtype or ok[0]["dtype"]
    ok = [r for r in ok if r["device"] == device and r["dtype"] == dtype]
    if not ok:
        p.error(f"--device/--dtype: no measured rows for {device} {dtype} in the given files")
    widths = sorted({int(r["d"]) for r in ok})
    d = args.d_model or (1024 if 1024 in widths else widths[0])
    if d not in widths:
        p.error(f"--d-model: no rows with d={d} (the files have {widths})")
    vocabs = sorted({int(r["V"]) for r in ok})
    vocab = args.vocab or (50257 if 50257 in vocabs else vocabs[len(vocabs) // 2])
    if vocab not in vocabs:
        p.error(f"--vocab: no rows with V={vocab} (the files have {vocabs})")
    palette = colours(r["spec"] for r in ok)
    try:
        os.makedirs(args.out, exist_ok=True)
        sources = args.files
        paths = (plot_latency(ok, palette, d, args.out, plt, sources)
                 + plot_params(ok, palette, d, args.out, plt, sources)
                 + plot_memory(ok, palette, d, vocab, args.out, plt, sources))
    except OSError as error:
        p.error(f"--out: cannot write figures into {args.out} ({error.strerror})")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
