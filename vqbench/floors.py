"""The machine's ceilings and each measured op's floor.

Ceilings, measured before each head's measurements in a sweep and stored in its rows (each the
fastest of several calls):
    gemm  FLOP/s of a large square matrix product;
    copy  bytes/s of a large tensor copy into an existing tensor, counting bytes read plus written;
    fill  bytes/s of filling an existing large tensor (bytes written).
Floor of an op (seconds): the larger of its matrix-product FLOPs (the analytic count, or the FLOPs
torch.utils.flop_counter counted in the call when fewer) over the GEMM rate and its least
memory traffic (every input read once over the copy rate, every output written once over the fill
rate). A row's "x over floor" is its median time over this floor: 1x would be perfect.
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
    gemm_size = gemm_size or (8192 if cuda else 4096)  # large enough to reach the peak rate
    buffer_bytes = buffer_bytes or (2 << 30 if cuda else 512 << 20)  # far beyond any cache
    a = torch.randn(gemm_size, gemm_size, device=device).to(dtype)
    b = torch.randn(gemm_size, gemm_size, device=device).to(dtype)
    gemm = fastest_call(lambda: torch.mm(a, b), threads, samples=4)
    del a, b
    elements = buffer_bytes // torch.empty((), dtype=dtype).element_size()
    src = torch.ones(elements, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    dst.fill_(0)  # first touch outside the timing
    copy = fastest_call(lambda: dst.copy_(src), threads, samples=20)
    fill = fastest_call(lambda: dst.fill_(1), threads, samples=20)
    return Ceilings(2 * gemm_size ** 3 / gemm, 2 * buffer_bytes / copy, buffer_bytes / fill)


def fastest_call(fn, threads: int, samples: int) -> float:
    """Seconds of the fastest of ``samples`` single calls of fn() after one warm-up call."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    timer.timeit(1)
    return min(timer.timeit(1).median for _ in range(samples))


def least_traffic(head, op: str, num_tokens: int, element_size: int):
    """(bytes read, bytes written) that ``op`` cannot avoid: the hidden states and parameters read
    once; the output written once (N x V for logits and log_probs, also *_into, N token ids for predict and
    decode, a scalar loss, and for train the parameter and hidden-state gradients)."""
    n, d, v = num_tokens, head.d_model, head.vocab_size
    params = head.num_parameters() * element_size
    read = n * d * element_size + params + (8 * n if op in ("loss", "train") else 0)
    if op in ("logits", "log_probs", "logits_into", "log_probs_into"):
        written = n * v * element_size
    elif op in ("predict", "decode", "decode_dense"):
        written = 8 * n
    elif op == "loss":
        written = element_size
    elif op == "train":
        written = params + n * d * element_size
    else:
        raise ValueError(f"op: unknown op {op!r}")
    return read, written


def floor_seconds(flops: float, read_bytes: float, written_bytes: float, ceilings: Ceilings) -> float:
    """max(FLOPs / GEMM rate, read / copy rate + written / fill rate)."""
    compute = flops / ceilings.gemm_flop_s
    memory = read_bytes / ceilings.copy_byte_s + written_bytes / ceilings.fill_byte_s
    return max(compute, memory)
