"""A sweep over heads x V x d x K x N x ops x devices x dtypes, written row by row.

Rows are appended to a CSV file as each (config, op) finishes, so an interrupted sweep
loses nothing; ``resume=True`` skips every (config, op) already in the file. A configuration
that raises (out of memory, an invalid combination) is recorded as skipped with its reason;
guards skip, before trying, configurations whose analytic footprint or time exceeds a budget.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import time
import traceback
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import torch

from vqbench.floors import Ceilings, floor_seconds, least_traffic, measure_ceilings
from vqbench.measure import peak_memory_and_flops, time_op
from vqbench.ops import DEFAULT_OPS, analytic_flops, largest_intermediate, make_op
from vqbench.provenance import provenance
from vqbench.registry import make_head, parse_spec

COLUMNS = ["head", "spec", "op", "metric", "unit", "V", "d", "K", "N", "device", "dtype",
           "value", "spread", "status", "reason", "vqbench_version", "git_commit",
           "torch_version", "device_name", "cpu_model", "threads", "timestamp",
           "cpu_allocator", "gemm_flop_s", "copy_byte_s", "fill_byte_s"]
UNIT_KEY = ("spec", "op", "V", "d", "N", "device", "dtype")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
PARAMS_OP = "params"
CEILING_SIZES = {"full": {}, "small": {"gemm_size": 256, "buffer_bytes": 8 << 20}}


@dataclass
class Grid:
    heads: Sequence[str]
    vocab: Sequence[int]
    d_model: Sequence[int]
    codebook: Sequence[int] = (1024,)
    tokens: Sequence[int] = (512,)
    ops: Sequence[str] = DEFAULT_OPS
    devices: Sequence[str] = ("cpu",)
    dtypes: Sequence[str] = ("float32",)

    def specs(self) -> List[str]:
        """Head specs with vq's K filled in from ``codebook`` where a spec leaves it open."""
        out = []
        for spec in self.heads:
            name, options = parse_spec(spec)
            if name == "vq" and "K" not in options:
                rest = spec.partition(":")[2]
                out.extend(f"vq:K={k}" + (f",{rest}" if rest else "") for k in self.codebook)
            else:
                out.append(spec)
        return out


@dataclass
class Budget:
    memory_bytes: Optional[float] = None    # analytic footprint above this: skipped
    seconds_per_call: Optional[float] = None  # estimated time of one call above this: skipped
    min_run_time: float = 0.5                # timing budget per op (torch.utils.benchmark)


@dataclass
class SweepStats:
    measured: int = 0
    skipped: int = 0
    resumed: int = 0


class ResultsFile:
    """Append-only CSV of result rows; knows which (config, op) units it holds complete.

    Holds an exclusive lock (``PATH.lock``) while open, so two sweeps never write one file. A unit is
    done only when all its metric rows are there (or its skipped row); on opening, the lines of
    incomplete units (a kill, a full disk) move to ``PATH.incomplete-TIME`` and the unit is measured
    again. Nothing is ever deleted.
    """

    def __init__(self, path: str):
        self.path = path
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
            if header != COLUMNS:
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
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
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


# the metric rows of a measured unit: every one must be present for the unit to count as done
UNIT_METRICS = {PARAMS_OP: {"params", "param_bytes"}}
TIMED_METRICS = {"time", "flops_analytic", "flops_counted", "peak_memory", "intermediate_bytes", "floor"}


def complete_units(rows: Iterable[dict]) -> set:
    """Unit keys whose rows are complete: a skipped row, or every metric of the unit's op."""
    seen = {}
    skipped_units = set()
    for row in rows:
        key = unit_key(row)
        if row.get("status") == "skipped":
            skipped_units.add(key)
        elif row.get("status") == "ok":
            seen.setdefault(key, set()).add(row.get("metric"))
    done = set(skipped_units)
    for key, metrics in seen.items():
        op = key[UNIT_KEY.index("op")]
        if UNIT_METRICS.get(op, TIMED_METRICS) <= metrics:
            done.add(key)
    return done


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


def unit_key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in UNIT_KEY)


def make_inputs(vocab: int, d: int, n: int, device: str, dtype: torch.dtype, seed: int = 0):
    """The same inputs for every head: hidden [N, d] ~ N(0, 1); targets [N] from a Zipf law."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    target = torch.multinomial(zipf, n, replacement=True, generator=g).to(device)
    return hidden, target


def run_sweep(grid: Grid, results: ResultsFile, budget: Budget = Budget(), threads: Optional[int] = None,
              resume: bool = False, progress: bool = True, seed: int = 0, ceilings: str = "full") -> SweepStats:
    """Measure every unit of ``grid`` into ``results``; ``ceilings="small"`` measures the machine's ceilings on
    small operands (smoke tests: floors then mean nothing)."""
    from tqdm.auto import tqdm

    if threads is None:
        threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    stats = SweepStats()
    specs = grid.specs()
    total = len(grid.devices) * len(grid.dtypes) * len(grid.vocab) * len(grid.d_model) * len(specs) \
        * len(grid.tokens) * (len(grid.ops) + 1)
    bar = tqdm(total=total, disable=not progress, desc="vqbench", unit="op", dynamic_ncols=True)
    for device in grid.devices:
        for dtype_name in grid.dtypes:
            dtype = DTYPES[dtype_name]
            for vocab in grid.vocab:
                for d in grid.d_model:
                    for spec in specs:
                        context = dict(spec=spec, V=vocab, d=d, device=device, dtype=dtype_name)
                        units = [(n, op) for n in grid.tokens for op in (PARAMS_OP, *grid.ops)]
                        todo = [(n, op) for n, op in units
                                if not (resume and unit_key({**context, "N": n, "op": op}) in results.done)]
                        stats.resumed += len(units) - len(todo)
                        bar.update(len(units) - len(todo))
                        if not todo:
                            continue
                        bar.set_postfix_str(f"{spec} V={vocab} d={d}")
                        # measured again before every head: on a shared machine the rates drift
                        # over minutes, and a floor is fair only against the rate of its moment
                        rates = measure_ceilings(torch.device(device), dtype, threads, **CEILING_SIZES[ceilings])
                        head = None
                        try:
                            torch.manual_seed(seed)
                            head = make_head(spec, vocab, d, device=device, dtype=dtype)
                            build_error = None
                        except Exception as error:  # invalid combination, OOM while building
                            build_error = error
                        for n, op in todo:
                            base = {**base_row(head, context, n, op, threads), **rates.as_row()}
                            if build_error is not None:
                                rows = [skipped(base, f"build: {describe(build_error)}")]
                            else:
                                rows = measure_unit(head, base, op, n, rates, budget, seed)
                            results.append(rows)
                            if rows[0]["status"] == "ok":
                                stats.measured += 1
                            else:
                                stats.skipped += 1
                            bar.update(1)
                        del head
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
    bar.close()
    return stats


def base_row(head, context: dict, n: int, op: str, threads: int) -> dict:
    name = parse_spec(context["spec"])[0]
    k = getattr(head, "K", "") if head is not None else parse_spec(context["spec"])[1].get("K", "")
    return {**context, "head": name, "K": k, "N": n, "op": op, "spread": "", "status": "ok",
            "reason": "", **provenance(context["device"], threads)}


def skipped(base: dict, reason: str) -> dict:
    return {**base, "metric": "", "unit": "", "value": "", "status": "skipped", "reason": reason}


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def measure_unit(head, base: dict, op: str, n: int, ceilings: Ceilings, budget: Budget,
                 seed: int) -> List[dict]:
    """Rows for one (config, op): params, or flops, memory and time of the op."""
    device = torch.device(base["device"])
    elem = torch.empty((), dtype=next(head.parameters()).dtype).element_size()
    if op == PARAMS_OP:
        count = head.num_parameters()
        return [{**base, "metric": "params", "unit": "count", "value": count},
                {**base, "metric": "param_bytes", "unit": "bytes", "value": count * elem}]
    hidden, target = make_inputs(base["V"], base["d"], n, base["device"], next(head.parameters()).dtype, seed)
    rate = ceilings.gemm_flop_s
    try:
        flops = analytic_flops(head, op, n, target)
        intermediate = largest_intermediate(head, op, n) * elem
        footprint = intermediate * (3 if op in ("train", "loss") else 2) \
            + head.num_parameters() * elem * (2 if op == "train" else 1)
        if budget.memory_bytes is not None and footprint > budget.memory_bytes:
            return [skipped(base, f"memory guard: needs about {footprint / 2**30:.1f} GiB, "
                                  f"budget {budget.memory_bytes / 2**30:.1f} GiB")]
        if budget.seconds_per_call is not None and flops / rate > budget.seconds_per_call:
            return [skipped(base, f"time guard: about {flops / rate:.1f} s per call at "
                                  f"{rate / 1e9:.0f} GFLOP/s, budget {budget.seconds_per_call:g} s")]
        fn = make_op(head, op, hidden, target)
        peak, counted = peak_memory_and_flops(fn, device)
        # the call above was the warm-up
        timing = time_op(fn, device, int(base["threads"]), min_run_time=budget.min_run_time, warmup=False)
    except NotImplementedError as error:
        return [skipped(base, f"not applicable: {error}")]
    except Exception as error:  # out of memory, a failing kernel: recorded, the sweep goes on
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if os.environ.get("VQBENCH_DEBUG"):
            traceback.print_exc()
        return [skipped(base, describe(error))]
    finally:
        if head is not None:
            head.zero_grad(set_to_none=True)
    return [
        {**base, "metric": "time", "unit": "s", "value": timing.median, "spread": timing.iqr},
        {**base, "metric": "flops_analytic", "unit": "FLOP", "value": flops},
        {**base, "metric": "flops_counted", "unit": "FLOP", "value": counted},
        {**base, "metric": "peak_memory", "unit": "bytes", "value": peak},
        {**base, "metric": "intermediate_bytes", "unit": "bytes", "value": intermediate},
        {**base, "metric": "floor", "unit": "s",
         # the FLOPs actually run when fewer than the analytic count (adaptive predict's is a worst case)
         "value": floor_seconds(min(flops, counted) if counted else flops, *least_traffic(head, op, n, elem),
                                ceilings)},
    ]
