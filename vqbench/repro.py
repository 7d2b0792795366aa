"""python -m vqbench.repro FIRST.csv SECOND.csv: how much a re-run moves each latency.

    python -m vqbench.repro results/headline.csv results/headline-rerun.csv --out results/reproducibility.md

For every unit (spec, op, V, d, N, device, dtype) timed in both files: the ratio of the second median to
the first, and a summary of those ratios (median, spread, the largest move). Reads the files only; torch
is not needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import List

from tabulate import tabulate

from vqbench.results import read_rows, select_rows, unit_key


def ratios(first: List[dict], second: List[dict]) -> List[tuple]:
    """[(unit key, first median, second median, second / first)] for units timed in both."""
    a = {unit_key(r): float(r["value"]) for r in select_rows(first, status="ok", metric="time")}
    b = {unit_key(r): float(r["value"]) for r in select_rows(second, status="ok", metric="time")}
    return [(key, a[key], b[key], b[key] / a[key]) for key in sorted(set(a) & set(b)) if a[key] > 0]


def summary(pairs: List[tuple]) -> dict:
    values = sorted(r for *_, r in pairs)
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"units": len(values), "median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2],
            "largest_move": max(values, key=lambda r: abs(r - 1))}


def markdown(first: str, second: str, pairs: List[tuple]) -> str:
    s = summary(pairs)
    body = [[*key[:3], key[4], key[6], f"{a * 1e3:.3f}", f"{b * 1e3:.3f}", f"{r:.3f}"] for key, a, b, r in pairs]
    table = tabulate(body, headers=["spec", "op", "V", "N", "dtype", "first (ms)", "second (ms)", "second / first"],
                     tablefmt="github", disable_numparse=True)
    return (f"# Reproducibility: two runs of the same measurements\n\n`python -m vqbench.repro {first} {second}`\n\n"
            f"{s['units']} units timed in both. Ratio of medians (second / first): median {s['median']:.3f}, "
            f"interquartile range {s['q1']:.3f}-{s['q3']:.3f}, largest move {s['largest_move']:.3f}.\n\n{table}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.repro", description=__doc__.split("\n\n")[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--out", help="markdown file to write (refused if it exists)")
    args = p.parse_args(argv)
    try:
        pairs = ratios(read_rows(args.first), read_rows(args.second))
    except (OSError, ValueError) as error:
        p.error(str(error))
    if not pairs:
        p.error("no unit is timed in both files")
    text = markdown(args.first, args.second, pairs)
    if args.out:
        if os.path.exists(args.out):
            p.error(f"--out: {args.out} exists; move it aside first")
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
