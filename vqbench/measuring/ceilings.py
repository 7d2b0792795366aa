"""The machine's ceilings, measured in the run they bound.

Ceilings (each the fastest of several calls):
    gemm  FLOP/s of a square matrix product large enough to reach the peak rate;
    copy  bytes/s of a tensor copy into an existing tensor, counting bytes read plus written;
    fill  bytes/s of filling an existing tensor (bytes written).
The bandwidths are measured on buffers sized to the op's working set (the bytes it must move, rounded
down to a power of two): an op whose data fits in cache is held to the cache's rate, not DRAM's. A
sweep measures them before a head's ops and again after them and stores the better of the two with
how far they drifted (rates on a shared machine move within minutes). vqbench.reporting.floors turns them into
floors when tables are built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.benchmark as benchmark


@dataclass(frozen=True)
class Ceilings:
    gemm_flop_s: float
    copy_byte_s: float
    fill_byte_s: float

    def as_row(self) -> dict:
        return {"gemm_flop_s": f"{self.gemm_flop_s:.6g}", "copy_byte_s": f"{self.copy_byte_s:.6g}",
                "fill_byte_s": f"{self.fill_byte_s:.6g}"}


def measure_ceilings(device: torch.device, dtype: torch.dtype, threads: int,
                     gemm_size: int = None, buffer_bytes: int = None) -> Ceilings:
    """GEMM rate and copy/fill bandwidth on ``device`` in ``dtype``.

    A ceiling is the best the machine does, so each is the fastest of several timed calls
    (torch.utils.benchmark, one call per sample): on a shared machine a median taken while a
    neighbour is busy would lower the ceilings and flatter every floor ratio of the run.
    """
    cuda = device.type == "cuda"
    gemm_size = gemm_size or GEMM_SIZE[device.type]
    buffer_bytes = buffer_bytes or (2 << 30 if cuda else 512 << 20)  # far beyond any cache
    return Ceilings(gemm_rate(device, dtype, threads, gemm_size), *bandwidths(device, dtype, threads, buffer_bytes))


GEMM_SIZE = {"cpu": 2048, "cuda": 8192}  # large enough to reach the peak rate, small enough to be quick


def gemm_rate(device, dtype, threads: int, size: int) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size ** 3 / fastest_call(lambda: torch.mm(a, b), threads, samples=5)


def bandwidths(device, dtype, threads: int, buffer_bytes: int):
    """(copy, fill) bytes/s on a buffer of buffer_bytes."""
    elements = max(1, buffer_bytes // torch.empty((), dtype=dtype).element_size())
    src = torch.ones(elements, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    dst.fill_(0)  # first touch outside the timing
    samples = 8 if buffer_bytes >= 64 << 20 else 20
    copy = fastest_call(lambda: dst.copy_(src), threads, samples=samples)
    fill = fastest_call(lambda: dst.fill_(1), threads, samples=samples)
    size = elements * src.element_size()
    return 2 * size / copy, size / fill


class CeilingMeter:
    """Ceilings for one sweep: per (device, dtype) a GEMM rate and per working-set size a copy and a fill
    bandwidth, measured before a head's ops (on first use) and again after them (``better``). A rate whose
    two measurements agreed within AGREE is reused as the next head's "before" instead of measured again.

    gemm_size and buffer_bytes fix the operand sizes (smoke tests: small and quick, floors meaningless).
    """

    AGREE = 0.25
    MIN_BUFFER, MAX_BUFFER = 64 << 10, 256 << 20

    def __init__(self, threads: int, gemm_size: int = None, buffer_bytes: int = None):
        self.threads, self.gemm_size, self.fixed_buffer = threads, gemm_size, buffer_bytes
        self.agreed = {}    # key -> Ceilings agreed by a before/after pair, reused as a "before"
        self.device = self.dtype = None
        self.before = {}

    def begin(self, device, dtype) -> None:
        """A new head: its "before" rates are measured (or reused) on first use."""
        self.device, self.dtype, self.before = device, dtype, {}

    def bucket(self, working_bytes: float) -> int:
        if self.fixed_buffer:
            return self.fixed_buffer
        size = self.MIN_BUFFER
        while size * 2 <= min(working_bytes, self.MAX_BUFFER):
            size *= 2
        return size

    def rates(self, working_bytes: float) -> Ceilings:
        """The "before" ceilings for an op that moves working_bytes."""
        key = (str(self.device), self.dtype, self.bucket(working_bytes))
        if key not in self.before:
            self.before[key] = self.agreed.get(key) or self._measure(key[2])
        return self.before[key]

    def better(self, working_bytes: float):
        """(the better of the before and after ceilings, their largest relative drift) for an op of this head;
        measures "after" once per working-set size and head."""
        key = (str(self.device), self.dtype, self.bucket(working_bytes))
        before = self.rates(working_bytes)
        if ("after",) + key not in self.before:
            self.before[("after",) + key] = self._measure(key[2])
        after = self.before[("after",) + key]
        pairs = list(zip(_rates(before), _rates(after)))
        drift = max(abs(a - b) / max(a, b) for a, b in pairs)
        best = Ceilings(*(max(a, b) for a, b in pairs))
        if drift <= self.AGREE:
            self.agreed[key] = best
        else:
            self.agreed.pop(key, None)
        return best, drift

    def _measure(self, buffer_bytes: int) -> Ceilings:
        size = self.gemm_size or GEMM_SIZE[torch.device(self.device).type]
        return Ceilings(gemm_rate(self.device, self.dtype, self.threads, size),
                        *bandwidths(self.device, self.dtype, self.threads, buffer_bytes))


def _rates(c: Ceilings):
    return c.gemm_flop_s, c.copy_byte_s, c.fill_byte_s


def fastest_call(fn, threads: int, samples: int) -> float:
    """Seconds of the fastest of ``samples`` single calls of fn() after one warm-up call."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    timer.timeit(1)
    return min(timer.timeit(1).median for _ in range(samples))
