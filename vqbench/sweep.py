"""A sweep over heads x V x d x K x N x ops x devices x dtypes, written row by row.

Rows are appended to a CSV file as each (config, op) finishes, so an interrupted sweep
loses nothing; ``resume=True`` skips every (config, op) already in the file. A configuration
that raises (out of memory, an invalid combination) is recorded as skipped with its reason;
guards skip, before trying, configurations whose analytic footprint or time exceeds a budget.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import traceback
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import torch

from vqbench.fingerprint import code_fingerprint
from vqbench.floors import CeilingMeter, floor_seconds, least_traffic
from vqbench.measure import peak_memory_and_flops, time_op
from vqbench.frequency import default_token_counts
from vqbench.ops import analytic_flops, largest_intermediate, make_op
from vqbench.provenance import provenance
from vqbench.registry import expand_codebook, make_head, parse_spec
from vqbench.results import DEFAULT_OPS, PARAMS_OP, ResultsFile, unit_key

#: the precisions a sweep measures, by the name rows record: "tf32" is float32 parameters whose matrix
#: products run in TF32 (Ampere and later GPUs; see matmul_precision)
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
CEILING_SIZES = {"full": {}, "small": {"gemm_size": 256, "buffer_bytes": 1 << 20}}


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
            out.extend(dict.fromkeys(expand_codebook(spec, k) for k in self.codebook))
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


@contextlib.contextmanager
def matmul_precision(dtype_name: str):
    """Within: float32 matrix products in TF32 for dtype "tf32", strict for every other name, as most users
    leave them; the caller's setting is restored afterwards. set_float32_matmul_precision sets
    torch.backends.cuda.matmul.allow_tf32 (and oneDNN's on CPU) with it; setting allow_tf32 as well would mix
    torch's legacy and new precision APIs, which torch >= 2.9 refuses to read back."""
    try:
        saved = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller mixed the two APIs: nothing readable to restore
        saved = None
    torch.set_float32_matmul_precision("high" if dtype_name == "tf32" else "highest")
    try:
        yield
    finally:
        if saved is not None:
            torch.set_float32_matmul_precision(saved)


def make_inputs(vocab: int, d: int, n: int, device: str, dtype: torch.dtype, seed: int = 0):
    """The same inputs for every head: hidden [N, d] ~ N(0, 1); targets [N] from a Zipf law."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    target = torch.multinomial(default_token_counts(vocab), n, replacement=True, generator=g).to(device)
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
    configs = list(itertools.product(grid.devices, grid.dtypes, grid.vocab, grid.d_model, grid.specs()))
    bar = tqdm(total=len(configs) * len(grid.tokens) * (len(grid.ops) + 1), disable=not progress, desc="vqbench",
               unit="op", dynamic_ncols=True)
    meters = {}  # per precision: float32 and tf32 share a torch dtype, not a GEMM ceiling
    for device, dtype_name, vocab, d, spec in configs:
        meter = meters.setdefault(dtype_name, CeilingMeter(threads, **CEILING_SIZES[ceilings]))
        context = dict(spec=spec, V=vocab, d=d, device=device, dtype=dtype_name)
        units = [(n, op) for n in grid.tokens for op in (PARAMS_OP, *grid.ops)]
        todo = [(n, op) for n, op in units if not (resume and unit_key({**context, "N": n, "op": op}) in results.done)]
        stats.resumed += len(units) - len(todo)
        bar.update(len(units) - len(todo))
        if todo:
            bar.set_postfix_str(f"{spec} V={vocab} d={d}")
            with matmul_precision(dtype_name):
                measure_head(context, todo, results, budget, meter, threads, seed, stats, bar)
    bar.close()
    return stats


def measure_head(context: dict, todo, results: ResultsFile, budget: Budget, meter: "CeilingMeter", threads: int,
                 seed: int, stats: SweepStats, bar) -> None:
    """Measure one head configuration's units. Each unit's rows are appended as it finishes; its floor row
    follows once the ceilings have been measured again after the head (a floor uses the better of the
    rates before and after, and records how far they drifted)."""
    device, dtype = context["device"], DTYPES[context["dtype"]]
    head, build_error = None, None
    try:
        torch.manual_seed(seed)
        head = make_head(context["spec"], context["V"], context["d"], device=device, dtype=dtype)
    except Exception as error:  # invalid combination, OOM while building
        build_error = error
    meter.begin(torch.device(device), dtype)
    pending = []
    for n, op in todo:
        base = {**base_row(head, context, n, op, threads), "seed": seed}
        if isinstance(build_error, NotImplementedError):  # a peer without its package, say
            rows, floor_input = [skipped(base, f"not applicable: {build_error}")], None
        elif build_error is not None:
            rows, floor_input = [skipped(base, f"build: {describe(build_error)}")], None
        else:
            rows, floor_input = measure_unit(head, base, op, n, budget, seed, meter)
        results.append(rows)
        if floor_input is not None:
            pending.append((base, floor_input))
        stats.measured += rows[0]["status"] == "ok"
        stats.skipped += rows[0]["status"] != "ok"
        bar.update(1)
    del head
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    for base, (flops, read, written) in pending:
        rates, drift = meter.better(read + written)
        results.append([{**base, **rates.as_row(), "ceiling_drift": f"{drift:.3f}", "metric": "floor",
                         "unit": "s", "value": floor_seconds(flops, read, written, rates)}])


MEMORY_FRACTION = 0.6  # of RAM (CPU) or of the GPU's memory: the most a measured op may plan to use


def memory_budget(devices) -> float:
    """Bytes an op may plan to use on every one of ``devices`` (MEMORY_FRACTION of the smallest)."""
    budgets = []
    for device in devices:
        if str(device).startswith("cuda"):
            budgets.append(MEMORY_FRACTION * torch.cuda.get_device_properties(0).total_memory)
        else:
            budgets.append(MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return min(budgets)


def footprint_bytes(intermediate_elements: int, parameters: int, op: str, element_size: int) -> int:
    """Analytic bytes ``op`` holds at its peak: its largest intermediate (three times for loss and train,
    which keep it for backward, twice otherwise) plus the parameters (twice in train, with gradients).
    Before a head exists, N x V and V x d + V bound the first two for every head."""
    return element_size * (intermediate_elements * (3 if op in ("train", "loss") else 2)
                           + parameters * (2 if op == "train" else 1))


def base_row(head, context: dict, n: int, op: str, threads: int) -> dict:
    name = parse_spec(context["spec"])[0]
    k = getattr(head, "K", "") if head is not None else parse_spec(context["spec"])[1].get("K", "")
    return {**context, "head": name, "K": k, "N": n, "op": op, "spread": "", "status": "ok",
            "reason": "", **provenance(context["device"], threads),
            "code_fingerprint": _fingerprint(context["spec"])}


def _fingerprint(spec: str) -> str:
    try:
        return code_fingerprint(spec)
    except Exception:  # a spec that cannot be built is recorded as skipped; it measured no code
        return ""


def skipped(base: dict, reason: str) -> dict:
    return {**base, "metric": "", "unit": "", "value": "", "status": "skipped", "reason": reason}


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def measure_unit(head, base: dict, op: str, n: int, budget: Budget, seed: int, meter: CeilingMeter):
    """(rows, floor input) for one (config, op): the params rows, or the flops, memory and time rows of the op
    with (FLOPs, bytes read, bytes written) for its floor (None when there is no floor to compute)."""
    device = torch.device(base["device"])
    elem = torch.empty((), dtype=next(head.parameters()).dtype).element_size()
    if op == PARAMS_OP:
        count = head.num_parameters()
        return [{**base, "metric": "params", "unit": "count", "value": count},
                {**base, "metric": "param_bytes", "unit": "bytes", "value": count * elem}], None
    hidden, target = make_inputs(base["V"], base["d"], n, base["device"], next(head.parameters()).dtype, seed)
    try:
        flops = analytic_flops(head, op, n, target)
        traffic = least_traffic(head, op, n, elem, target)
        rate = meter.rates(sum(traffic)).gemm_flop_s  # the ceilings before the op
        intermediate = largest_intermediate(head, op, n) * elem
        footprint = footprint_bytes(largest_intermediate(head, op, n), head.num_parameters(), op, elem)
        if budget.memory_bytes is not None and footprint > budget.memory_bytes:
            return [skipped(base, f"memory guard: needs about {footprint / 2**30:.1f} GiB, "
                                  f"budget {budget.memory_bytes / 2**30:.1f} GiB")], None
        if budget.seconds_per_call is not None and flops / rate > budget.seconds_per_call:
            return [skipped(base, f"time guard: about {flops / rate:.1f} s per call at "
                                  f"{rate / 1e9:.0f} GFLOP/s, budget {budget.seconds_per_call:g} s")], None
        fn = make_op(head, op, hidden, target)
        peak, counted = peak_memory_and_flops(fn, device, count_flops=getattr(head, "FLOPS_COUNTABLE", True))
        # the call above was the warm-up
        timing = time_op(fn, device, int(base["threads"]), min_run_time=budget.min_run_time, warmup=False)
    except NotImplementedError as error:
        return [skipped(base, f"not applicable: {error}")], None
    except Exception as error:  # out of memory, a failing kernel: recorded, the sweep goes on
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if os.environ.get("VQBENCH_DEBUG"):
            traceback.print_exc()
        return [skipped(base, describe(error))], None
    finally:
        if head is not None:
            head.zero_grad(set_to_none=True)
    # the FLOPs actually run when fewer than the analytic count (adaptive predict's is a worst case)
    floor_input = (min(flops, counted) if counted else flops, *traffic)
    return [
        {**base, "metric": "time", "unit": "s", "value": timing.median, "spread": timing.iqr},
        {**base, "metric": "flops_analytic", "unit": "FLOP", "value": flops},
        {**base, "metric": "flops_counted", "unit": "FLOP", "value": counted or 0,
         "reason": "" if counted is not None else "not counted: fullgraph-compiled code cannot run under the counter"},
        {**base, "metric": "peak_memory", "unit": "bytes", "value": peak},
        {**base, "metric": "intermediate_bytes", "unit": "bytes", "value": intermediate},
    ], floor_input
