"""CPU kernels of the two trees' losses, in C++ compiled once per machine and called through ctypes.

PyTorch has no op for "a log-softmax over each target's own block of rows" (the class tree) or for dot
products over a sparse pattern of (token, node) pairs that runs near the machine's load bandwidth (the
Huffman tree): composed from torch ops, the class tree pays one skinny matrix product per class (about 90
microseconds each on the project's machine, mostly overhead, three to seven times the cost of streaming the
rows) and the Huffman tree a sort, a conversion of the touched rows and a sparse product at a fraction of the
load bandwidth. These kernels stream each row once per block of tokens, accumulate in float32 from float32 or
bfloat16 inputs (converted as they are loaded, never copied), and write each output once.

They use the OpenMP runtime that torch itself loaded (the same ``libgomp.so.1``: one thread pool, sized by
``torch.set_num_threads``). Built with the system's C++ compiler into ``$VQBENCH_CACHE`` (default
``~/.cache/vqbench``) under a name that digests the source, the flags and the CPU; where no compiler works,
``available()`` is False and the heads take their torch path (the same results, slower; ``kernel_backend()``
says which, and ``VQBENCH_KERNELS=torch`` forces the torch path).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from typing import List, Tuple

import torch
from torch.utils.flop_counter import register_flop_formula

from vqbench.heads.fresh import fresh_empty

SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <algorithm>

typedef uint16_t bf16;

static inline float load(const float* p, int64_t k) { return p[k]; }
static inline float load(const bf16* p, int64_t k) {
    uint32_t bits = ((uint32_t)p[k]) << 16; float f; std::memcpy(&f, &bits, 4); return f;
}
static inline void store(float* p, int64_t k, float v) { p[k] = v; }
static inline void store(bf16* p, int64_t k, float v) {
    uint32_t bits; std::memcpy(&bits, &v, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) { p[k] = (bf16)((bits >> 16) | 0x40); return; }  // NaN stays NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);                                               // round to nearest even
    p[k] = (bf16)(bits >> 16);
}

// four dot products of one row w with rows a, b, c, e (d elements each), float accumulation
template <typename TA, typename TB>
static inline void dot4(const TA* w, const TB* a, const TB* b, const TB* c, const TB* e, int64_t d, float* out) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+:s0, s1, s2, s3)
    for (int64_t k = 0; k < d; ++k) {
        float x = load(w, k);
        s0 += x * load(a, k); s1 += x * load(b, k); s2 += x * load(c, k); s3 += x * load(e, k);
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

template <typename TA, typename TB>
static inline float dot1(const TA* w, const TB* a, int64_t d) {
    float s = 0.f;
#pragma omp simd reduction(+:s)
    for (int64_t k = 0; k < d; ++k) s += load(w, k) * load(a, k);
    return s;
}

// y += a x (d elements), float accumulation
template <typename T>
static inline void axpy(float a, const T* __restrict__ x, float* __restrict__ y, int64_t d) {
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) y[k] += a * load(x, k);
}

// scores[r][j] = w_{r0 + r} . g_{t0 + j} for the rows and tokens of one class, row-major [rows, n]
template <typename TH, typename TW>
static void class_scores(const TH* g, const TW* w, int64_t d, int64_t t0, int64_t n, int64_t r0, int64_t rows,
                         float* scores) {
    for (int64_t r = 0; r < rows; ++r) {
        const TW* wr = w + (r0 + r) * d;
        float* out = scores + r * n;
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            const TH* base = g + (t0 + j) * d;
            dot4(wr, base, base + d, base + 2 * d, base + 3 * d, d, out + j);
        }
        for (; j < n; ++j) out[j] = dot1(wr, g + (t0 + j) * d, d);
    }
}

// Within-class log-probabilities. g [N, d]: hidden states grouped by class (tokens t_start[c]..t_start[c+1]);
// w [V, d]: word vectors in class order (rows r_start[c]..r_start[c+1]); pos [N]: each grouped token's row
// inside its class. Writes the scores of every (row, token) pair of a class, [rows, n] from s_start[c] (kept
// for backward: P = sum_c n_c |c| floats), lse [N] (log-sum-exp over the class's rows) and own [N] (the
// target's logit).
template <typename TH, typename TW>
static void class_forward(const TH* g, const TW* w, int64_t d, int64_t C, const int64_t* t_start,
                          const int64_t* r_start, const int64_t* s_start, const int64_t* pos, float* scores,
                          float* lse, float* own, int threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t c = 0; c < C; ++c) {
        int64_t t0 = t_start[c], n = t_start[c + 1] - t0, r0 = r_start[c], rows = r_start[c + 1] - r0;
        if (n == 0) continue;
        float* sc = scores + s_start[c];
        class_scores(g, w, d, t0, n, r0, rows, sc);
        for (int64_t j = 0; j < n; ++j) {
            float m = -INFINITY;
            for (int64_t r = 0; r < rows; ++r) m = std::max(m, sc[r * n + j]);
            float total = 0.f;
            for (int64_t r = 0; r < rows; ++r) total += std::exp(sc[r * n + j] - m);
            lse[t0 + j] = std::isinf(m) ? m : m + std::log(total);
            own[t0 + j] = sc[pos[t0 + j] * n + j];
        }
    }
}

// Backward of own - lse from the forward's scores: coefficient a_rj = gout_j (onehot_rj - exp(s_rj - lse_j));
// writes the grouped hidden gradient gg [N, d] = sum_r a_rj w_r and the whole weight gradient gw [V, d] (rows
// of classes no token reached are zero), each row once: one pass over the class's rows for the tokens'
// gradients (their float accumulators stay in cache) and one for the rows' gradients (the tokens' rows stay
// in cache), which measured faster than one fused pass that cycles both through L1.
template <typename TH, typename TW>
static void class_backward(const TH* g, const TW* w, int64_t d, int64_t C, const int64_t* t_start,
                           const int64_t* r_start, const int64_t* s_start, const int64_t* pos, const float* scores,
                           const float* lse, const float* gout, TH* gg, TW* gw, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> a, acc_g, acc_w((size_t)d);
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < C; ++c) {
            int64_t t0 = t_start[c], n = t_start[c + 1] - t0, r0 = r_start[c], rows = r_start[c + 1] - r0;
            if (n == 0) {
                if (gw != nullptr)
                    for (int64_t r = r0; r < r0 + rows; ++r)
                        for (int64_t k = 0; k < d; ++k) store(gw, r * d + k, 0.f);
                continue;
            }
            a.assign(scores + s_start[c], scores + s_start[c] + rows * n);
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = 0; j < n; ++j) {
                    float coef = -std::exp(a[r * n + j] - lse[t0 + j]);
                    if (pos[t0 + j] == r) coef += 1.f;
                    a[r * n + j] = coef * gout[t0 + j];
                }
            if (gg != nullptr) {
                acc_g.assign((size_t)(n * d), 0.f);
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t j = 0; j < n; ++j) axpy(a[r * n + j], w + (r0 + r) * d, acc_g.data() + j * d, d);
                for (int64_t j = 0; j < n; ++j)
                    for (int64_t k = 0; k < d; ++k) store(gg, (t0 + j) * d + k, acc_g[j * d + k]);
            }
            if (gw != nullptr)
                for (int64_t r = 0; r < rows; ++r) {
                    std::fill(acc_w.begin(), acc_w.end(), 0.f);
                    for (int64_t j = 0; j < n; ++j) axpy(a[r * n + j], g + (t0 + j) * d, acc_w.data(), d);
                    for (int64_t k = 0; k < d; ++k) store(gw, (r0 + r) * d + k, acc_w[k]);
                }
        }
    }
}

// CSR sampled dots: out[e] = left_i . right_{col[e]} for e in crow[i]..crow[i+1] (left [n, d], right [m, d]).
template <typename TL, typename TR>
static void csr_dots(const int64_t* crow, const int64_t* col, const TL* left, const TR* right, int64_t n,
                     int64_t d, float* out, int threads) {
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const TL* li = left + i * d;
        int64_t e = crow[i];
        for (; e + 4 <= crow[i + 1]; e += 4)
            dot4(li, right + col[e] * d, right + col[e + 1] * d, right + col[e + 2] * d, right + col[e + 3] * d,
                 d, out + e);
        for (; e < crow[i + 1]; ++e) out[e] = dot1(li, right + col[e] * d, d);
    }
}

// CSR times dense: out_i = sum over e in crow[i]..crow[i+1] of values[e] * dense_{col[e]} (out [n, d]).
template <typename TD, typename TO>
static void csr_mm(const int64_t* crow, const int64_t* col, const float* values, const TD* dense, int64_t n,
                   int64_t d, TO* out, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> acc((size_t)d);
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < n; ++i) {
            std::fill(acc.begin(), acc.end(), 0.f);
            for (int64_t e = crow[i]; e < crow[i + 1]; ++e) axpy(values[e], dense + col[e] * d, acc.data(), d);
            for (int64_t k = 0; k < d; ++k) store(out, i * d + k, acc[k]);
        }
    }
}

#define FOR_TYPES(MACRO) MACRO(f32, f32, float, float) MACRO(f32, bf16, float, bf16) \
                         MACRO(bf16, f32, bf16, float) MACRO(bf16, bf16, bf16, bf16)
#define DEFINE(A, B, TA, TB) \
extern "C" void class_forward_##A##_##B(const void* g, const void* w, int64_t d, int64_t C, const int64_t* ts, \
        const int64_t* rs, const int64_t* ss, const int64_t* pos, float* scores, float* lse, float* own, \
        int threads) { \
    class_forward((const TA*)g, (const TB*)w, d, C, ts, rs, ss, pos, scores, lse, own, threads); } \
extern "C" void class_backward_##A##_##B(const void* g, const void* w, int64_t d, int64_t C, const int64_t* ts, \
        const int64_t* rs, const int64_t* ss, const int64_t* pos, const float* scores, const float* lse, \
        const float* gout, void* gg, void* gw, int threads) { \
    class_backward((const TA*)g, (const TB*)w, d, C, ts, rs, ss, pos, scores, lse, gout, (TA*)gg, (TB*)gw, \
                   threads); } \
extern "C" void csr_dots_##A##_##B(const int64_t* crow, const int64_t* col, const void* left, const void* right, \
        int64_t n, int64_t d, float* out, int threads) { \
    csr_dots(crow, col, (const TA*)left, (const TB*)right, n, d, out, threads); } \
extern "C" void csr_mm_##A##_##B(const int64_t* crow, const int64_t* col, const float* values, const void* dense, \
        int64_t n, int64_t d, void* out, int threads) { \
    csr_mm(crow, col, values, (const TA*)dense, n, d, (TB*)out, threads); }
FOR_TYPES(DEFINE)
"""

FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
_C = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES = {
    "class_forward": [_C, _C, _I, _I, _C, _C, _C, _C, _C, _C, _C, ctypes.c_int],
    "class_backward": [_C, _C, _I, _I, _C, _C, _C, _C, _C, _C, _C, _C, _C, ctypes.c_int],
    "csr_dots": [_C, _C, _C, _C, _I, _I, _C, ctypes.c_int],
    "csr_mm": [_C, _C, _C, _C, _I, _I, _C, ctypes.c_int],
}


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _library_path() -> str:
    key = hashlib.sha256("\n".join([SOURCE, " ".join(FLAGS), platform.machine(), _cpu_flags()]).encode())
    cache = os.environ.get("VQBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vqbench")
    return os.path.join(cache, "kernels", f"trees-{key.hexdigest()[:16]}.so")


def _build(path: str) -> None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise OSError("no C++ compiler (g++ or $CXX) on PATH")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as scratch:
        source = os.path.join(scratch, "trees.cpp")
        with open(source, "w", encoding="utf-8") as f:
            f.write(SOURCE)
        built = os.path.join(scratch, "trees.so")
        subprocess.run([compiler, *FLAGS, source, "-o", built], check=True, capture_output=True, timeout=300)
        os.replace(built, path)  # atomic: a concurrent build of the same source leaves one whole file


@lru_cache(maxsize=None)
def _library():
    """The compiled kernels, or None where they cannot be built or loaded (or VQBENCH_KERNELS=torch)."""
    if os.environ.get("VQBENCH_KERNELS", "") == "torch":
        return None
    path = _library_path()
    try:
        if not os.path.isfile(path):
            _build(path)
        library = ctypes.CDLL(path)
    except (OSError, subprocess.SubprocessError):
        return None
    for name, argtypes in _SIGNATURES.items():
        for a in SUFFIX.values():
            for b in SUFFIX.values():
                function = getattr(library, f"{name}_{a}_{b}")
                function.argtypes, function.restype = argtypes, None
    return library


def available() -> bool:
    return _library() is not None


def kernel_backend() -> str:
    """'c++' when the trees' losses run these kernels, 'torch' when they fall back to torch ops."""
    return "c++" if available() else "torch"


def supports(*tensors) -> bool:
    """True when the kernels can take these tensors: on the CPU, float32 or bfloat16, contiguous, built."""
    return all(t.device.type == "cpu" and t.dtype in SUFFIX and t.is_contiguous() for t in tensors) and available()


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _function(name, first, second):
    return getattr(_library(), f"{name}_{SUFFIX[first.dtype]}_{SUFFIX[second.dtype]}")


# The kernels as torch custom ops with their FLOPs registered, so that torch's FLOP counter (the counted FLOPs
# of every results row) sees them as it sees the matrix products they replace.
@torch.library.custom_op("vqbench::class_within_forward", mutates_args=())
def class_forward(grouped: torch.Tensor, words: torch.Tensor, token_start: torch.Tensor, row_start: torch.Tensor,
                  score_start: torch.Tensor, positions: torch.Tensor, pairs: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Within-class scores of each grouped token. grouped [N, d] (tokens grouped by class), words [V, d] (rows
    in class order), token_start, row_start and score_start [C + 1] (each class's tokens, rows, and scores:
    n_c |c| of them), positions [N] (int64), pairs = sum_c n_c |c| -> (scores [pairs], lse [N], own [N]) float32:
    every (row, token) score of each class ([|c|, n_c] from score_start[c], kept for backward), the log-sum-exp
    over the token's class rows and its target's logit. 2 d pairs FLOPs; reads each reached class's rows once
    per four of its tokens (from cache after the first) and h once; writes pairs + 2 N floats."""
    n, d = grouped.shape
    scores, lse, own = torch.empty(pairs), torch.empty(n), torch.empty(n)
    _function("class_forward", grouped, words)(
        _ptr(grouped), _ptr(words), d, row_start.numel() - 1, _ptr(token_start), _ptr(row_start), _ptr(score_start),
        _ptr(positions), _ptr(scores), _ptr(lse), _ptr(own), torch.get_num_threads())
    return scores, lse, own


def class_backward(grouped, words, token_start, row_start, score_start, positions, scores, lse, grad_out,
                   want_hidden: bool, want_weight: bool):
    """(grad_grouped or None, grad_words or None): _class_backward's results, None where not wanted."""
    grads = _class_backward(grouped, words, token_start, row_start, score_start, positions, scores, lse, grad_out,
                            want_hidden, want_weight)
    return tuple(g if wanted else None for g, wanted in zip(grads, (want_hidden, want_weight)))


@torch.library.custom_op("vqbench::class_within_backward", mutates_args=())
def _class_backward(grouped: torch.Tensor, words: torch.Tensor, token_start: torch.Tensor, row_start: torch.Tensor,
                    score_start: torch.Tensor, positions: torch.Tensor, scores: torch.Tensor, lse: torch.Tensor,
                    grad_out: torch.Tensor, want_hidden: bool, want_weight: bool) -> List[torch.Tensor]:
    """Gradients of own - lse (class_forward's outputs) scaled by grad_out [N]: (grad_grouped [N, d] in
    grouped's dtype or None, grad_words [V, d] in words' dtype or None, every row written once, zero for
    classes no token reached; an empty tensor where not wanted). 2 d pairs FLOPs per gradient wanted (the scores
    come from the forward)."""
    grad_grouped = torch.empty_like(grouped) if want_hidden else None
    # the dense [V, d] gradient is most of the step's traffic: first touched on huge pages (vqbench.heads.fresh)
    grad_words = fresh_empty(words.shape, dtype=words.dtype, device="cpu") if want_weight else None
    grad_out = grad_out.float().contiguous()  # held here: a pointer to a temporary would dangle
    _function("class_backward", grouped, words)(
        _ptr(grouped), _ptr(words), grouped.shape[1], row_start.numel() - 1, _ptr(token_start), _ptr(row_start),
        _ptr(score_start), _ptr(positions), _ptr(scores), _ptr(lse), _ptr(grad_out), _ptr(grad_grouped),
        _ptr(grad_words), torch.get_num_threads())
    return [g if g is not None else torch.empty(0) for g in (grad_grouped, grad_words)]


@torch.library.custom_op("vqbench::tree_csr_dots", mutates_args=())
def csr_dots(crow: torch.Tensor, col: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[E] float32: left[i] . right[col[e]] for each pair e = (i, col[e]) of the CSR pattern crow [n + 1],
    col [E]; left [n, d], right [m, d] (float32 or bfloat16, converted as loaded). 2 E d FLOPs."""
    out = torch.empty(col.numel())
    _function("csr_dots", left, right)(_ptr(crow), _ptr(col), _ptr(left), _ptr(right), left.shape[0],
                                       left.shape[1], _ptr(out), torch.get_num_threads())
    return out


@torch.library.custom_op("vqbench::tree_csr_mm", mutates_args=())
def csr_mm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense: torch.Tensor,
           out_dtype: torch.dtype) -> torch.Tensor:
    """[n, d] in out_dtype = S @ dense for the CSR matrix S [n, m] (crow [n + 1], col [E], values [E] float32);
    dense [m, d] float32 or bfloat16; accumulated in float32, each output row written once. 2 E d FLOPs."""
    out = fresh_empty((crow.numel() - 1, dense.shape[1]), dtype=out_dtype, device="cpu")
    values = values.float().contiguous()  # held here: a pointer to a temporary would dangle
    _function("csr_mm", dense, out)(_ptr(crow), _ptr(col), _ptr(values), _ptr(dense),
                                    out.shape[0], out.shape[1], _ptr(out), torch.get_num_threads())
    return out


@register_flop_formula(torch.ops.vqbench.class_within_forward)
def _class_forward_flops(grouped_shape, words_shape, *args, **kwargs) -> int:
    return 2 * args[-1] * grouped_shape[1]  # pairs: the last argument


@register_flop_formula(torch.ops.vqbench.class_within_backward)
def _class_backward_flops(grouped_shape, words_shape, ts, rs, ss, pos, scores_shape, *args, **kwargs) -> int:
    products = bool(args[-2]) + bool(args[-1])  # the hidden gradient, the weight gradient
    return 2 * products * scores_shape[0] * grouped_shape[1]


@register_flop_formula([torch.ops.vqbench.tree_csr_dots, torch.ops.vqbench.tree_csr_mm])
def _csr_flops(crow_shape, col_shape, third_shape, fourth_shape, *args, **kwargs) -> int:
    return 2 * col_shape[0] * fourth_shape[1]
