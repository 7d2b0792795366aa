"""Measuring one head on one op: its inputs, time, peak memory, counted FLOPs.

Timing uses torch.utils.benchmark (its Timer synchronises CUDA and pins the thread count);
peak memory comes from the CUDA allocator's peak, or on CPU from the allocation and free
events that torch.profiler records (a measurement of what the op allocated, not an estimate).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from dataclasses import dataclass

import torch
import torch.utils.benchmark as benchmark
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from vqbench.heads.frequency import default_token_counts


@dataclass
class Timing:
    median: float   # seconds
    iqr: float      # seconds, interquartile range


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_op(fn, device: torch.device, threads: int, min_run_time: float = 0.5,
            min_samples: int = 5, warmup: bool = True) -> Timing:
    """Median and IQR of fn() in seconds.

    Fast ops: torch.utils.benchmark's blocked_autorange for ``min_run_time`` seconds (at least
    ``min_samples`` blocks). Slow ops (one call over ``min_run_time / min_samples``): one call
    per sample, ``min_samples`` samples. ``warmup=False`` when the caller has already run fn().
    """
    if warmup:
        fn()
        synchronize(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    once = timer.timeit(1).median
    if once * min_samples >= min_run_time:
        times = [once] + [timer.timeit(1).median for _ in range(min_samples - 1)]
    else:
        times = list(timer.blocked_autorange(min_run_time=min_run_time).times)
        while len(times) < min_samples:
            times.extend(timer.blocked_autorange(min_run_time=min_run_time / 2).times)
    quartiles = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[2] - quartiles[0])


def peak_memory_and_flops(fn, device: torch.device, count_flops: bool = True):
    """One call of fn(): (peak bytes it allocated beyond what was live before, its output
    included; FLOPs of its matrix products as torch.utils.flop_counter counts them, None with
    ``count_flops=False``: code compiled with fullgraph=True cannot run under the counter's
    dispatch mode, and torch then refuses the function for the rest of the process)."""
    counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with counter:
            result = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return int(peak), int(counter.get_total_flops()) if count_flops else None
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with counter:
            result = fn()
        del result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()   # negative for a free
        peak = max(peak, live)
    return int(peak), int(counter.get_total_flops()) if count_flops else None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines, which bypass Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

