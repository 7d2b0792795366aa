"""The Huffman tree's CPU kernels in C++ (built and loaded by vqbench.heads.native): the loss, the sum of
log-sigmoids of dot products along each target's path, forward and backward; and the walk from the root down that
gives every leaf's log-probability (log_probs) or each token's best leaf (predict).

Composed from torch ops, each call pays a dozen small ops (gathers of the paths, a sampled product, a scatter of
the sums, a sort for the node-major gradient), each costing more than its few kilobytes of work. These kernels
read each token's path from the leaves' paths (stored once as CSR), take its dots four rows at a time with
float32 accumulation from float32 or bfloat16 inputs (converted as they are loaded, never copied), and write
each output once; the node vectors' gradient groups the (token, node) pairs by node with a counting sort, and
is written dense (every row once) or as the touched rows only (``sparse``). ``available()`` is False where they
cannot be built (no compiler, or VQBENCH_KERNELS=torch) and the tree takes its torch path.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from vqbench.heads import native
from vqbench.heads.native import INT, INT64, POINTER, pointer as _ptr
from vqbench.heads.fresh import fresh_empty

SOURCE = r"""
#include <omp.h>

// y += a0 x0 + a1 x1 + a2 x2 + a3 x3 (d elements), float accumulation: four rows streamed at once, so that their
// loads from memory overlap (one row at a time waits on each row's first cache miss)
template <typename T>
static inline void axpy4(float a0, const T* x0, float a1, const T* x1, float a2, const T* x2, float a3, const T* x3,
                         float* __restrict__ y, int64_t d) {
#pragma omp simd
    for (int64_t k = 0; k < d; ++k)
        y[k] += a0 * load(x0, k) + a1 * load(x1, k) + a2 * load(x2, k) + a3 * load(x3, k);
}

// acc = sum over pairs e in [e0, e1) of value[e] h_{token[e]} (acc [d], overwritten), four rows at a time
template <typename TH>
static inline void gather_sum(const TH* h, int64_t d, const int64_t* token, const float* value, int64_t e0,
                              int64_t e1, float* acc) {
    std::fill(acc, acc + d, 0.f);
    int64_t e = e0;
    for (; e + 4 <= e1; e += 4)
        axpy4(value[e], h + token[e] * d, value[e + 1], h + token[e + 1] * d, value[e + 2], h + token[e + 2] * d,
              value[e + 3], h + token[e + 3] * d, acc, d);
    for (; e < e1; ++e) axpy(value[e], h + token[e] * d, acc, d);
}

// Huffman tree, forward: the signed scores s[i, k] = sign_k h_i . u_{node_k} along token i's target path, +inf past
// the path's end (where logsigmoid is 0), and the signs, sign[i, k] (0 past the end); the log-sigmoids are taken
// by torch's vectorised ops (one libm call per pair here cost more than the dots).
// h [N, d], u [V-1, d]; the paths of all V leaves as CSR: leaf_start [V+1], leaf_node, leaf_sign (int8, +-1).
// Each token reads its own row once and its path's rows (four at a time). The tokens go in ``order`` (a
// permutation of 0..n-1), the order of their targets in the tree's left-to-right leaf order: neighbours share the
// top of their paths, whose rows then come from the nearest cache rather than from L3 or memory.
template <typename TH, typename TW>
static void path_forward(const TH* h, const TW* u, int64_t d, int64_t n, const int64_t* target, const int64_t* order,
                         const int64_t* leaf_start, const int64_t* leaf_node, const int8_t* leaf_sign,
                         int64_t depth_max, float* scores, float* signs, int threads) {
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t step = 0; step < n; ++step) {
        int64_t i = order[step];
        const TH* hi = h + i * d;
        int64_t e0 = leaf_start[target[i]], len = leaf_start[target[i] + 1] - e0;
        const int64_t* node = leaf_node + e0;
        const int8_t* sign = leaf_sign + e0;
        float* s = scores + i * depth_max;
        float* g = signs + i * depth_max;
        int64_t k = 0;
        for (; k + 4 <= len; k += 4)
            dot4(hi, u + node[k] * d, u + node[k + 1] * d, u + node[k + 2] * d, u + node[k + 3] * d, d, s + k);
        for (; k < len; ++k) s[k] = dot1(hi, u + node[k] * d, d);
        for (k = 0; k < len; ++k) {
            g[k] = sign[k];
            s[k] *= g[k];
        }
        for (; k < depth_max; ++k) {
            s[k] = INFINITY;
            g[k] = 0.f;
        }
    }
}

// Huffman tree, gradient of sum_i gout_i out_i for the hidden states: gh_i = sum_k gout_i coef_ik u_{node_k}, each
// row written once (in h's dtype); the tokens in ``order``, as path_forward.
template <typename TH, typename TW>
static void path_backward_hidden(const TW* u, int64_t d, int64_t n, const int64_t* target, const int64_t* order,
                                 const int64_t* leaf_start, const int64_t* leaf_node, int64_t depth_max,
                                 const float* coef, const float* gout, TH* gh, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> acc((size_t)d);
#pragma omp for schedule(dynamic, 16)
        for (int64_t step = 0; step < n; ++step) {
            int64_t i = order[step];
            int64_t e0 = leaf_start[target[i]], len = leaf_start[target[i] + 1] - e0;
            const int64_t* node = leaf_node + e0;
            const float* c = coef + i * depth_max;
            std::fill(acc.begin(), acc.end(), 0.f);
            int64_t k = 0;
            for (; k + 4 <= len; k += 4)
                axpy4(gout[i] * c[k], u + node[k] * d, gout[i] * c[k + 1], u + node[k + 1] * d, gout[i] * c[k + 2],
                      u + node[k + 2] * d, gout[i] * c[k + 3], u + node[k + 3] * d, acc.data(), d);
            for (; k < len; ++k) axpy(gout[i] * c[k], u + node[k] * d, acc.data(), d);
            for (int64_t k = 0; k < d; ++k) store(gh, i * d + k, acc[k]);
        }
    }
}

// Huffman tree, the (token, node) pairs grouped by node for the node vectors' gradient: a counting sort (serial: E,
// the summed path lengths, is a few per token). node_start [nodes + 1]; pair_token and pair_value [E] (the pair's
// coefficient gout_i coef_ik); touched [nodes]: the reached nodes in increasing order. Returns M, how many.
extern "C" int64_t path_group(int64_t nodes, int64_t n, const int64_t* target, const int64_t* leaf_start,
                              const int64_t* leaf_node, int64_t depth_max, const float* coef, const float* gout,
                              int64_t* node_start, int64_t* pair_token, float* pair_value, int64_t* touched) {
    std::fill(node_start, node_start + nodes + 1, 0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t e = leaf_start[target[i]]; e < leaf_start[target[i] + 1]; ++e) ++node_start[leaf_node[e] + 1];
    int64_t m = 0;
    for (int64_t r = 0; r < nodes; ++r) {
        if (node_start[r + 1] > 0) touched[m++] = r;
        node_start[r + 1] += node_start[r];
    }
    std::vector<int64_t> fill(node_start, node_start + nodes);
    for (int64_t i = 0; i < n; ++i) {
        int64_t e0 = leaf_start[target[i]], len = leaf_start[target[i] + 1] - e0;
        for (int64_t k = 0; k < len; ++k) {
            int64_t slot = fill[leaf_node[e0 + k]]++;
            pair_token[slot] = i;
            pair_value[slot] = gout[i] * coef[i * depth_max + k];
        }
    }
    return m;
}

// Huffman tree, gradient for the node vectors from path_group's pairs: row r = sum over r's pairs of value h_token.
// dense: gw [nodes, d], every row written once (zeros where no pair); else gw [M, d], the touched rows in order.
template <typename TH, typename TW>
static void path_backward_weight(const TH* h, int64_t d, int64_t nodes, const int64_t* node_start,
                                 const int64_t* pair_token, const float* pair_value, const int64_t* touched, int64_t m,
                                 bool dense, TW* gw, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> acc((size_t)d);
        if (dense) {  // dynamic: the touched nodes crowd the high ids (the nodes near the root)
#pragma omp for schedule(dynamic, 64)
            for (int64_t r = 0; r < nodes; ++r) {
                if (node_start[r + 1] == node_start[r]) { std::memset(gw + r * d, 0, d * sizeof(TW)); continue; }
                gather_sum(h, d, pair_token, pair_value, node_start[r], node_start[r + 1], acc.data());
                for (int64_t k = 0; k < d; ++k) store(gw, r * d + k, acc[k]);
            }
        } else {
#pragma omp for schedule(dynamic, 16)
            for (int64_t j = 0; j < m; ++j) {
                int64_t r = touched[j];
                gather_sum(h, d, pair_token, pair_value, node_start[r], node_start[r + 1], acc.data());
                for (int64_t k = 0; k < d; ++k) store(gw, j * d + k, acc[k]);
            }
        }
    }
}

// log(1 + exp(-|x|)), the part of log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)) that both branches share,
// without a libm call so that a loop over lanes vectorises: exp by Cody-Waite reduction and Cephes' polynomial,
// log by the atanh series on [sqrt(1/2), sqrt(2)] with log1p's rounding correction; below 2e-7 absolute error.
// NaN in, NaN out.
static inline float log1p_exp_neg_abs(float x) {
    float a = std::fabs(x);
    a = a < 87.f ? a : 87.f;                                   // exp(-87) is still a normal float
    float z = -a * 1.44269504088896341f;                       // exp(-a) = 2^k e^r, |r| <= ln2 / 2
    float k = (z + 12582912.f) - 12582912.f;                   // z rounded (|z| < 2^22): floor would not vectorise
    float r = (-a - k * 0.693359375f) + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale; std::memcpy(&scale, &bits, 4);
    float t = (p * r * r + r + 1.f) * scale;                   // exp(-|x|) in (0, 1]
    float u = 1.f + t;                                         // log(1 + t) = log(u) + (t - (u - 1)) / u
    float correction = (t - (u - 1.f)) / u;
    bool high = u > 1.41421356f;
    float f = high ? u * 0.5f - 1.f : u - 1.f;                 // exact; log(u) = high ln2 + log(1 + f)
    float s = f / (2.f + f), s2 = s * s;                       // log(1 + f) = 2 atanh(s), |s| < 0.172
    float series = 2.f * s * (1.f + s2 * (1.f / 3 + s2 * (1.f / 5 + s2 * (1.f / 7 + s2 * (1.f / 9)))));
    float out = (high ? 0.693147180559945f : 0.f) + series + correction;
    return x == x ? out : x;
}

// Huffman tree, every leaf's log-probability: one sweep over the internal nodes in preorder (walk_order [V-1]: a
// parent before its children, a left subtree before the right one), each thread over its own range of token
// columns, so that every access is a contiguous run of a row: scores [V-1, n] (node-major: h . u_j for each
// token), the path sums of the internal nodes reached but not yet visited in table [rows, n] float32 (internal
// node j's row is slot[j]; in preorder these are the right children pending along the current path, so rows is
// at most the tree's depth and the table stays in cache), left and right [V-1] (the children's node ids: a leaf
// v < V, internal node j is V + j). Writes out [V, n] (token-major), or with out null each token's best leaf to
// best [n] (the first of ties in TO's rounding, as argmax over out's values).
template <typename TS, typename TO>
static void tree_walk(const TS* scores, int64_t n, int64_t v, const int64_t* left, const int64_t* right,
                      const int64_t* walk_order, const int64_t* slot, float* table, TO* out, int64_t* best,
                      int threads) {
    constexpr int64_t TILE = 512;  // columns at a time: the tile's temporaries stay in L1
#pragma omp parallel num_threads(threads)
    {
        int parts = omp_get_num_threads(), part = omp_get_thread_num();
        int64_t c0 = n * part / parts, c1 = n * (part + 1) / parts;
        float go_left[TILE], go_right[TILE];
        std::vector<float> top(out == nullptr ? (size_t)(c1 - c0) : 0, -INFINITY);
        std::vector<int64_t> arg(out == nullptr ? (size_t)(c1 - c0) : 0, INT64_MAX);  // any leaf beats it
        std::fill(table + slot[v - 2] * n + c0, table + slot[v - 2] * n + c1, 0.f);  // the root: log 1
        for (int64_t step = 0; step < v - 1; ++step) {
            int64_t j = walk_order[step];
            const TS* s = scores + j * n;
            const float* above = table + slot[j] * n;
            for (int64_t t0 = c0; t0 < c1; t0 += TILE) {
                int64_t width = std::min(TILE, c1 - t0);
#pragma omp simd
                for (int64_t t = 0; t < width; ++t) {
                    float x = load(s, t0 + t);
                    float shared = above[t0 + t] - log1p_exp_neg_abs(x);
                    go_left[t] = shared + (x < 0.f ? x : 0.f);    // log sigmoid(x)
                    go_right[t] = shared - (x > 0.f ? x : 0.f);   // log sigmoid(-x)
                }
                for (int side = 0; side < 2; ++side) {
                    int64_t child = side ? right[j] : left[j];
                    const float* go = side ? go_right : go_left;
                    if (child >= v) {  // an internal node: its path sums (its row may be this node's own)
                        float* row = table + slot[child - v] * n + t0;
#pragma omp simd
                        for (int64_t t = 0; t < width; ++t) row[t] = go[t];
                    } else if (out != nullptr) {
                        TO* row = out + child * n + t0;
#pragma omp simd
                        for (int64_t t = 0; t < width; ++t) store(row, t, go[t]);
                    } else {
                        float* best_value = top.data() + (t0 - c0);
                        int64_t* best_leaf = arg.data() + (t0 - c0);
                        for (int64_t t = 0; t < width; ++t) {
                            TO rounded;  // compared as written
                            store(&rounded, 0, go[t]);
                            float g = load(&rounded, 0);
                            // the first of ties and of NaNs, as argmax: NaN counts as the largest value
                            bool nan = g != g, top_nan = best_value[t] != best_value[t];
                            bool better = nan ? (!top_nan || child < best_leaf[t])
                                              : (!top_nan && (g > best_value[t] ||
                                                              (g == best_value[t] && child < best_leaf[t])));
                            if (better) { best_value[t] = g; best_leaf[t] = child; }
                        }
                    }
                }
            }
        }
        if (out == nullptr) std::copy(arg.begin(), arg.end(), best + c0);
    }
}

#define DEFINE(A, B, TA, TB) \
extern "C" void path_forward_##A##_##B(const void* h, const void* u, int64_t d, int64_t n, const int64_t* target, \
        const int64_t* order, const int64_t* ls, const int64_t* ln, const int8_t* lsign, int64_t depth_max, \
        float* scores, float* signs, int threads) { \
    path_forward((const TA*)h, (const TB*)u, d, n, target, order, ls, ln, lsign, depth_max, scores, signs, threads); } \
extern "C" void path_backward_hidden_##A##_##B(const void* u, int64_t d, int64_t n, const int64_t* target, \
        const int64_t* order, const int64_t* ls, const int64_t* ln, int64_t depth_max, const float* coef, \
        const float* gout, void* gh, int threads) { \
    path_backward_hidden((const TB*)u, d, n, target, order, ls, ln, depth_max, coef, gout, (TA*)gh, threads); } \
extern "C" void path_backward_weight_##A##_##B(const void* h, int64_t d, int64_t nodes, const int64_t* ns, \
        const int64_t* pt, const float* pv, const int64_t* touched, int64_t m, int dense, void* gw, int threads) { \
    path_backward_weight((const TA*)h, d, nodes, ns, pt, pv, touched, m, dense != 0, (TB*)gw, threads); } \
extern "C" void tree_walk_##A##_##B(const void* scores, int64_t n, int64_t v, const int64_t* left, \
        const int64_t* right, const int64_t* walk_order, const int64_t* slot, float* table, void* out, \
        int64_t* best, int threads) { \
    tree_walk((const TA*)scores, n, v, left, right, walk_order, slot, table, (TB*)out, best, threads); }
FOR_TYPES(DEFINE)
"""

_P, _I = POINTER, INT64
SIGNATURES = {
    "path_forward": [_P, _P, _I, _I, _P, _P, _P, _P, _P, _I, _P, _P, INT],
    "path_backward_hidden": [_P, _I, _I, _P, _P, _P, _P, _I, _P, _P, _P, INT],
    "path_backward_weight": [_P, _I, _I, _P, _P, _P, _P, _I, INT, _P, INT],
    "tree_walk": [_P, _I, _I, _P, _P, _P, _P, _P, _P, _P, INT],
}
PLAIN = {"path_group": ([_I, _I, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P], INT64)}


@lru_cache(maxsize=None)
def _library():
    return native.load("huffman-tree", SOURCE, SIGNATURES, PLAIN)


def available() -> bool:
    return _library() is not None


def supports(*tensors) -> bool:
    """True when the kernels can take these tensors (CPU, float32 or bfloat16, contiguous) and are built."""
    return native.takes(*tensors) and available()


def _function(name, first, second):
    return native.typed_function(_library(), name, first, second)


@torch.library.custom_op("vqbench::huffman_path_forward", mutates_args=())
def path_forward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, order: torch.Tensor,
                 leaf_start: torch.Tensor, leaf_node: torch.Tensor, leaf_sign: torch.Tensor, depth_max: int, pairs: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Huffman tree path log-probabilities: hidden [N, d], weight [V-1, d] (float32 or bfloat16, converted as
    loaded), target [N]; order [N], the tokens in the order to visit them (a permutation; by their targets'
    places in the tree's leaf order, so that neighbours share path rows in cache); every leaf's path as CSR
    (leaf_start [V + 1], leaf_node [L] int64, leaf_sign [L] int8 +-1); depth_max, the longest path; pairs = E,
    the summed path lengths of the targets (FLOP count only).
    -> (log p [N], coef [N, depth_max]) float32: sum over each target's path of logsigmoid(sign h . u), and
    sign sigmoid(-sign h . u) at each step (0 past the path's end), kept for backward. 2 E d FLOPs; reads h
    and each touched row (from cache after the first reach), writes 2 N depth_max floats (scores and signs)
    and N, and the log-sigmoids read and write N depth_max floats a few times."""
    n, d = hidden.shape
    scores, signs = torch.empty(n, depth_max), torch.empty(n, depth_max)
    _function("path_forward", hidden, weight)(
        _ptr(hidden), _ptr(weight), d, n, _ptr(target), _ptr(order), _ptr(leaf_start), _ptr(leaf_node), _ptr(leaf_sign),
        depth_max, _ptr(scores), _ptr(signs), torch.get_num_threads())
    out = F.logsigmoid(scores).sum(1)  # the +inf past each path's end adds 0
    # d logsigmoid(s) / ds = sigmoid(-s), times the sign for d / d(h . u); 0 past the end
    return out, torch.sigmoid(scores.neg_()).mul_(signs)


@torch.library.custom_op("vqbench::huffman_path_backward", mutates_args=())
def path_backward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, order: torch.Tensor,
                  leaf_start: torch.Tensor, leaf_node: torch.Tensor, coef: torch.Tensor, grad_out: torch.Tensor,
                  pairs: int, want_hidden: bool, want_weight: bool, sparse: bool) -> List[torch.Tensor]:
    """Gradients of sum_i grad_out_i log p_i (path_forward's): [grad_hidden [N, d] in hidden's dtype, grad_weight,
    touched]. grad_weight in weight's dtype: dense [V-1, d] (rows no path reached are zero, every row written
    once), or with ``sparse`` only the M touched rows [M, d], in the order of touched [M] (int64, increasing). An
    empty tensor where not wanted. 2 E d FLOPs per gradient wanted; the weight gradient first groups the E pairs by
    node (a counting sort over V-1 nodes)."""
    n, d = hidden.shape
    nodes, depth_max = weight.shape[0], coef.shape[1]
    grad_out = grad_out.float().contiguous()  # held here: a pointer to a temporary would dangle
    grad_hidden = torch.empty_like(hidden) if want_hidden else torch.empty(0)
    if want_hidden:
        _function("path_backward_hidden", hidden, weight)(
            _ptr(weight), d, n, _ptr(target), _ptr(order), _ptr(leaf_start), _ptr(leaf_node), depth_max, _ptr(coef),
            _ptr(grad_out), _ptr(grad_hidden), torch.get_num_threads())
    if not want_weight:
        return [grad_hidden, torch.empty(0, dtype=weight.dtype), torch.empty(0, dtype=torch.int64)]
    node_start = torch.empty(nodes + 1, dtype=torch.int64)
    pair_token = torch.empty(pairs, dtype=torch.int64)
    pair_value = torch.empty(pairs)
    touched = torch.empty(nodes, dtype=torch.int64)
    m = _library().path_group(nodes, n, _ptr(target), _ptr(leaf_start), _ptr(leaf_node), depth_max, _ptr(coef),
                              _ptr(grad_out), _ptr(node_start), _ptr(pair_token), _ptr(pair_value), _ptr(touched))
    # the dense [V-1, d] gradient is most of a dense training step's traffic: first touched on huge pages
    grad_weight = (torch.empty(m, d, dtype=weight.dtype) if sparse
                   else fresh_empty(weight.shape, dtype=weight.dtype, device="cpu"))
    _function("path_backward_weight", hidden, weight)(
        _ptr(hidden), d, nodes, _ptr(node_start), _ptr(pair_token), _ptr(pair_value), _ptr(touched), m,
        0 if sparse else 1, _ptr(grad_weight), torch.get_num_threads())
    return [grad_hidden, grad_weight, touched[:m].clone() if sparse else torch.empty(0, dtype=torch.int64)]


@torch.library.custom_op("vqbench::huffman_tree_walk", mutates_args=("out",))
def tree_walk(scores: torch.Tensor, left: torch.Tensor, right: torch.Tensor, walk_order: torch.Tensor,
              slot: torch.Tensor, rows: int, out: torch.Tensor) -> None:
    """Every leaf's log-probability, written into out [V, N] (token-major, contiguous, float32 or bfloat16), from
    scores [V-1, N] (h . u_j for internal node j, node-major, float32 or bfloat16), the internal nodes' children
    left, right [V-1] (node ids: leaves 0..V-1, internal node j is V + j) and the walk's plan (walk_plan):
    walk_order [V-1], the internal nodes in preorder, and slot [V-1], the row of a float32 [rows, N] table that
    holds node j's path sums from its parent's visit to its own. One sweep over the nodes, each thread over its
    own columns; both branches' log-sigmoids from one vectorised log(1 + exp(-|s|)) per node and token. No FLOPs
    counted (the products are the GEMM's). Reads the scores once and writes out once, (V-1) N + V N elements; the
    table's rows (at most the tree's depth) stay in cache."""
    n = scores.shape[1]
    _check_walk(scores, left, right, walk_order, slot, out.shape[0])
    if out.shape[1] != n or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous [{out.shape[0]}, {n}] tensor, got {tuple(out.shape)}")
    table = torch.empty(rows, n)
    _function("tree_walk", scores, out)(_ptr(scores), n, out.shape[0], _ptr(left), _ptr(right), _ptr(walk_order),
                                        _ptr(slot), _ptr(table), _ptr(out), None, torch.get_num_threads())


@torch.library.custom_op("vqbench::huffman_tree_argmax", mutates_args=())
def tree_argmax(scores: torch.Tensor, left: torch.Tensor, right: torch.Tensor, walk_order: torch.Tensor,
                slot: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """[N] int64: each token's most probable leaf (the first of ties, as argmax over tree_walk's output in
    ``dtype``, float32 or bfloat16), by the same walk without writing the V log-probabilities: reads scores
    [V-1, N] once, writes N indices."""
    n = scores.shape[1]
    _check_walk(scores, left, right, walk_order, slot, scores.shape[0] + 1)
    best = torch.empty(n, dtype=torch.int64)
    table = torch.empty(rows, n)
    getattr(_library(), f"tree_walk_{native.SUFFIX[scores.dtype]}_{native.SUFFIX[dtype]}")(
        _ptr(scores), n, scores.shape[0] + 1, _ptr(left), _ptr(right), _ptr(walk_order), _ptr(slot), _ptr(table),
        None, _ptr(best), torch.get_num_threads())
    return best


@tree_argmax.register_fake
def _(scores, left, right, walk_order, slot, rows, dtype):
    return scores.new_empty(scores.shape[1], dtype=torch.int64)


def _check_walk(scores, left, right, walk_order, slot, vocab):
    """The walk reads these by index without bounds checks: their shapes must agree."""
    for name, t in (("scores", scores), ("left", left), ("right", right), ("walk_order", walk_order),
                    ("slot", slot)):
        if t.shape[0] != vocab - 1 or not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor with {vocab - 1} rows, got {tuple(t.shape)}")


def walk_plan(left: torch.Tensor, right: torch.Tensor, vocab: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(walk_order [V-1], slot [V-1], rows) for tree_walk: the internal nodes in preorder (a parent before its
    children, the left subtree first) from the root V-2, and each node's table row. A node's row is free once
    the node is visited: one child takes it over (the walk reads each column before it writes it), the other a
    freed row or a new one; rows is the most in use at once: in preorder, the right children pending along the
    current path, at most the tree's depth."""
    children = list(zip(left.tolist(), right.tolist()))
    order: List[int] = []
    slot = [0] * (vocab - 1)
    free: List[int] = []
    rows = 1  # the root's
    stack = [vocab - 2]
    while stack:
        node = stack.pop()
        order.append(node)
        own = [slot[node]]
        for child in children[node]:
            if child >= vocab:
                slot[child - vocab] = own.pop() if own else (free.pop() if free else rows)
                rows = max(rows, slot[child - vocab] + 1)
        free += own
        stack += [child - vocab for child in reversed(children[node]) if child >= vocab]  # the left one on top
    return torch.tensor(order, dtype=torch.int64), torch.tensor(slot, dtype=torch.int64), rows


@register_flop_formula(torch.ops.vqbench.huffman_path_forward)
def _path_forward_flops(hidden_shape, *args, **kwargs) -> int:
    return 2 * args[-1] * hidden_shape[1]  # pairs: the last argument


@register_flop_formula(torch.ops.vqbench.huffman_path_backward)
def _path_backward_flops(hidden_shape, weight_shape, target_shape, order_shape, ls_shape, ln_shape, coef_shape,
                         gout_shape, pairs, want_hidden, want_weight, *args, **kwargs) -> int:
    return 2 * (bool(want_hidden) + bool(want_weight)) * pairs * hidden_shape[1]
