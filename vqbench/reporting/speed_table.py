"""The transformer track's training-speed tables (scripts/size-transformer.sh): each measurement's rows are
added to a CSV that keeps every earlier measurement, and the Markdown beside it shows one table per
measurement, since speeds compare only within one run on one machine.

python -m vqbench.reporting.speed_table SCRATCH STEPS NAME [PLAN]: SCRATCH holds one folder per variant or
candidate with the summary.json of a short vqbench.train run of STEPS steps; NAME is the results file's
stem under results/quality/ (transformer-size, transformer-speed); PLAN the plan file the variants come
from, if any (its first variant is each measurement's reference: speed_vs_first).
"""

from __future__ import annotations

import csv
import datetime
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

# what tells one measurement from another; rows of the same measurement agree on all of them (rows written before
# `measured` and `cpu_id` were recorded leave them empty)
MEASUREMENT_KEYS = ("measured", "cpu_model", "cpu_id", "autocast", "torch_version", "git_commit")


def speed_rows(scratch: str, steps: int, train_tokens: int, plan: Optional[str] = None,
               measured: Optional[str] = None) -> List[Dict]:
    """One row per summary.json under scratch/*/, in the order the runs finished. measured: the
    measurement's UTC time (default now), the same on every row."""
    measured = measured or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for path in sorted(glob.glob(os.path.join(scratch, "*", "summary.json")), key=os.path.getmtime):
        with open(path) as f:
            s = json.load(f)
        c = s["config"]
        rows.append({**({"variant": os.path.basename(os.path.dirname(path))} if plan else {}),
                     "head": c["head"], "tied": bool(c.get("tie_embeddings")), "layers": c["layers"],
                     "d": c["d_model"], "threads": s["threads"], "steps": steps,
                     "tokens_per_s": round(s["tokens_per_s"], 1),
                     "minutes_per_epoch": round(train_tokens / s["tokens_per_s"] / 60, 1),
                     "output_share": round(s["output_share"], 3), "output_params": s["output_params"],
                     "total_params": s["total_params"], "autocast": s["autocast"], "cpu_model": s["cpu_model"],
                     "cpu_id": s.get("cpu_id", ""), "torch_version": s["torch_version"],
                     "git_commit": s["git_commit"], "measured": measured})
    if not rows:
        raise SystemExit(f"scratch: no summary.json under {scratch}/*/ (did every run fail?)")
    if plan:
        reference = rows[0]["tokens_per_s"]
        for r in rows:
            r["speed_vs_first"] = round(r["tokens_per_s"] / reference, 2)
    return rows


def add_measurement(path: str, rows: Sequence[Dict]) -> List[Dict]:
    """Every row of the CSV at path (if it exists) and then rows, written back to path: earlier measurements
    are kept as they are, a column that only one side has stays empty on the other. Returns all rows as read
    back from path."""
    kept: List[Dict] = []
    columns: List[str] = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            kept = list(reader)
    columns = list(dict.fromkeys(columns + [c for r in rows for c in r]))
    every = kept + list(rows)
    partial = path + ".tmp"
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(every)
    os.replace(partial, path)  # a stopped write never leaves the earlier measurements half-written
    with open(path, newline="") as f:
        return list(csv.DictReader(f))  # as the file holds them, so the Markdown shows what the CSV says


def measurements(rows: Sequence[Dict]) -> List[List[Dict]]:
    """rows grouped by measurement (MEASUREMENT_KEYS), in the order each first appears."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r.get(k, "")) for k in MEASUREMENT_KEYS), []).append(r)
    return list(groups.values())


def markdown(rows: Sequence[Dict], what: str, command: str, train_tokens: int) -> str:
    """The Markdown file: what was measured and how, then one table per measurement with its machine."""
    out = [f"# Transformer track: training speed, {what}\n",
           f"Measured by `{command}` (per row, `steps` steps of 16 x 128 tokens from scratch, the first steps "
           f"included), each time on a quiet machine. Minutes per epoch: the {train_tokens:,} training tokens of "
           "WikiText-2 in cl100k_base over tokens/s. Output share: the head's loss forward and backward over a "
           "whole step, timed on some steps. One table per measurement, oldest first: compare speeds within a "
           "table, never across tables (another machine, another day).\n"]
    hidden = set(MEASUREMENT_KEYS)
    for group in measurements(rows):
        first = group[0]
        when = first.get("measured") or "date not recorded"
        chip = first.get("cpu_id") or "family and vector tier not recorded"
        out.append(f"## {when}: {first['cpu_model']} ({chip}), autocast {first['autocast']}, torch "
                   f"{first['torch_version']}, commit {first['git_commit']}\n")
        out.append(tabulate([{k: v for k, v in r.items() if k not in hidden} for r in group], headers="keys",
                            tablefmt="github") + "\n")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4):
        raise SystemExit("usage: python -m vqbench.reporting.speed_table SCRATCH STEPS NAME [PLAN]")
    scratch, steps, name = args[0], int(args[1]), args[2]
    plan = args[3] if len(args) == 4 and args[3] else None
    from vqbench.training.data import load_corpus
    train_tokens = load_corpus(vocabulary="cl100k_base").ids["train"].numel()
    base = os.path.join("results", "quality", name)
    every = add_measurement(base + ".csv", speed_rows(scratch, steps, train_tokens, plan))
    what = (f"each variant of `{plan}` at its size, flags and swept rate (the first row of each table is its "
            "reference; speed_vs_first: tokens/s over that row's; a learned map's re-assignments, every 500 "
            "steps, fall outside the steps timed)" if plan else "candidate sizes")
    command = f"PLAN={plan} bash scripts/size-transformer.sh" if plan else "bash scripts/size-transformer.sh"
    with open(base + ".md", "w") as f:
        f.write(markdown(every, what, command, train_tokens))
    return base + ".md"


if __name__ == "__main__":
    print(main())
