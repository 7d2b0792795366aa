"""Citable tables from result rows: one table per (metric, op), one unit per table.

Rows are heads with their options, columns the vocabulary size V; each caption states the
metric, op, unit, device, dtype, threads, torch version and the fixed sizes. Ratio tables
put every head against full softmax (x faster; % of parameters).
"""

from __future__ import annotations

import csv
import io
import re
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional

from tabulate import tabulate

from vqbench.reporting.floors import with_floors
from vqbench.results import TABLE_OPS

# metric -> (title, [(unit label, divisor), ...] from small to large)
METRICS = OrderedDict([
    ("params", ("Trainable parameters", [("count", 1), ("thousands", 1e3), ("millions", 1e6)])),
    ("time", ("Latency, median of repeated runs", [("µs", 1e-6), ("ms", 1e-3), ("s", 1)])),
    ("peak_memory", ("Peak memory allocated by the op (measured)",
                     [("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30)])),
    ("intermediate_bytes", ("Largest intermediate tensor (analytic)",
                            [("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30)])),
    ("flops_analytic", ("Matrix-product FLOPs, analytic / counted by torch.utils.flop_counter",
                        [("MFLOP", 1e6), ("GFLOP", 1e9), ("TFLOP", 1e12)])),
])
# metrics grouped with another metric's table: counted FLOPs shown next to the analytic count;
# the floor (vqbench.reporting.floors) gives each latency table its "x over floor" table
COMPANION = {"flops_counted": "flops_analytic", "floor": "time"}
SHOWN_INSIDE = {"flops_counted"}
OP_ORDER = list(TABLE_OPS)
SPREAD_FLAG = 0.10   # IQR / median above this is flagged
DRIFT_FLAG = 0.25    # ceilings before and after a head differing by more than this: the floor is flagged
BASELINE = "softmax"


class TableKey(NamedTuple):
    """What a table shows: one metric of one op at fixed device, dtype, d and N (None for params)."""
    metric: str
    op: str
    device: str
    dtype: str
    d: int
    n: Optional[int]


TABLE_KINDS = ("values", "ratio", "floor")  # measured values; against softmax; over the op's floor


@dataclass
class Table:
    key: TableKey
    kind: str
    caption: str
    headers: List[str]
    body: List[List[str]]
    notes: List[str] = field(default_factory=list)


def _pick_unit(metric: str, values: List[float]):
    units = METRICS[metric][1]
    largest = max(values) if values else 0
    chosen = units[0]
    for unit in units:
        if largest >= unit[1]:
            chosen = unit
    return chosen


def _format(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def build_tables(rows: List[dict]) -> List[Table]:
    """Group rows into tables: for each TableKey its values, and where they apply the ratio and floor tables
    (floors derived from each row's counts and ceilings now, vqbench.reporting.floors)."""
    groups: Dict[TableKey, List[dict]] = defaultdict(list)
    for row in with_floors(rows):
        metric = COMPANION.get(row["metric"], row["metric"]) if row["status"] == "ok" else None
        if row["status"] == "ok" and metric not in METRICS:
            continue
        fixed = (row["device"], row["dtype"], int(row["d"]))
        if row["op"] == "params":
            groups[TableKey("params", "params", *fixed, None)].append(row)
        elif row["status"] == "ok":
            groups[TableKey(metric, row["op"], *fixed, int(row["N"]))].append(row)
        else:  # a skipped unit shows in every metric's table for its op
            for name in METRICS:
                if name != "params":
                    groups[TableKey(name, row["op"], *fixed, int(row["N"]))].append(row)
    tables = []
    for key in sorted(groups, key=_table_order):
        table = _one_table(key, groups[key])
        if table is not None:
            tables.append(table)
            for derived in (_ratio_table(key, groups[key]), _floor_table(key, groups[key])):
                if derived is not None:
                    tables.append(derived)
    return tables


def _table_order(key: TableKey):
    return (key.device, key.dtype, key.d, -1 if key.n is None else key.n,
            OP_ORDER.index(key.op) if key.op in OP_ORDER else 99, list(METRICS).index(key.metric))


def _cells(group_rows, metric):
    cells, specs, vocab, spread, reasons = {}, [], set(), {}, {}
    for row in group_rows:
        spec, v = row["spec"], int(row["V"])
        if spec not in specs:
            specs.append(spec)
        vocab.add(v)
        if row["status"] == "ok" and row["metric"] == metric and (spec, v) not in cells:
            cells[(spec, v)] = float(row["value"])
            if row.get("spread"):
                spread[(spec, v)] = float(row["spread"])
        elif row["status"] != "ok":
            reasons.setdefault((spec, v), row["reason"])
    return cells, specs, sorted(vocab), spread, reasons


def _caption_env(group_rows, key: TableKey):
    device, dtype, d, n = key.device, key.dtype, key.d, key.n
    first = next((r for r in group_rows if r.get("device_name")), group_rows[0])
    sizes = f"d={d}" + ("" if n is None else f", N={n} tokens")
    commits = ", ".join(sorted({r.get("git_commit") or "?" for r in group_rows}))
    allocator = ", THP allocator" if device == "cpu" and first.get("cpu_allocator") == "thp" else ""
    return (f"{first.get('device_name', device)} ({device}{allocator}), {dtype}, {first.get('threads', '?')} threads, "
            f"torch {first.get('torch_version', '?')}, vqbench {commits}; {sizes}; "
            f"columns: vocabulary size V")


def _one_table(key, group_rows):
    metric, op = key.metric, key.op
    cells, specs, vocab, spread, reasons = _cells(group_rows, metric)
    if not cells:
        return None
    companion = [name for name, main in COMPANION.items() if main == metric and name in SHOWN_INSIDE]
    # a count that was not taken (its row says why) is not shown as zero
    extra = _cells([r for r in group_rows if not (r["metric"] in companion and r.get("reason"))],
                   companion[0])[0] if companion else {}
    label, divisor = _pick_unit(metric, list(cells.values()))
    title = METRICS[metric][0]
    body, notes, flagged = [], [], False
    for spec in specs:
        line = [spec]
        for v in vocab:
            if (spec, v) in cells:
                text = _format(cells[(spec, v)] / divisor)
                if (spec, v) in extra:
                    text += " / " + _format(extra[(spec, v)] / divisor)
                if (spec, v) in spread and cells[(spec, v)] > 0 \
                        and spread[(spec, v)] / cells[(spec, v)] > SPREAD_FLAG:
                    text += " †"
                    flagged = True
                line.append(text)
            elif (spec, v) in reasons:
                notes.append(f"{spec}, V={v}: {reasons[(spec, v)]}")
                line.append(f"skip[{len(notes)}]")
            else:
                line.append("")
        body.append(line)
    caption = (f"{title}, in {label}." if op == "params" else f"{title} of `{op}`, in {label}.")
    caption += f" {_caption_env(group_rows, key)}."
    if flagged:
        caption += f" † marks an interquartile range above {SPREAD_FLAG:.0%} of the median."
    return Table(key, "values", caption, ["head", *[f"V={v}" for v in vocab]], body, notes)


#: options that leave a softmax's function unchanged: its chunked loss and its padded matrix compute the same
EXACT_SOFTMAX_OPTIONS = {"chunk", "pad"}


def is_exact_softmax(spec: str) -> bool:
    """True for full softmax computed any exact way: vqbench's (plain, chunked, padded) and the peers' fused
    losses over the same weight; a bias makes another model."""
    from vqbench.heads.registry import parse_spec
    name, options = parse_spec(spec)
    return name == "peer" or (name == BASELINE and set(options) <= EXACT_SOFTMAX_OPTIONS)


def fastest_softmax(cells: dict, vocab) -> dict:
    """{V: (spec, time)} of the fastest exact softmax variant per column of a latency table's cells."""
    best = {}
    for (spec, v), value in cells.items():
        if is_exact_softmax(spec) and value > 0 and (v not in best or value < best[v][1]):
            best[v] = (spec, value)
    return best


def _ratio_table(key, group_rows):
    metric, op = key.metric, key.op
    if metric not in ("time", "params"):
        return None
    cells, specs, vocab, _, _ = _cells(group_rows, metric)
    if BASELINE not in specs:
        return None
    best = fastest_softmax(cells, vocab) if metric == "time" else {}

    def cell(spec, v):
        base, value = best[v][1] if v in best else cells.get((BASELINE, v)), cells.get((spec, v))
        if base is None or value is None or value == 0:
            return ""
        return f"{base / value:.2f}x" if metric == "time" else f"{100 * value / base:.2f}%"

    if metric == "time":
        named = "; ".join(f"V={v}: {best[v][0]}" for v in vocab if v in best)
        caption = (f"Speed-up of `{op}` over the fastest exact full softmax of this precision (its time / head time; "
                   f"above 1x is faster; the softmax variants and peers, fastest per column: {named}). "
                   f"{_caption_env(group_rows, key)}.")
    else:
        caption = f"Parameters as a share of full softmax's. {_caption_env(group_rows, key)}."
    return _derived(key, "ratio", caption, specs, vocab, cell)


def _floor_table(key, group_rows):
    """Median time over the op's floor (vqbench.reporting.floors): 1x is as fast as the machine allows."""
    metric, op = key.metric, key.op
    if metric != "time":
        return None
    times, specs, vocab, _, _ = _cells(group_rows, "time")
    floors = _cells(group_rows, "floor")[0]
    if not floors:
        return None
    drifted = {(r["spec"], int(r["V"])) for r in group_rows if r["metric"] == "floor" and r.get("ceiling_drift")
               and float(r["ceiling_drift"]) > DRIFT_FLAG}

    def cell(spec, v):
        t, f = times.get((spec, v)), floors.get((spec, v))
        return (f"{t / f:.2f}x" + (" ‡" if (spec, v) in drifted else "")) if t is not None and f else ""

    def span(column, digits):
        values = sorted({float(r[column]) / 1e9 for r in group_rows if r.get(column)})
        if not values:  # a file without the ceiling columns (written by another tool)
            return "?"
        low, high = f"{values[0]:.{digits}f}", f"{values[-1]:.{digits}f}"
        return low if low == high else f"{low}-{high}"

    measured = ("before and after each head, the better used" if any(r.get("ceiling_drift") for r in group_rows)
                else "before each head")
    ceilings = (f"ceilings, measured {measured}: GEMM {span('gemm_flop_s', 0)} GFLOP/s, copy "
                f"{span('copy_byte_s', 1)} GB/s, fill {span('fill_byte_s', 1)} GB/s")
    caption = (f"Time of `{op}` over its floor, max(FLOPs / GEMM rate, least bytes / bandwidth): 1x is the "
               f"machine's limit ({ceilings}). {_caption_env(group_rows, key)}.")
    if drifted:
        caption += f" ‡ marks a floor whose ceilings moved by more than {DRIFT_FLAG:.0%} during the head's run."
    return _derived(key, "floor", caption, specs, vocab, cell)


def _derived(key, kind, caption, specs, vocab, cell) -> Table:
    """A table computed from others: heads as rows, V as columns, cell(spec, V) as text."""
    return Table(key, kind, caption, ["head", *[f"V={v}" for v in vocab]],
                 [[spec, *[cell(spec, v) for v in vocab]] for spec in specs])


def render(tables: List[Table], fmt: str = "github") -> str:
    """Render tables as markdown ("github"), "latex", "csv" or any tabulate format."""
    parts = []
    for number, table in enumerate(tables, 1):
        notes = table.notes
        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow([f"# Table {number}. {table.caption}"])
            writer.writerow(table.headers)
            writer.writerows(table.body)
            for i, note in enumerate(notes, 1):
                writer.writerow([f"# skip[{i}]: {note}"])
            parts.append(buffer.getvalue())
        elif fmt.startswith("latex"):
            body = tabulate(table.body, table.headers, tablefmt="latex_booktabs", disable_numparse=True)
            note_text = "".join(f"\n% skip[{i}]: {_latex_escape(n)}" for i, n in enumerate(notes, 1))
            parts.append("\\begin{table}[ht]\n\\centering\n\\small\n"
                         f"\\caption{{{_latex_escape(table.caption)}}}\n{body}{note_text}\n\\end{{table}}\n")
        else:
            body = tabulate(table.body, table.headers, tablefmt=fmt, disable_numparse=True)
            note_text = "".join(f"\n- skip[{i}]: {n}" for i, n in enumerate(notes, 1))
            heading = f"**Table {number}.** {table.caption}" if fmt == "github" else \
                f"Table {number}. {table.caption}"
            parts.append(f"{heading}\n\n{body}\n{note_text}\n")
    return "\n".join(parts)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "`": "",
          "†": r"$\dagger$", "µ": r"$\mu$"}


def _latex_escape(text: str) -> str:
    return re.sub("|".join(re.escape(k) for k in _LATEX), lambda m: _LATEX[m.group(0)], text)
