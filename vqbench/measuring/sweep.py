"""A sweep over head specs x V x d x N x ops x devices x dtypes, written row by row.

Rows are appended to a CSV file as each (config, op) finishes, so an interrupted sweep
loses nothing; ``resume=True`` skips every (config, op) already in the file. Rows carry each head's
canonical spec (``head.spec``), so ``softmax:bias=0`` and ``softmax`` are one head; any option is swept by
a brace set in its spec (``vq:K={256,1024}``, see vqbench.heads.registry.expand_spec). A configuration
that raises (out of memory, an invalid combination) is recorded as skipped with its reason;
guards skip, before trying, configurations whose analytic footprint or time exceeds a budget.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import os
import traceback
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import torch

from vqbench.measuring.ceilings import CeilingMeter
from vqbench.measuring.fingerprint import code_fingerprint
from vqbench.measuring.measure import make_inputs, matmul_precision, peak_memory_and_flops, time_op
from vqbench.measuring.ops import get_op
from vqbench.measuring.provenance import provenance
from vqbench.heads.registry import canonical_spec, check_spec, estimate_parameters, expand_spec, expand_specs, make_head, parse_spec
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
    tokens: Sequence[int] = (512,)
    ops: Sequence[str] = DEFAULT_OPS
    devices: Sequence[str] = ("cpu",)
    dtypes: Sequence[str] = ("float32",)

    def specs(self) -> List[str]:
        """The head specs with their brace sets expanded (``vq:K={256,1024}``: two specs)."""
        return expand_specs(self.heads)

    def configs(self):
        """(device, dtype, V, d, spec) of every head configuration, each spec canonical at its V and d (specs
        equal there, such as ``softmax`` and ``softmax:bias=0``, measured once)."""
        out = []
        for device, dtype, vocab, d in itertools.product(self.devices, self.dtypes, self.vocab, self.d_model):
            specs = dict.fromkeys(_canonical(spec, vocab, d) for spec in self.specs())
            out.extend((device, dtype, vocab, d, spec) for spec in specs)
        return out

    def unit_keys(self) -> set:
        """The key (vqbench.results.unit_key) of every unit the grid measures: each configuration's params unit
        and ops, at every token count."""
        return {unit_key({"spec": spec, "op": op, "V": vocab, "d": d, "N": n, "device": device, "dtype": dtype})
                for device, dtype, vocab, d, spec in self.configs()
                for n in self.tokens for op in (PARAMS_OP, *self.ops)}


def _canonical(spec: str, vocab: int, d: int) -> str:
    try:
        return canonical_spec(spec, vocab, d)
    except (ValueError, TypeError):  # recorded as skipped when the head is built
        return spec


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


def check_grid(grid: Grid) -> None:
    """Raise ValueError (one line: the spec, the grid point, the option) when a head spec has an option
    value that is wrong at a point of the grid, before anything is built or measured. A spec from a brace
    set (``vq:K={256,4096}``) is refused only where it fits no point of the grid; elsewhere that point is
    skipped with its reason, as an out-of-memory one."""
    points = list(itertools.product(grid.vocab, grid.d_model))
    for typed in grid.heads:
        expanded = expand_spec(typed)
        for candidate in expanded:
            errors = []
            for vocab, d in points:
                try:
                    check_spec(candidate, vocab, d)
                except (ValueError, TypeError) as error:
                    errors.append((vocab, d, error))
            if errors and (len(expanded) == 1 or len(errors) == len(points)):
                vocab, d, error = errors[0]
                raise ValueError(f"{candidate} at V={vocab}, d={d}: {error}")


def run_sweep(grid: Grid, results: ResultsFile, budget: Budget = Budget(), threads: Optional[int] = None,
              resume: bool = False, progress: bool = True, seed: int = 0, ceilings: str = "full",
              configs: Optional[Iterable[tuple]] = None, order_seed: Optional[int] = None) -> SweepStats:
    """Measure every unit of ``grid`` into ``results``; ``ceilings="small"`` measures the machine's ceilings on
    small operands (smoke tests: floors then mean nothing); ``configs``, (device, dtype, V, d, spec) tuples,
    keeps only those head configurations (one shard of the grid); ``order_seed`` measures the configurations in
    an order shuffled with that seed (runs in several orders show how much the order moves a ratio: a head
    measured after another inherits its caches, page state and clock)."""
    from tqdm.auto import tqdm

    check_grid(grid)
    if threads is None:
        threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    stats = SweepStats()
    wanted = None if configs is None else set(configs)
    configs = [c for c in grid.configs() if wanted is None or c in wanted]
    if order_seed is not None:
        random.Random(order_seed).shuffle(configs)
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
    """Measure one head configuration's units. Each unit's rows are appended as it finishes; its ceilings row
    follows once the ceilings have been measured again after the head (the better of the rates before and
    after, with how far they drifted); vqbench.reporting.floors derives the floor from it when tables are built."""
    device, dtype = context["device"], DTYPES[context["dtype"]]
    head, build_error = None, None
    planned = _planned_parameters(context)
    elem = torch.empty((), dtype=dtype).element_size()
    unbuilt = budget.memory_bytes is not None and planned is not None and planned * elem > budget.memory_bytes
    try:
        if not unbuilt:  # a head whose parameters alone pass the budget is never allocated
            torch.manual_seed(seed)
            head = make_head(context["spec"], context["V"], context["d"], device=device, dtype=dtype)
    except Exception as error:  # invalid combination, OOM while building
        build_error = error
    meter.begin(torch.device(device), dtype)
    pending = []
    for n, op in todo:
        base = {**base_row(head, context, n, op, threads), "seed": seed}
        if unbuilt:
            rows, working_bytes = unbuilt_rows(base, op, planned, elem, budget), None
        elif isinstance(build_error, NotImplementedError):  # a peer without its package, say
            rows, working_bytes = [skipped(base, f"not applicable: {build_error}")], None
        elif build_error is not None:
            rows, working_bytes = [skipped(base, f"build: {describe(build_error)}")], None
        else:
            rows, working_bytes = measure_unit(head, base, op, n, budget, seed, meter)
        results.append(rows)
        if working_bytes is not None:
            pending.append((base, working_bytes))
        stats.measured += rows[0]["status"] == "ok"
        stats.skipped += rows[0]["status"] != "ok"
        bar.update(1)
    del head
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    for base, working_bytes in pending:
        rates, drift = meter.better(working_bytes)
        results.append([{**base, **rates.as_row(), "ceiling_drift": f"{drift:.3f}", "metric": "ceilings",
                         "unit": "FLOP/s", "value": rates.as_row()["gemm_flop_s"]}])


def _planned_parameters(context: dict) -> Optional[int]:
    """The closed-form parameter count of the head a configuration builds, None when unknown."""
    try:
        return estimate_parameters(context["spec"], context["V"], context["d"])
    except Exception:  # an invalid spec is refused when it is built, with its reason
        return None


def unbuilt_rows(base: dict, op: str, planned: int, elem: int, budget: Budget) -> list:
    """Rows of a unit whose head's parameters alone exceed the memory budget: its parameter count (closed
    form) for the params unit, the memory guard's reason for every op."""
    if op == PARAMS_OP:
        return [{**base, "metric": "params", "unit": "count", "value": planned},
                {**base, "metric": "param_bytes", "unit": "bytes", "value": planned * elem}]
    need = footprint_bytes(0, planned, op, elem)
    return [skipped(base, f"memory guard: needs at least {need / 2**30:.1f} GiB for the parameters alone, "
                          f"budget {budget.memory_bytes / 2**30:.1f} GiB; the head was not built")]


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
    return {**context, "head": name, "N": n, "op": op, "spread": "", "status": "ok",
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
    """(rows, working bytes) for one (config, op): the params rows, or the time, memory and count rows of the
    op with the bytes it must move (None when no ceilings are needed)."""
    device = torch.device(base["device"])
    elem = torch.empty((), dtype=next(head.parameters()).dtype).element_size()
    if op == PARAMS_OP:
        count = head.num_parameters()
        return [{**base, "metric": "params", "unit": "count", "value": count},
                {**base, "metric": "param_bytes", "unit": "bytes", "value": count * elem}], None
    hidden, target = make_inputs(base["V"], base["d"], n, base["device"], next(head.parameters()).dtype, seed)
    record = get_op(op)
    try:
        flops = record.flops(head, n, target)
        read, written = record.traffic(head, n, elem, target)
        rate = meter.rates(read + written).gemm_flop_s  # the ceilings before the op
        intermediate = record.intermediate(head, n)
        footprint = footprint_bytes(intermediate, head.num_parameters(), op, elem)
        if budget.memory_bytes is not None and footprint > budget.memory_bytes:
            return [skipped(base, f"memory guard: needs about {footprint / 2**30:.1f} GiB, "
                                  f"budget {budget.memory_bytes / 2**30:.1f} GiB")], None
        if budget.seconds_per_call is not None and flops / rate > budget.seconds_per_call:
            return [skipped(base, f"time guard: about {flops / rate:.1f} s per call at "
                                  f"{rate / 1e9:.0f} GFLOP/s, budget {budget.seconds_per_call:g} s")], None
        fn = record.build(head, hidden, target)
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
    return [
        {**base, "metric": "time", "unit": "s", "value": timing.median, "spread": timing.iqr},
        {**base, "metric": "flops_analytic", "unit": "FLOP", "value": flops},
        {**base, "metric": "flops_counted", "unit": "FLOP", "value": counted or 0,
         "reason": "" if counted is not None else "not counted: fullgraph-compiled code cannot run under the counter"},
        {**base, "metric": "peak_memory", "unit": "bytes", "value": peak},
        {**base, "metric": "intermediate_bytes", "unit": "bytes", "value": intermediate * elem},
        {**base, "metric": "bytes_read", "unit": "bytes", "value": read},
        {**base, "metric": "bytes_written", "unit": "bytes", "value": written},
    ], read + written
