"""Whether the machine was busy while a run measured, so that a contended run says so.

Two signs, both measured during the run:
    others  CPU time that other processes spent on the cores this run may use (per-core busy time from
            /proc/stat minus this process's own CPU time), as cores busy on average; on a machine the run
            does not fill (threads < cores) the spare cores may be used without contention;
    drift   how far the machine's ceilings moved between the before and after measurements of a head
            (the floor rows' ceiling_drift, vqbench.reporting.floors): a neighbour starting or stopping moves them.
A run is busy when others exceed the spare cores by more than BUSY_SLACK_CORES or a drift exceeds
DRIFT_FLAG. Each run appends one record to NAME.load.jsonl beside NAME.csv; tables rendered from the
file name the records whose time span overlaps their rows.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from typing import Iterable, List, Optional

from vqbench.reporting.tables import DRIFT_FLAG  # ceilings moved by more than this during a head's run: flagged

BUSY_SLACK_CORES = 0.1  # other processes' average use of the run's cores tolerated beyond its spare cores
LOAD_SUFFIX = ".load.jsonl"


def load_path(csv_path: str) -> str:
    """NAME.load.jsonl beside NAME.csv."""
    return os.path.splitext(csv_path)[0] + LOAD_SUFFIX


def busy_seconds(cores: Optional[Iterable[int]] = None) -> Optional[float]:
    """CPU seconds the given cores (all when None) spent outside idle and iowait since boot, from
    /proc/stat; None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = None if cores is None else {f"cpu{c}" for c in cores}
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or (wanted is not None and name not in wanted):
            continue
        numbers = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        ticks += sum(numbers) - numbers[3] - numbers[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process, every thread included."""
    t = os.times()
    return t.user + t.system


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class LoadMeter:
    """Measures other processes' CPU time on this process's cores (and elsewhere) between start and stop."""

    def __init__(self, threads: int):
        self.threads = threads
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            list(range(os.cpu_count() or 1))

    def start(self) -> "LoadMeter":
        self.started, self.wall = now(), time.monotonic()
        self.mine, self.all, self.own = busy_seconds(self.cores), busy_seconds(), own_seconds()
        return self

    def stop(self, rows: List[dict], shard: str = "") -> dict:
        """The run's record: its cores and threads, others' average use of them and of the other cores,
        the largest ceiling drift among ``rows`` written since start, and the verdict."""
        wall = max(time.monotonic() - self.wall, 1e-9)
        mine, every, own = busy_seconds(self.cores), busy_seconds(), own_seconds() - self.own
        others = elsewhere = None
        if mine is not None and self.mine is not None:
            others = max(0.0, (mine - self.mine) - own) / wall
            elsewhere = max(0.0, (every - self.all) - (mine - self.mine)) / wall
        drift = max([float(r["ceiling_drift"]) for r in rows if r.get("metric") == "floor"
                     and r.get("ceiling_drift") and r.get("timestamp", "") >= self.started] or [0.0])
        spare = max(0, len(self.cores) - self.threads)
        reasons = []
        if others is not None and others > spare + BUSY_SLACK_CORES:
            reasons.append(f"other processes used {others:.2f} of the run's {len(self.cores)} cores on average "
                           f"({spare} spare)")
        if drift > DRIFT_FLAG:
            reasons.append(f"ceilings moved by up to {drift:.0%} during a head's run")
        return {"started": self.started, "ended": now(), "host": socket.gethostname(), "pid": os.getpid(),
                "shard": shard, "cores": self.cores, "threads": self.threads, "wall_s": round(wall, 3),
                "own_cpu_s": round(own, 3), "others_on_cores": None if others is None else round(others, 3),
                "others_elsewhere": None if elsewhere is None else round(elsewhere, 3),
                "ceiling_drift": round(drift, 3), "busy": bool(reasons), "why": "; ".join(reasons)}


def sentence(record: dict) -> str:
    """One line on a run's machine load: 'quiet' or 'BUSY' with the reasons."""
    others = record.get("others_on_cores")
    seen = ("other processes' CPU time unknown (no /proc/stat)" if others is None else
            f"others used {others:.2f} of {len(record['cores'])} cores on average, "
            f"{record.get('others_elsewhere') or 0:.2f} elsewhere")
    head = f"{record['host']} {record['started']} to {record['ended']}"
    head += f" ({record['shard']})" if record.get("shard") else ""
    if record["busy"]:
        return f"BUSY while measuring, {head}: {record['why']}; its timings are contended"
    return f"quiet while measuring, {head}: {seen}, ceilings moved at most {record['ceiling_drift']:.0%}"


def append_record(csv_path: str, record: dict) -> None:
    with open(load_path(csv_path), "a") as f:
        f.write(json.dumps(record) + "\n")


def records_for(csv_path: str, rows: List[dict]) -> List[dict]:
    """The load records beside ``csv_path`` whose run overlaps the time span of ``rows``."""
    stamps = sorted(r["timestamp"] for r in rows if r.get("timestamp"))
    if not stamps or not os.path.exists(load_path(csv_path)):
        return []
    out = []
    with open(load_path(csv_path)) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if isinstance(record, dict) and record.get("started", "~") <= stamps[-1] \
                    and record.get("ended", "") >= stamps[0]:
                out.append(record)
    return out


def note(records_by_file: dict, fmt: str = "github") -> str:
    """The tables' closing note: one line per run that measured the rows, busy runs first."""
    lines = [(record["busy"] is False, f"{os.path.basename(path)}: {sentence(record)}")
             for path, records in records_by_file.items() for record in records]
    if not lines:
        return ""
    busy = sum(1 for quiet, _ in lines if not quiet)
    title = (f"Machine load: {busy} of {len(lines)} runs measured on a busy machine" if busy
             else f"Machine load: all {len(lines)} runs measured on a quiet machine")
    prefix = {"latex": "% ", "csv": "# "}.get(fmt, "- ")
    return "\n".join([("% " if fmt == "latex" else "# " if fmt == "csv" else "") + title + "."]
                     + [prefix + text for _, text in sorted(lines, key=lambda pair: pair[0])]) + "\n"
