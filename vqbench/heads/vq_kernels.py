"""VQ-Logits' spread with its per-token bias in one pass, in C++ (built and loaded by vqbench.heads.native).

Without the kernel the biased spread is two passes over the V x N output: the row gather (index_select) writes
it, then ``add_`` reads it back and writes it again, 3 N V elements moved instead of N V (plus the K x N
values, read from cache). The kernel writes each output row once, from its code's row and its bias, with float32
arithmetic rounded once (as ``add_`` rounds a bfloat16 sum), and each thread first touches the rows it fills.
``available()`` is False where it cannot be built (no compiler, or VQBENCH_KERNELS=torch) and the head takes
its two torch passes.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from vqbench.heads import native
from vqbench.heads.native import INT, INT64, POINTER, pointer as _ptr

SOURCE = r"""
// out[i, k] = values[mapping[i], k] + bias[i] for the V rows i; values [K, N] and out [V, N] row-major.
template <typename TV, typename TB>
static void spread_bias(const TV* values, const int64_t* mapping, const TB* bias, int64_t v, int64_t n, TV* out,
                        int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < v; ++i) {
        const TV* src = values + mapping[i] * n;
        TV* dst = out + i * n;
        float b = load(bias, i);
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) store(dst, k, load(src, k) + b);
    }
}

#define DEFINE(A, B, TA, TB) \
extern "C" void spread_bias_##A##_##B(const void* values, const int64_t* mapping, const void* bias, int64_t v, \
        int64_t n, void* out, int threads) { \
    spread_bias((const TA*)values, mapping, (const TB*)bias, v, n, (TA*)out, threads); }
FOR_TYPES(DEFINE)
"""

SIGNATURES = {"spread_bias": [POINTER, POINTER, POINTER, INT64, INT64, POINTER, INT]}


@lru_cache(maxsize=None)
def _library():
    return native.load("vq-spread", SOURCE, SIGNATURES)


def available() -> bool:
    return _library() is not None


def supports(*tensors) -> bool:
    """True when the kernel can take these tensors (CPU, float32 or bfloat16, contiguous) and is built."""
    return native.takes(*tensors) and available()


@torch.library.custom_op("vqbench::spread_bias", mutates_args=("out",))
def spread_bias(values: torch.Tensor, mapping: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    """out [V, N] (values' dtype, row-major) = values [K, N] gathered by mapping [V] (int64), plus bias [V] on
    each row; values and bias float32 or bfloat16. Reads K N + V values, writes V N once."""
    native.typed_function(_library(), "spread_bias", values, bias)(
        _ptr(values), _ptr(mapping), _ptr(bias), out.shape[0], out.shape[1], _ptr(out), torch.get_num_threads())
