"""The results format, without torch: the row schema, op and metric names, the append-only results file
and one way to select rows. Read by compare, tables, plot and report; written by the sweep.

A results file is a CSV in long format: one row per (head spec, op, V, d, N, device, dtype, metric),
each with its provenance (versions, commit, device, threads, allocator, time) and the machine's
ceilings at the moment of measuring.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import time
from dataclasses import dataclass, fields
from typing import Iterable, List

from vqbench.ops import ALL_OPS, DECODE_OPS, DEFAULT_OPS, INTO_OPS, V_WIDE_OPS  # noqa: F401 (re-exported)

PARAMS_OP = "params"  # the unit that records parameter counts
TABLE_OPS = (PARAMS_OP, *ALL_OPS)

#: the metric rows of a measured unit: every one must be present for the unit to count as done. A timed
#: unit stores what was measured and its op's counts; its floor is derived from them (vqbench.floors).
PARAMS_METRICS = ("params", "param_bytes")
TIMED_METRICS = ("time", "flops_analytic", "flops_counted", "peak_memory", "intermediate_bytes", "bytes_read",
                 "bytes_written", "ceilings")
#: what a timed unit held in files written before floors were derived at table time
LEGACY_TIMED_METRICS = ("time", "flops_analytic", "flops_counted", "peak_memory", "intermediate_bytes", "floor")


@dataclass
class Row:
    """One results row; the field order is the CSV's column order."""
    head: str = ""
    spec: str = ""
    op: str = ""
    metric: str = ""
    unit: str = ""
    V: str = ""
    d: str = ""
    N: str = ""
    device: str = ""
    dtype: str = ""
    value: str = ""
    spread: str = ""
    status: str = ""
    reason: str = ""
    vqbench_version: str = ""
    git_commit: str = ""
    torch_version: str = ""
    device_name: str = ""
    cpu_model: str = ""
    threads: str = ""
    timestamp: str = ""
    cpu_allocator: str = ""
    gemm_flop_s: str = ""
    copy_byte_s: str = ""
    fill_byte_s: str = ""
    seed: str = ""
    code_fingerprint: str = ""
    ceiling_drift: str = ""


COLUMNS = [f.name for f in fields(Row)]
#: the columns of files written while the VQ-only K column was part of the schema (it followed d); such files
#: still read, and a resumed one keeps its header (K left empty: the spec holds it)
LEGACY_COLUMNS = COLUMNS[:COLUMNS.index("d") + 1] + ["K"] + COLUMNS[COLUMNS.index("d") + 1:]
UNIT_KEY = ("spec", "op", "V", "d", "N", "device", "dtype")


def unit_key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in UNIT_KEY)


def select_rows(rows: Iterable[dict], **criteria) -> List[dict]:
    """Rows whose column ``name`` is one of the values given for it (a single value or a collection;
    compared as text). select_rows(rows, op=["loss", "train"], N=2048)."""
    wanted = {k: {str(x) for x in (v if isinstance(v, (list, tuple, set, frozenset)) else [v])}
              for k, v in criteria.items()}
    return [r for r in rows if all(str(r.get(k)) in values for k, values in wanted.items())]


def read_rows(path: str) -> List[dict]:
    """The ok and skipped rows of a results file; ValueError when the file is not one."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"results file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a results file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in UNIT_KEY + ("metric", "value", "status") if c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"{path} is not a vqbench results file (no column {missing[0]!r})")
            return [row for row in reader if row.get("status") in ("ok", "skipped")]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a readable CSV file ({type(error).__name__})") from None


def complete_units(rows: Iterable[dict]) -> set:
    """Unit keys whose rows are complete: a skipped row, or every metric of the unit's op."""
    seen, done = {}, set()
    for row in rows:
        key = unit_key(row)
        if row.get("status") == "skipped":
            done.add(key)
        elif row.get("status") == "ok":
            seen.setdefault(key, set()).add(row.get("metric"))
    for key, metrics in seen.items():
        if key[UNIT_KEY.index("op")] == PARAMS_OP:
            complete = set(PARAMS_METRICS) <= metrics
        else:
            complete = set(TIMED_METRICS) <= metrics or set(LEGACY_TIMED_METRICS) <= metrics
        if complete:
            done.add(key)
    return done


class ResultsFile:
    """Append-only CSV of result rows; knows which (config, op) units it holds complete.

    Holds an exclusive lock (``PATH.lock``) while open, so two sweeps never write one file. A unit is
    done only when all its metric rows are there (or its skipped row); on opening, the lines of
    incomplete units (a kill, a full disk) move to ``PATH.incomplete-TIME`` and the unit is measured
    again. Nothing is ever deleted.
    """

    def __init__(self, path: str):
        self.path = path
        self.columns = COLUMNS
        self.done = set()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = open(path + ".lock", "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ValueError(f"results file {path}: another vqbench process is writing it "
                             f"(lock {path}.lock); wait for it or choose another --name") from None
        if os.path.exists(path):
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if header == LEGACY_COLUMNS:
                self.columns = LEGACY_COLUMNS
            elif header != COLUMNS:
                self.close()
                raise ValueError(f"results file {path}: its columns are not this vqbench's "
                                 f"(an older sweep or another file); measure into a new file instead")
            self._set_aside_incomplete()
            for row in read_rows(path):
                self.done.add(unit_key(row))
        else:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)

    def append(self, rows: Iterable[dict]) -> None:
        """Write one unit's rows (dicts with Row's keys) in one write: a kill leaves whole units."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        rows = list(rows)
        writer.writerows(rows)
        with open(self.path, "a", newline="") as f:
            f.write(buffer.getvalue())  # one write per unit: a kill leaves whole units
            f.flush()
        for row in rows:
            self.done.add(unit_key(row))

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _set_aside_incomplete(self):
        """Move the lines of incomplete units (and a torn last line) to PATH.incomplete-TIME."""
        with open(self.path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
        header, body = lines[0], lines[1:]
        torn = [body.pop()] if body and not body[-1].endswith("\n") else []
        rows = list(csv.DictReader([header] + body))
        complete = complete_units(rows)
        keep = [line for line, row in zip(body, rows) if unit_key(row) in complete]
        aside = [line for line, row in zip(body, rows) if unit_key(row) not in complete] + torn
        if not aside:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with open(f"{self.path}.incomplete-{stamp}", "a", newline="") as f:
            f.writelines([header] + [line if line.endswith("\n") else line + "\n" for line in aside])
        with open(self.path + ".tmp", "w", newline="") as f:
            f.writelines([header] + keep)
        os.replace(self.path + ".tmp", self.path)
