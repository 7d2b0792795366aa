"""The Huffman tree's CPU loss in C++ (built and loaded by vqbench.heads.native): the sum of log-sigmoids of dot
products along each target's path, forward and backward.

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
// Each token reads its own row once and its path's rows (four at a time).
template <typename TH, typename TW>
static void path_forward(const TH* h, const TW* u, int64_t d, int64_t n, const int64_t* target,
                         const int64_t* leaf_start, const int64_t* leaf_node, const int8_t* leaf_sign,
                         int64_t depth_max, float* scores, float* signs, int threads) {
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
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
// row written once (in h's dtype).
template <typename TH, typename TW>
static void path_backward_hidden(const TW* u, int64_t d, int64_t n, const int64_t* target, const int64_t* leaf_start,
                                 const int64_t* leaf_node, int64_t depth_max, const float* coef, const float* gout,
                                 TH* gh, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> acc((size_t)d);
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < n; ++i) {
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

#define DEFINE(A, B, TA, TB) \
extern "C" void path_forward_##A##_##B(const void* h, const void* u, int64_t d, int64_t n, const int64_t* target, \
        const int64_t* ls, const int64_t* ln, const int8_t* lsign, int64_t depth_max, float* scores, \
        float* signs, int threads) { \
    path_forward((const TA*)h, (const TB*)u, d, n, target, ls, ln, lsign, depth_max, scores, signs, threads); } \
extern "C" void path_backward_hidden_##A##_##B(const void* u, int64_t d, int64_t n, const int64_t* target, \
        const int64_t* ls, const int64_t* ln, int64_t depth_max, const float* coef, const float* gout, void* gh, \
        int threads) { \
    path_backward_hidden((const TB*)u, d, n, target, ls, ln, depth_max, coef, gout, (TA*)gh, threads); } \
extern "C" void path_backward_weight_##A##_##B(const void* h, int64_t d, int64_t nodes, const int64_t* ns, \
        const int64_t* pt, const float* pv, const int64_t* touched, int64_t m, int dense, void* gw, int threads) { \
    path_backward_weight((const TA*)h, d, nodes, ns, pt, pv, touched, m, dense != 0, (TB*)gw, threads); }
FOR_TYPES(DEFINE)
"""

_P, _I = POINTER, INT64
SIGNATURES = {
    "path_forward": [_P, _P, _I, _I, _P, _P, _P, _P, _I, _P, _P, INT],
    "path_backward_hidden": [_P, _I, _I, _P, _P, _P, _I, _P, _P, _P, INT],
    "path_backward_weight": [_P, _I, _I, _P, _P, _P, _P, _I, INT, _P, INT],
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
def path_forward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, leaf_start: torch.Tensor,
                 leaf_node: torch.Tensor, leaf_sign: torch.Tensor, depth_max: int, pairs: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Huffman tree path log-probabilities: hidden [N, d], weight [V-1, d] (float32 or bfloat16, converted as
    loaded), target [N]; every leaf's path as CSR (leaf_start [V + 1], leaf_node [L] int64, leaf_sign [L] int8
    +-1); depth_max, the longest path; pairs = E, the summed path lengths of the targets (FLOP count only).
    -> (log p [N], coef [N, depth_max]) float32: sum over each target's path of logsigmoid(sign h . u), and
    sign sigmoid(-sign h . u) at each step (0 past the path's end), kept for backward. 2 E d FLOPs; reads h
    and each touched row (from cache after the first reach), writes 2 N depth_max floats (scores and signs)
    and N, and the log-sigmoids read and write N depth_max floats a few times."""
    n, d = hidden.shape
    scores, signs = torch.empty(n, depth_max), torch.empty(n, depth_max)
    _function("path_forward", hidden, weight)(
        _ptr(hidden), _ptr(weight), d, n, _ptr(target), _ptr(leaf_start), _ptr(leaf_node), _ptr(leaf_sign),
        depth_max, _ptr(scores), _ptr(signs), torch.get_num_threads())
    out = F.logsigmoid(scores).sum(1)  # the +inf past each path's end adds 0
    # d logsigmoid(s) / ds = sigmoid(-s), times the sign for d / d(h . u); 0 past the end
    return out, torch.sigmoid(scores.neg_()).mul_(signs)


@torch.library.custom_op("vqbench::huffman_path_backward", mutates_args=())
def path_backward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, leaf_start: torch.Tensor,
                  leaf_node: torch.Tensor, coef: torch.Tensor, grad_out: torch.Tensor, pairs: int, want_hidden: bool,
                  want_weight: bool, sparse: bool) -> List[torch.Tensor]:
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
            _ptr(weight), d, n, _ptr(target), _ptr(leaf_start), _ptr(leaf_node), depth_max, _ptr(coef),
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


@register_flop_formula(torch.ops.vqbench.huffman_path_forward)
def _path_forward_flops(hidden_shape, *args, **kwargs) -> int:
    return 2 * args[-1] * hidden_shape[1]  # pairs: the last argument


@register_flop_formula(torch.ops.vqbench.huffman_path_backward)
def _path_backward_flops(hidden_shape, weight_shape, target_shape, ls_shape, ln_shape, coef_shape, gout_shape,
                         pairs, want_hidden, want_weight, *args, **kwargs) -> int:
    return 2 * (bool(want_hidden) + bool(want_weight)) * pairs * hidden_shape[1]
