"""Each timed row's floor, derived when tables, figures and the report are built (no torch).

Floor of an op (seconds): the larger of its matrix-product FLOPs (the analytic count, or the FLOPs
torch.utils.flop_counter counted in the call when fewer) over the GEMM rate and its least memory traffic
(bytes read over the copy rate plus bytes written over the fill rate). A row's "x over floor" is its
median time over this floor: 1x would be perfect, and below 1x the floor would not be one.

A results row stores what was measured: the time, the counts of its op (vqbench.measuring.ops: ``flops_analytic``,
``flops_counted``, ``bytes_read``, ``bytes_written``) and the machine's ceilings measured in that run (a
``ceilings`` row, vqbench.measuring.ceilings). The floor is computed here from them, so a better floor model never
stales a time. Files written before the counts were stored hold a ``floor`` row instead: its ceilings are
used, and its stored value where the file has no byte counts (``floor_source`` says which).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List

#: the metrics a floor is derived from; "floor" rows of older files carry their ceilings
COUNT_METRICS = ("flops_analytic", "flops_counted", "bytes_read", "bytes_written")
CEILING_COLUMNS = ("gemm_flop_s", "copy_byte_s", "fill_byte_s")
_KEY = ("file", "spec", "op", "V", "d", "N", "device", "dtype", "cpu_allocator")


def floor_seconds(flops: float, read_bytes: float, written_bytes: float, ceilings) -> float:
    """max(FLOPs / GEMM rate, read / copy rate + written / fill rate); ceilings has gemm_flop_s, copy_byte_s,
    fill_byte_s."""
    compute = flops / float(ceilings.gemm_flop_s)
    memory = read_bytes / float(ceilings.copy_byte_s) + written_bytes / float(ceilings.fill_byte_s)
    return max(compute, memory)


class _Rates:
    def __init__(self, row: dict):
        self.gemm_flop_s, self.copy_byte_s, self.fill_byte_s = (float(row[c]) for c in CEILING_COLUMNS)


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def derive_floor_rows(rows: Iterable[dict]) -> List[dict]:
    """One ``floor`` row per timed unit whose ceilings are known: derived from its counts and ceilings, or the
    stored floor of an older file without byte counts. Each copies the unit's time row's columns (provenance
    included) and adds ``floor_source`` ("derived" or "stored") and the ceilings it used."""
    units: Dict[tuple, Dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row.get("status") == "ok" and row.get("metric") in ("time", "ceilings", "floor", *COUNT_METRICS):
            units[tuple(row.get(k, "") for k in _KEY)][row["metric"]] = row
    out = []
    for metrics in units.values():
        floor = _unit_floor(metrics)
        if floor is not None:
            out.append(floor)
    return out


def _unit_floor(metrics: Dict[str, dict]):
    time_row = metrics.get("time")
    ceilings = metrics.get("ceilings") or metrics.get("floor")
    if time_row is None or ceilings is None or not all(ceilings.get(c) for c in CEILING_COLUMNS):
        return None
    base = {**time_row, **{c: ceilings[c] for c in CEILING_COLUMNS},
            "ceiling_drift": ceilings.get("ceiling_drift", ""), "metric": "floor", "unit": "s", "spread": ""}
    if "bytes_read" in metrics and "bytes_written" in metrics and "flops_analytic" in metrics:
        flops = _number(metrics["flops_analytic"]["value"])
        counted = _number(metrics.get("flops_counted", {}).get("value"))
        if counted > 0:  # the FLOPs actually run when fewer than the analytic count (a worst case)
            flops = min(flops, counted)
        value = floor_seconds(flops, _number(metrics["bytes_read"]["value"]),
                              _number(metrics["bytes_written"]["value"]), _Rates(ceilings))
        return {**base, "value": repr(value), "floor_source": "derived"}
    if "floor" in metrics and metrics["floor"].get("value"):
        return {**base, "value": metrics["floor"]["value"], "floor_source": "stored"}
    return None


def with_floors(rows: Iterable[dict]) -> List[dict]:
    """The rows with every stored ``floor`` row replaced by the floors derived from them."""
    rows = list(rows)
    return [r for r in rows if r.get("metric") != "floor"] + derive_floor_rows(rows)
