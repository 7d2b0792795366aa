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
import stat
import tempfile
import time
from dataclasses import dataclass, fields
from typing import Callable, Iterable, List, Optional

from vqbench.measuring.ops import ALL_OPS, DECODE_OPS, DEFAULT_OPS, INTO_OPS, V_WIDE_OPS  # noqa: F401 (re-exported)

PARAMS_OP = "params"  # the unit that records parameter counts
TABLE_OPS = (PARAMS_OP, *ALL_OPS)

#: the metric rows of a measured unit: every one must be present for the unit to count as done. A timed
#: unit stores what was measured and its op's counts; its floor is derived from them (vqbench.reporting.floors).
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

# a skip reason or an edited cell may exceed the csv module's 128 KiB default; a results file is read whole anyway
csv.field_size_limit(max(csv.field_size_limit(), 1 << 28))
UNIT_KEY = ("spec", "op", "V", "d", "N", "device", "dtype")


def unit_key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in UNIT_KEY)


def path_component_problem(name, suffix: str = "") -> str:
    """'' when name (a user's string: a --name, a plan's run name) can be one file name in a folder with
    suffix appended, else what is wrong with it."""
    if not isinstance(name, str) or not name or name.startswith("."):
        return "a string, not empty, not starting with '.'"
    if os.sep in name or (os.altsep and os.altsep in name) or "\0" in name:
        return "no path separators or NUL"
    limit = 255 - len(suffix.encode())  # NAME_MAX of every common file system
    if len(name.encode("utf-8", "surrogateescape")) > limit:
        return f"at most {limit} bytes, the file system's limit less the suffix {suffix!r}" if suffix else \
            f"at most {limit} bytes, the file system's limit"
    return ""


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
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file (a device or pipe?), not a results file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            missing = [c for c in UNIT_KEY + ("metric", "value", "status") if c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"{path} is not a vqbench results file (no column {missing[0]!r})")
            return [row for row in reader if row.get("status") in ("ok", "skipped")]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a readable CSV file ({type(error).__name__})") from None


def numeric_problem(rows) -> str:
    """'' when every ok row's V, d, N and value (and spread, when given) are numbers, else the first that is not."""
    for r in rows:
        for key, kind in (("V", int), ("d", int), ("N", int), ("value", float), ("spread", float)):
            cell = r.get(key) or ""
            if key == "spread" and not cell:
                continue
            try:
                kind(cell)
            except ValueError:
                where = f"{r.get('spec', '?')} {r.get('op', '?')} {r.get('metric', '?')}"
                return f"{where}: {key}={cell[:40]!r} is not a number"
    return ""


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

    Holds an exclusive lock (``PATH.lock``) while open, so two sweeps never write one file; everything that
    changes an existing file (the backup of ``overwrite``, setting incomplete units aside) happens only once
    the lock is held. A unit is done only when all its metric rows are there (or its skipped row); on opening,
    the records of incomplete units (a kill, a full disk) move to ``PATH.incomplete-TIME`` and the unit is
    measured again; ``set_aside_stale`` moves the units measured by code that has changed since to
    ``PATH.stale-TIME`` likewise, so that a resumed sweep measures exactly those again. Nothing is ever deleted: an ``overwrite`` moves
    the old file to a backup name no other file holds.
    """

    def __init__(self, path: str, overwrite: bool = False):
        self.path = path
        self.columns = COLUMNS
        self.done = set()
        self.backup = None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = _take_lock(path + ".lock", path)
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, overwrite: bool) -> None:
        if overwrite and os.path.lexists(self.path):
            self.backup = _unique_name(f"{self.path}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, self.backup)
        if os.path.exists(self.path):
            with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as f:
                header = next(csv.reader(f), None)
            if header == LEGACY_COLUMNS:
                self.columns = LEGACY_COLUMNS
            elif header != COLUMNS:
                raise ValueError(f"results file {self.path}: its columns are not this vqbench's "
                                 f"(an older sweep or another file); measure into a new file instead")
            self._set_aside(lambda rows: complete_units(r for r in rows if r is not None), "incomplete")
            for row in read_rows(self.path):
                self.done.add(unit_key(row))
        else:
            with open(self.path, "x", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(COLUMNS)

    def set_aside_stale(self, is_stale: Callable[[dict], bool]) -> Optional[str]:
        """Move every unit with a measured row for which is_stale(row) is True (the code that measured it has
        changed since) to PATH.stale-TIME, so that a resumed sweep measures those units again; returns that
        file's name, or None when no unit was stale."""
        aside = self._set_aside(
            lambda rows: {unit_key(r) for r in rows if r is not None}
            - {unit_key(r) for r in rows if r is not None and r.get("status") == "ok" and is_stale(r)}, "stale")
        self.done = {unit_key(row) for row in read_rows(self.path)} if aside else self.done
        return aside

    def set_aside_units(self, units: Iterable[tuple], label: str = "superseded") -> Optional[str]:
        """Move every row of these units (unit keys, as ``unit_key`` makes them) to PATH.LABEL-TIME, so that a
        resumed sweep measures them again; returns that file's name, or None when the file held none of them."""
        units = set(units)
        aside = self._set_aside(lambda rows: {unit_key(r) for r in rows if r is not None} - units, label)
        self.done = {unit_key(row) for row in read_rows(self.path)} if aside else self.done
        return aside

    def append(self, rows: Iterable[dict]) -> None:
        """Write one unit's rows (dicts with Row's keys) in one write: a kill leaves whole units."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        rows = list(rows)
        writer.writerows(rows)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            f.write(buffer.getvalue())  # one write per unit: a kill leaves whole units
            f.flush()
        for row in rows:
            self.done.add(unit_key(row))

    def close(self) -> None:
        """Release the lock and remove its file: the lock's inode is checked by every taker, so removing it
        while held never lets two writers in."""
        if self._lock is not None:
            try:
                os.unlink(self.path + ".lock")
            except OSError:
                pass
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _set_aside(self, kept_units, label: str) -> Optional[str]:
        """Move the records of every unit not in kept_units(rows) (rows: one dict per record, None for a torn or
        unreadable one, which always moves) to PATH.LABEL-TIME and return that name (None when nothing moved);
        a record may span lines (a quoted cell holding a line break), blank lines stay."""
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            records = csv_records(f)
        (header, _), body = records[0], records[1:]
        rows = [dict(zip(self.columns, fields)) if _well_formed(raw, fields, self.columns) else None
                for raw, fields in body]
        kept = kept_units(rows)
        keep, aside = [], []
        for (raw, fields), row in zip(body, rows):
            blank = fields == [] and raw.strip("\r\n") == ""
            (keep if blank or (row is not None and unit_key(row) in kept) else aside).append(raw)
        if not aside:
            return None
        directory, name = os.path.split(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")  # never a planted link
        aside_path = None
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                f.writelines([header] + keep)
            os.chmod(tmp, os.stat(self.path).st_mode & 0o777)
            aside_path = _unique_name(f"{self.path}.{label}-{time.strftime('%Y%m%d-%H%M%S')}")
            with open(aside_path, "w", newline="", encoding="utf-8") as f:
                f.writelines([header] + [r if r.endswith(("\n", "\r")) else r + "\n" for r in aside])
            os.replace(tmp, self.path)
        except BaseException:
            _remove_quietly(tmp)
            if aside_path:
                _remove_quietly(aside_path)
            raise
        return aside_path


def csv_records(lines: Iterable[str]) -> List[tuple]:
    """[(raw text, fields)] per CSV record of ``lines`` (an open file or list of lines, newlines kept): a quoted
    cell holding a line break makes one record of several lines; fields is None for an unreadable last record."""
    consumed = []

    def feed():
        for line in lines:
            consumed.append(line)
            yield line

    records = []
    reader = csv.reader(feed())
    try:
        for fields in reader:
            records.append(("".join(consumed), fields))
            consumed.clear()
    except csv.Error:
        records.append(("".join(consumed), None))
    return records


def _well_formed(raw: str, fields, columns=COLUMNS) -> bool:
    """A whole record with one field per column (a torn last line ends without a newline)."""
    return fields is not None and len(fields) == len(columns) and raw.endswith(("\n", "\r"))


def _take_lock(lock_path: str, path: str) -> int:
    """An exclusive flock on lock_path (never through a link), retried when a finishing writer removed the
    file between our open and our lock; ValueError when another process holds it or it cannot be a lock."""
    for _ in range(100):
        try:
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ValueError(f"results file {path}: cannot use its lock {lock_path} "
                             f"({error.strerror}; a folder or link there?)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"results file {path}: another vqbench process is writing it "
                             f"(lock {lock_path}); wait for it or choose another --name") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock_path, follow_symlinks=False)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise ValueError(f"results file {path}: its lock {lock_path} keeps changing; another process is using it")


def _unique_name(stem: str) -> str:
    """stem, or stem-2, stem-3, ...: the first name no file holds, created empty (O_EXCL) so that no
    other process can take it before we fill it."""
    for n in range(1, 10000):
        candidate = stem if n == 1 else f"{stem}-{n}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            return candidate
        except FileExistsError:
            continue
    raise ValueError(f"no free file name beside {stem}")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
