"""VQ-Logits' C++ CPU kernels (built and loaded by vqbench.heads.native): the spread with its per-token bias
in one pass, and the scatter path's cross-entropy in two.

Without the kernel the biased spread is two passes over the V x N output: the row gather (index_select) writes
it, then ``add_`` reads it back and writes it again, 3 N V elements moved instead of N V (plus the K x N
values, read from cache). The kernel writes each output row once, from its code's row and its bias, with float32
arithmetic rounded once (as ``add_`` rounds a bfloat16 sum), and each thread first touches the rows it fills.

path=scatter (the paper's) materialises the N x V logits for its loss. As torch ops that loss passed over them
five times (the spread writes them; the column peaks, the shifted exponentials, their sums and, in training, the
gradient each read or write N x V). ``spread_cross_entropy`` writes them once and sums their exponentials in the
same pass: the column peaks come first from the K x N code values (the largest logit of a token is its best
code's value plus that code's largest bias), so no pass has to read the logits to find them.
``spread_cross_entropy_backward`` reads them once, code by code, and adds each token's softmax row onto its
code's gradient row: no N x V gradient is written.

``available()`` is False where it cannot be built (no compiler, or VQBENCH_KERNELS=torch) and the head takes
its two torch passes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import torch

from vqbench.heads import native
from vqbench.heads.native import INT, INT64, POINTER, pointer as _ptr

SOURCE = r"""
#include <omp.h>

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
#undef DEFINE

// x rounded to T, as a float: the value a T tensor holds after store
static inline float held(float*, float x) { return x; }
static inline float held(bf16*, float x) { bf16 b; store(&b, 0, x); return load(&b, 0); }

// exp(x) for x <= 0 (the logits less their column peak), without a libm call so that a loop over lanes
// vectorises: Cody-Waite reduction and Cephes' polynomial, as huffman_kernels' log1p_exp_neg_abs; below 2e-7
// relative error. 0 below -87 (where exp is under 1.7e-38: each term of a sum that holds a 1), NaN stays NaN.
static inline float exp_nonpositive(float x) {
    float a = x > -87.f ? x : -87.f;
    float z = a * 1.44269504088896341f;                         // exp(a) = 2^k e^r, |r| <= ln2 / 2
    float k = (z - 12582912.f) + 12582912.f;                    // z rounded (|z| < 2^22): floor would not vectorise
    float r = (a - k * 0.693359375f) + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale; std::memcpy(&scale, &bits, 4);
    float e = (p * r * r + r + 1.f) * scale;
    e = x > -87.f ? e : 0.f;
    return x == x ? e : x;
}

// The forward of the scatter path's cross-entropy. values [K, N] and logits [V, N] row-major (TV), mapping [V],
// bias [V] (TB, or null), code_peak [K] (the largest bias of each code, 0 without a bias, -inf when empty),
// target [N]. Writes logits[i] = values[mapping[i]] + bias[i] (rounded to TV), and per token j: peak[j] (its
// largest logit), total[j] = sum_i exp(logits[i, j] - peak[j]) and own[j] = logits[target[j], j]. scratch holds
// threads x N floats: each thread sums its own rows, and the partial sums are added in thread order.
template <typename TV, typename TB>
static void spread_cross_entropy(const TV* values, const int64_t* mapping, const TB* bias, const float* code_peak,
                                 const int64_t* target, int64_t k, int64_t v, int64_t n, TV* logits, float* peak,
                                 float* total, float* own, float* scratch, int threads) {
    // peak[j] = max over non-empty codes c of values[c, j] + code_peak[c], as the logits hold it; NaN wins
    constexpr int64_t COLUMNS = 256;  // a block of columns at a time, each thread its own blocks
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t j0 = 0; j0 < n; j0 += COLUMNS) {
        int64_t j1 = std::min(n, j0 + COLUMNS);
        for (int64_t j = j0; j < j1; ++j) peak[j] = -INFINITY;
        for (int64_t c = 0; c < k; ++c) {
            float b = code_peak[c];
            if (b == -INFINITY) continue;
            const TV* row = values + c * n;
            for (int64_t j = j0; j < j1; ++j) {
                float x = held((TV*)nullptr, load(row, j) + b);
                peak[j] = (x > peak[j] || x != x) ? x : peak[j];
            }
        }
    }
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
        float* sums = scratch + t * n;
        for (int64_t j = 0; j < n; ++j) sums[j] = 0.f;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < v; ++i) {
            const TV* src = values + mapping[i] * n;
            TV* __restrict__ dst = logits + i * n;
            float b = bias ? load(bias, i) : 0.f;
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) {
                float x = held(dst, load(src, j) + b);
                store(dst, j, x);
                sums[j] += exp_nonpositive(x - peak[j]);
            }
        }
    }
    for (int64_t j = 0; j < n; ++j) {
        float s = 0.f;
        for (int t = 0; t < threads; ++t) s += scratch[t * n + j];
        total[j] = s;
        own[j] = load(logits, target[j] * n + j);
    }
}

// Its backward: scale[j] = d loss / d (token j's loss) / total[j], step[j] = d loss / d (token j's loss).
// grad_values[c, j] = sum over the tokens i of code c of exp(logits[i, j] - peak[j]) scale[j], less step[j]
// where c is the code of target[j]; row_sum[i] = sum_j exp(logits[i, j] - peak[j]) scale[j] (the bias
// gradient before its targets' part). Codes are shared out among threads (members [V]: the tokens grouped by
// code, from start[c], sizes[c] of them), each code's row summed in float32 in scratch (threads x N) and
// written once.
template <typename TV, typename TB>
static void spread_cross_entropy_backward(const TV* logits, const int64_t* members, const int64_t* start,
                                          const int64_t* sizes, const int64_t* target_code, const float* peak,
                                          const float* scale, const float* step, int64_t k, int64_t n,
                                          TV* grad_values, float* row_sum, float* scratch, int threads) {
#pragma omp parallel num_threads(threads)
    {
        float* acc = scratch + omp_get_thread_num() * n;
#pragma omp for schedule(dynamic, 4)
        for (int64_t c = 0; c < k; ++c) {
            for (int64_t j = 0; j < n; ++j) acc[j] = 0.f;
            for (int64_t m = start[c]; m < start[c] + sizes[c]; ++m) {
                int64_t i = members[m];
                const TV* row = logits + i * n;
                float s = 0.f;
#pragma omp simd reduction(+:s)
                for (int64_t j = 0; j < n; ++j) {
                    float p = exp_nonpositive(load(row, j) - peak[j]) * scale[j];
                    acc[j] += p;
                    s += p;
                }
                row_sum[i] = s;
            }
            TV* out = grad_values + c * n;
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) store(out, j, acc[j] - (target_code[j] == c ? step[j] : 0.f));
        }
    }
}

#define DEFINE(A, B, TA, TB) \
extern "C" void spread_cross_entropy_##A##_##B(const void* values, const int64_t* mapping, const void* bias, \
        const float* code_peak, const int64_t* target, int64_t k, int64_t v, int64_t n, void* logits, float* peak, \
        float* total, float* own, float* scratch, int threads) { \
    spread_cross_entropy((const TA*)values, mapping, (const TB*)bias, code_peak, target, k, v, n, (TA*)logits, \
                         peak, total, own, scratch, threads); } \
extern "C" void spread_cross_entropy_backward_##A##_##B(const void* logits, const int64_t* members, \
        const int64_t* start, const int64_t* sizes, const int64_t* target_code, const float* peak, \
        const float* scale, const float* step, int64_t k, int64_t n, void* grad_values, float* row_sum, \
        float* scratch, int threads) { \
    spread_cross_entropy_backward<TA, TB>((const TA*)logits, members, start, sizes, target_code, peak, scale, step, \
                                          k, n, (TA*)grad_values, row_sum, scratch, threads); }
FOR_TYPES(DEFINE)
"""

SIGNATURES = {
    "spread_bias": [POINTER, POINTER, POINTER, INT64, INT64, POINTER, INT],
    "spread_cross_entropy": [POINTER, POINTER, POINTER, POINTER, POINTER, INT64, INT64, INT64, POINTER, POINTER,
                             POINTER, POINTER, POINTER, INT],
    "spread_cross_entropy_backward": [POINTER, POINTER, POINTER, POINTER, POINTER, POINTER, POINTER, POINTER, INT64,
                                      INT64, POINTER, POINTER, POINTER, INT],
}


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


@torch.library.custom_op("vqbench::spread_cross_entropy", mutates_args=("logits",))
def spread_cross_entropy(values: torch.Tensor, mapping: torch.Tensor, bias: Optional[torch.Tensor],
                         code_peak: torch.Tensor, target: torch.Tensor, logits: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """path=scatter's loss, forward: values [K, N] (float32 or bfloat16) spread by mapping [V] (int64) plus bias
    [V] (or None) into logits [V, N] (values' dtype, row-major, written once); code_peak [K] float32 (each code's
    largest bias, 0 without one, -inf when the code is empty); target [N]. -> (peak, total, own) [N] float32: each
    token's largest logit, sum of exp(logit - peak) over V, and its target's logit. Traffic: writes V N, reads
    K N + V (from cache: the code rows a token's spread reads are K N in all); 4 V N FLOPs, V N exponentials."""
    k, n = values.shape
    peak, total, own = torch.empty(n), torch.empty(n), torch.empty(n)
    threads = torch.get_num_threads()
    scratch = torch.empty(threads, n)
    native.typed_function(_library(), "spread_cross_entropy", values, bias if bias is not None else values)(
        _ptr(values), _ptr(mapping), _ptr(bias), _ptr(code_peak), _ptr(target), k, logits.shape[0], n,
        _ptr(logits), _ptr(peak), _ptr(total), _ptr(own), _ptr(scratch), threads)
    return peak, total, own


@spread_cross_entropy.register_fake
def _(values, mapping, bias, code_peak, target, logits):
    n = values.shape[1]
    return values.new_empty(n, dtype=torch.float32), values.new_empty(n, dtype=torch.float32), \
        values.new_empty(n, dtype=torch.float32)


@torch.library.custom_op("vqbench::spread_cross_entropy_backward", mutates_args=())
def spread_cross_entropy_backward(logits: torch.Tensor, members: torch.Tensor, start: torch.Tensor,
                                  sizes: torch.Tensor, target_code: torch.Tensor, peak: torch.Tensor,
                                  scale: torch.Tensor, step: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backward of the mean of per-token losses log total - (own - peak) (spread_cross_entropy's): logits [V, N]
    as the forward wrote them; members [V] the tokens grouped by code, start and sizes [K] each code's group;
    target_code [N] the code of each target; peak [N]; scale [N] = step / total; step [N] = d loss / d (each
    token's loss). -> (grad_values [K, N] in logits' dtype, row_sum [V] float32: sum_j softmax[i, j] step[j],
    the bias gradient before its targets' part). Traffic: reads V N once, writes K N; 3 V N FLOPs, V N
    exponentials."""
    v, n = logits.shape
    k = start.shape[0]
    grad_values = torch.empty(k, n, dtype=logits.dtype)
    row_sum = torch.empty(v)
    threads = torch.get_num_threads()
    scratch = torch.empty(threads, n)
    native.typed_function(_library(), "spread_cross_entropy_backward", logits, logits)(
        _ptr(logits), _ptr(members), _ptr(start), _ptr(sizes), _ptr(target_code), _ptr(peak), _ptr(scale),
        _ptr(step), k, n, _ptr(grad_values), _ptr(row_sum), _ptr(scratch), threads)
    return grad_values, row_sum


@spread_cross_entropy_backward.register_fake
def _(logits, members, start, sizes, target_code, peak, scale, step):
    return logits.new_empty(start.shape[0], logits.shape[1]), logits.new_empty(logits.shape[0], dtype=torch.float32)
