"""The class tree's CPU loss in C++ (built and loaded by vqbench.heads.native): a log-softmax over each target's
own class of word vectors, forward and backward.

PyTorch has no op for "a log-softmax over each target's own block of rows": composed from torch ops, the class
tree pays one skinny matrix product per class (about 90 microseconds each on the project's machine, mostly
overhead, three to seven times the cost of streaming the rows). These kernels stream each class's rows once per
four of its tokens, accumulate in float32 from float32 or bfloat16 inputs (converted as they are loaded, never
copied), and write each output once. ``available()`` is False where they cannot be built (no compiler, or
VQBENCH_KERNELS=torch) and the class tree takes its torch path.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import torch
from torch.utils.flop_counter import register_flop_formula

from vqbench.heads import native
from vqbench.heads.native import INT, INT64, POINTER, pointer as _ptr
from vqbench.heads.fresh import fresh_empty

SOURCE = r"""
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

#define DEFINE(A, B, TA, TB) \
extern "C" void class_forward_##A##_##B(const void* g, const void* w, int64_t d, int64_t C, const int64_t* ts, \
        const int64_t* rs, const int64_t* ss, const int64_t* pos, float* scores, float* lse, float* own, \
        int threads) { \
    class_forward((const TA*)g, (const TB*)w, d, C, ts, rs, ss, pos, scores, lse, own, threads); } \
extern "C" void class_backward_##A##_##B(const void* g, const void* w, int64_t d, int64_t C, const int64_t* ts, \
        const int64_t* rs, const int64_t* ss, const int64_t* pos, const float* scores, const float* lse, \
        const float* gout, void* gg, void* gw, int threads) { \
    class_backward((const TA*)g, (const TB*)w, d, C, ts, rs, ss, pos, scores, lse, gout, (TA*)gg, (TB*)gw, \
                   threads); }
FOR_TYPES(DEFINE)
"""

_P, _I = POINTER, INT64
SIGNATURES = {
    "class_forward": [_P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P, INT],
    "class_backward": [_P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, INT],
}


@lru_cache(maxsize=None)
def _library():
    return native.load("class-tree", SOURCE, SIGNATURES)


def available() -> bool:
    return _library() is not None


def supports(*tensors) -> bool:
    """True when the kernels can take these tensors (CPU, float32 or bfloat16, contiguous) and are built."""
    return native.takes(*tensors) and available()


def _function(name, first, second):
    return native.typed_function(_library(), name, first, second)


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


@register_flop_formula(torch.ops.vqbench.class_within_forward)
def _class_forward_flops(grouped_shape, words_shape, *args, **kwargs) -> int:
    return 2 * args[-1] * grouped_shape[1]  # pairs: the last argument


@register_flop_formula(torch.ops.vqbench.class_within_backward)
def _class_backward_flops(grouped_shape, words_shape, ts, rs, ss, pos, scores_shape, *args, **kwargs) -> int:
    products = bool(args[-2]) + bool(args[-1])  # the hidden gradient, the weight gradient
    return 2 * products * scores_shape[0] * grouped_shape[1]


