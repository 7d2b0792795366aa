"""The Huffman tree's CPU kernels in C++ (built and loaded by vqbench.heads.native): the loss, the sum of
log-sigmoids of dot products along each target's path, forward and backward; and the walk from the root down that
gives every leaf's log-probability (log_probs) or each token's best leaf (predict).

Composed from torch ops, each call pays a dozen small ops (gathers of the paths, a sampled product, a scatter of
the sums, a sort for the node-major gradient), each costing more than its few kilobytes of work. These kernels
read each token's path from the leaves' paths (stored once as CSR) and visit the tokens in their targets' leaf
order, four at a time: the four then share the top of their paths, whose products are taken four tokens by four
nodes (8 rows loaded for 16 products; a token's row against four nodes loads 5 for 4), the rest of each path four
nodes at a time. Sums are float32 from float32 or bfloat16 inputs (converted as they are loaded, never copied;
bfloat16 pairs multiplied natively where the CPU has AVX512-BF16), and each output is written once. The node
vectors' gradient is one sweep in that order, a float32 row per level of the current path, each touched node's
row written once when the sweep leaves its subtree; the dense gradient is then written in row order, each row once
(zero or a touched row). ``available()`` is False where they cannot be built (no compiler, or VQBENCH_KERNELS=torch)
and the tree takes its torch path.
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
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// y += a0 x0 + a1 x1 + a2 x2 + a3 x3 (d elements), float accumulation: four rows streamed at once, so that their
// loads from memory overlap (one row at a time waits on each row's first cache miss)
template <typename T>
static inline void axpy4(float a0, const T* x0, float a1, const T* x1, float a2, const T* x2, float a3, const T* x3,
                         float* __restrict__ y, int64_t d) {
#pragma omp simd
    for (int64_t k = 0; k < d; ++k)
        y[k] += a0 * load(x0, k) + a1 * load(x1, k) + a2 * load(x2, k) + a3 * load(x3, k);
}

#if defined(__AVX512F__)
// 16 elements as float32 from float32 or bfloat16 (a bfloat16 is the top half of a float32)
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const bf16* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
#endif

// y_j += sum_r c[j][r] x_r for four rows x_r and four float32 rows y_j (d elements): 4 rows read and 4 updated for
// 16 products
template <typename T>
static inline void axpy4x4(const float (&c)[4][4], const T* const* x, float* const* y, int64_t d) {
    int64_t k = 0;
#if defined(__AVX512F__)
    __m512 cv[4][4];
    for (int j = 0; j < 4; ++j)
        for (int r = 0; r < 4; ++r) cv[j][r] = _mm512_set1_ps(c[j][r]);
    for (; k + 16 <= d; k += 16) {
        __m512 x0 = load16(x[0] + k), x1 = load16(x[1] + k), x2 = load16(x[2] + k), x3 = load16(x[3] + k);
        for (int j = 0; j < 4; ++j) {
            __m512 a = _mm512_loadu_ps(y[j] + k);
            a = _mm512_fmadd_ps(cv[j][0], x0, a);
            a = _mm512_fmadd_ps(cv[j][1], x1, a);
            a = _mm512_fmadd_ps(cv[j][2], x2, a);
            a = _mm512_fmadd_ps(cv[j][3], x3, a);
            _mm512_storeu_ps(y[j] + k, a);
        }
    }
#endif
    for (; k < d; ++k) {
        float x0 = load(x[0], k), x1 = load(x[1], k), x2 = load(x[2], k), x3 = load(x[3], k);
        for (int j = 0; j < 4; ++j) y[j][k] += c[j][0] * x0 + c[j][1] * x1 + c[j][2] * x2 + c[j][3] * x3;
    }
}

// the length of the common top of two tokens' paths (leaf upwards: the top is at each path's end)
static inline int64_t common_top(const int64_t* a, int64_t la, const int64_t* b, int64_t lb) {
    int64_t c = 0;
    while (c < la && c < lb && a[la - 1 - c] == b[lb - 1 - c]) ++c;
    return c;
}

// the dots of four rows of one operand with four rows of the other, out[4 j + k] = a_j . b_k, float accumulation:
// 8 rows loaded for 16 products (a row against four rows loads 5 for 4)
template <typename TA, typename TB>
static inline void dot4x4(const TA* const* a, const TB* const* b, int64_t d, float* out) {
    float s[16] = {0.f};
    int64_t k = 0;
#if defined(__AVX512BF16__)
    if constexpr (sizeof(TA) == 2 && sizeof(TB) == 2) {  // bfloat16 pairs multiplied natively, summed in float32
        __m512 acc[16];
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
        for (; k + 32 <= d; k += 32) {
            __m512bh x[4], y[4];
            for (int j = 0; j < 4; ++j) {
                x[j] = (__m512bh)_mm512_loadu_si512((const void*)(a[j] + k));
                y[j] = (__m512bh)_mm512_loadu_si512((const void*)(b[j] + k));
            }
            for (int j = 0; j < 4; ++j)
                for (int r = 0; r < 4; ++r) acc[4 * j + r] = _mm512_dpbf16_ps(acc[4 * j + r], x[j], y[r]);
        }
        for (int r = 0; r < 16; ++r) s[r] = _mm512_reduce_add_ps(acc[r]);
    }
#endif
#if defined(__AVX512F__)
    {
        __m512 acc[16];
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
        for (; k + 16 <= d; k += 16) {
            __m512 x[4], y[4];
            for (int j = 0; j < 4; ++j) { x[j] = load16(a[j] + k); y[j] = load16(b[j] + k); }
            for (int j = 0; j < 4; ++j)
                for (int r = 0; r < 4; ++r) acc[4 * j + r] = _mm512_fmadd_ps(x[j], y[r], acc[4 * j + r]);
        }
        for (int r = 0; r < 16; ++r) s[r] += _mm512_reduce_add_ps(acc[r]);
    }
#endif
    for (; k < d; ++k)
        for (int j = 0; j < 4; ++j) {
            float x = load(a[j], k);
            for (int r = 0; r < 4; ++r) s[4 * j + r] += x * load(b[r], k);
        }
    std::copy(s, s + 16, out);
}

// one row against four, as dot4, with bfloat16 pairs multiplied natively where the CPU can
template <typename TA, typename TB>
static inline void dot1x4(const TA* w, const TB* a, const TB* b, const TB* c, const TB* e, int64_t d, float* out) {
#if defined(__AVX512BF16__)
    if constexpr (sizeof(TA) == 2 && sizeof(TB) == 2) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const TB* rows[4] = {a, b, c, e};
        int64_t k = 0;
        for (; k + 32 <= d; k += 32) {
            __m512bh x = (__m512bh)_mm512_loadu_si512((const void*)(w + k));
            for (int r = 0; r < 4; ++r)
                acc[r] = _mm512_dpbf16_ps(acc[r], x, (__m512bh)_mm512_loadu_si512((const void*)(rows[r] + k)));
        }
        for (int r = 0; r < 4; ++r) {
            out[r] = _mm512_reduce_add_ps(acc[r]);
            for (int64_t t = k; t < d; ++t) out[r] += load(w, t) * load(rows[r], t);
        }
        return;
    }
#endif
    dot4(w, a, b, c, e, d, out);
}

// the four tokens at places 4 block .. 4 block + 3 of ``order`` (fewer in the last block) and their target paths
// (node ids from the leaf up, as leaf_node stores them)
struct Block {
    int64_t count, token[4], len[4];
    const int64_t* node[4];
    Block(int64_t block, int64_t n, const int64_t* target, const int64_t* order, const int64_t* leaf_start,
          const int64_t* leaf_node) : count(std::min<int64_t>(4, n - 4 * block)) {
        for (int64_t j = 0; j < count; ++j) {
            token[j] = order[4 * block + j];
            int64_t e0 = leaf_start[target[token[j]]];
            len[j] = leaf_start[target[token[j]] + 1] - e0;
            node[j] = leaf_node + e0;
        }
    }
};

// Huffman tree, forward: the signed scores s[i, k] = sign_k h_i . u_{node_k} along token i's target path, +inf past
// the path's end (where logsigmoid is 0), and the signs, sign[i, k] (0 past the end); the log-sigmoids are taken
// by torch's vectorised ops (one libm call per pair here cost more than the dots).
// h [N, d], u [V-1, d]; the paths of all V leaves as CSR: leaf_start [V+1], leaf_node, leaf_sign (int8, +-1).
// The tokens go in ``order`` (a permutation of 0..n-1), the order of their targets in the tree's left-to-right
// leaf order, four at a time: the leaves between two leaves lie below both's lowest common ancestor, so the four
// tokens of a block share the top of their paths down to that of the first and last (with a Zipf law's targets,
// two thirds of all (token, node) pairs at N = 2048); those nodes' dots are taken four tokens by four nodes, the
// rest of each path four nodes at a time against the token's row. Shared rows then come from the nearest cache.
template <typename TH, typename TW>
static void path_forward(const TH* h, const TW* u, int64_t d, int64_t n, const int64_t* target, const int64_t* order,
                         const int64_t* leaf_start, const int64_t* leaf_node, const int8_t* leaf_sign,
                         int64_t depth_max, float* scores, float* signs, int threads) {
    constexpr int64_t B = 4;
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
    for (int64_t block = 0; block < (n + B - 1) / B; ++block) {
        const Block b(block, n, target, order, leaf_start, leaf_node);
        const int64_t count = b.count, *token = b.token, *len = b.len;
        const int64_t* const* node = b.node;
        int64_t shared = count == B ? common_top(node[0], len[0], node[B - 1], len[B - 1]) : 0, q = 0;
        if (shared >= 4) {
            const TH* rows[B];
            for (int64_t j = 0; j < B; ++j) rows[j] = h + token[j] * d;
            float out[16];
            for (; q + 4 <= shared; q += 4) {  // the shared nodes q..q+3 from the top
                const TW* cols[4];
                for (int r = 0; r < 4; ++r) cols[r] = u + node[0][len[0] - 1 - q - r] * d;
                dot4x4(rows, cols, d, out);
                for (int64_t j = 0; j < B; ++j)
                    for (int r = 0; r < 4; ++r) scores[token[j] * depth_max + len[j] - 1 - q - r] = out[4 * j + r];
            }
        }
        for (int64_t j = 0; j < count; ++j) {  // each path's remaining steps 0 .. len - 1 - q
            const TH* hi = h + token[j] * d;
            const int64_t* nd = node[j];
            float* s = scores + token[j] * depth_max;
            int64_t rest = len[j] - q, k = 0;
            for (; k + 4 <= rest; k += 4)
                dot1x4(hi, u + nd[k] * d, u + nd[k + 1] * d, u + nd[k + 2] * d, u + nd[k + 3] * d, d, s + k);
            for (; k < rest; ++k) s[k] = dot1(hi, u + nd[k] * d, d);
            const int8_t* sign = leaf_sign + (nd - leaf_node);
            float* g = signs + token[j] * depth_max;
            for (k = 0; k < len[j]; ++k) {
                g[k] = sign[k];
                s[k] *= g[k];
            }
            for (; k < depth_max; ++k) {
                s[k] = INFINITY;
                g[k] = 0.f;
            }
        }
    }
}

// Huffman tree, gradient of sum_i gout_i out_i for the hidden states: gh_i = sum_k gout_i coef_ik u_{node_k}, each
// row written once (in h's dtype); the tokens in ``order`` four at a time, as path_forward: the nodes the four
// share go four nodes by four tokens into four float32 rows, the rest of each path four nodes at a time.
template <typename TH, typename TW>
static void path_backward_hidden(const TW* u, int64_t d, int64_t n, const int64_t* target, const int64_t* order,
                                 const int64_t* leaf_start, const int64_t* leaf_node, int64_t depth_max,
                                 const float* coef, const float* gout, TH* gh, int threads) {
    constexpr int64_t B = 4;
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> acc((size_t)(B * d));
#pragma omp for schedule(dynamic, 4)
        for (int64_t block = 0; block < (n + B - 1) / B; ++block) {
            const Block b(block, n, target, order, leaf_start, leaf_node);
            const int64_t count = b.count, *token = b.token, *len = b.len;
            const int64_t* const* node = b.node;
            std::fill(acc.begin(), acc.end(), 0.f);
            int64_t q = 0;
            if (count == B) {  // the shared top of the four paths: four nodes by four tokens
                int64_t shared = common_top(node[0], len[0], node[B - 1], len[B - 1]);
                float* y[B];
                for (int64_t j = 0; j < B; ++j) y[j] = acc.data() + j * d;
                for (; q + 4 <= shared; q += 4) {
                    const TW* x[4];
                    float c[4][4];
                    for (int r = 0; r < 4; ++r) {
                        x[r] = u + node[0][len[0] - 1 - q - r] * d;
                        for (int64_t j = 0; j < B; ++j)
                            c[j][r] = gout[token[j]] * coef[token[j] * depth_max + len[j] - 1 - q - r];
                    }
                    axpy4x4(c, x, y, d);
                }
            }
            for (int64_t j = 0; j < count; ++j) {  // each path's remaining steps 0 .. len - 1 - q
                int64_t i = token[j], rest = len[j] - q, k = 0;
                const int64_t* nd = node[j];
                const float* c = coef + i * depth_max;
                float* a = acc.data() + j * d;
                for (; k + 4 <= rest; k += 4)
                    axpy4(gout[i] * c[k], u + nd[k] * d, gout[i] * c[k + 1], u + nd[k + 1] * d, gout[i] * c[k + 2],
                          u + nd[k + 2] * d, gout[i] * c[k + 3], u + nd[k + 3] * d, a, d);
                for (; k < rest; ++k) axpy(gout[i] * c[k], u + nd[k] * d, a, d);
                for (int64_t k = 0; k < d; ++k) store(gh, i * d + k, a[k]);
            }
        }
    }
}

// Huffman tree, the nodes the targets' paths reach: row_of [nodes] gets each reached node's rank among the reached
// nodes and -1 elsewhere, touched [nodes] the reached nodes in increasing order. Returns M, how many. Serial: E, the
// summed path lengths, is a few per token.
extern "C" int64_t path_touched(int64_t nodes, int64_t n, const int64_t* target, const int64_t* leaf_start,
                                const int64_t* leaf_node, int64_t* row_of, int64_t* touched) {
    std::fill(row_of, row_of + nodes, -1);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t e = leaf_start[target[i]]; e < leaf_start[target[i] + 1]; ++e) row_of[leaf_node[e]] = 0;
    int64_t m = 0;
    for (int64_t r = 0; r < nodes; ++r)
        if (row_of[r] == 0) {
            row_of[r] = m;
            touched[m++] = r;
        }
    return m;
}

// Huffman tree, gradient for the node vectors: row r = sum over the pairs (token i, node r on its path) of
// gout_i coef_ik h_i, written to gw's row row_of[r] (gw [M, d] in TW, the touched rows only). One sweep over the tokens in ``order``
// (their targets' leaf order): a node's tokens are then consecutive, so each thread keeps one float32
// accumulator per level of the current path (at most depth_max rows, in L2) and writes a node's row once when
// the sweep leaves its subtree. Each hidden row is read once (grouped by node, every pair read its token's row
// again: E rows from L3 or memory). Each thread sweeps its own range of tokens; the nodes whose tokens straddle
// two ranges (the tops of the paths at the cuts, at most depth_max per cut) are summed after the sweep.
template <typename TH, typename TW>
static void path_backward_weight(const TH* h, int64_t d, int64_t n, const int64_t* target,
                                 const int64_t* order, const int64_t* leaf_start, const int64_t* leaf_node,
                                 int64_t depth_max, const float* coef, const float* gout, const int64_t* row_of,
                                 TW* gw, int threads) {
    struct Part { std::vector<int64_t> node; std::vector<float> row; };
    std::vector<Part> parts((size_t)std::max(threads, 1));
#pragma omp parallel num_threads(threads)
    {
        int count = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t c0 = n * me / count, c1 = n * (me + 1) / count;
        Part& mine = parts[me];
        std::vector<float> acc((size_t)(depth_max * d));
        std::vector<int64_t> active((size_t)depth_max);
        std::vector<char> shared((size_t)depth_max, 0);  // the node's tokens continue outside [c0, c1)
        auto path = [&](int64_t step, const int64_t** node, int64_t* len) {
            int64_t t = target[order[step]];
            *node = leaf_node + leaf_start[t];
            *len = leaf_start[t + 1] - leaf_start[t];
        };
        auto flush = [&](int64_t level) {
            const float* a = acc.data() + level * d;
            if (shared[level]) {
                mine.node.push_back(active[level]);
                mine.row.insert(mine.row.end(), a, a + d);
            } else {
                TW* out = gw + row_of[active[level]] * d;
                for (int64_t k = 0; k < d; ++k) store(out, k, a[k]);
            }
        };
        int64_t height = 0, before = 0, after = 0;
        if (c0 < c1) {
            const int64_t *a, *b;
            int64_t la, lb;
            path(c0, &a, &la);
            if (c0 > 0) { path(c0 - 1, &b, &lb); before = common_top(a, la, b, lb); }
            path(c1 - 1, &a, &la);
            if (c1 < n) { path(c1, &b, &lb); after = common_top(a, la, b, lb); }
        }
        for (int64_t first = c0; first < c1; first += 4) {  // four tokens at a time, as path_forward
            int64_t count = std::min<int64_t>(4, c1 - first), top = 0;
            if (count == 4) {  // the levels all four share: their pairs are summed once per block below
                const int64_t *a, *b;
                int64_t la, lb;
                path(first, &a, &la);
                path(first + 3, &b, &lb);
                top = common_top(a, la, b, lb);
            }
            for (int64_t step = first; step < first + count; ++step) {
                const int64_t* node;
                int64_t len;
                path(step, &node, &len);
                int64_t keep = 0;  // levels from the top that the previous token's path shares
                while (keep < height && keep < len && active[keep] == node[len - 1 - keep]) ++keep;
                for (int64_t level = keep; level < height; ++level) flush(level);
                for (int64_t level = keep; level < len; ++level) {
                    active[level] = node[len - 1 - level];
                    shared[level] = step == c0 && level < before;
                    std::fill(acc.data() + level * d, acc.data() + (level + 1) * d, 0.f);
                }
                height = len;
                int64_t i = order[step];
                const TH* hi = h + i * d;
                const float* c = coef + i * depth_max;
                int64_t level = top;
                for (; level + 4 <= len; level += 4) {  // four levels per pass over the token's row
                    float v0 = gout[i] * c[len - 1 - level], v1 = gout[i] * c[len - 2 - level];
                    float v2 = gout[i] * c[len - 3 - level], v3 = gout[i] * c[len - 4 - level];
                    float* a0 = acc.data() + level * d;
                    float* a1 = a0 + d;
                    float* a2 = a1 + d;
                    float* a3 = a2 + d;
#pragma omp simd
                    for (int64_t k = 0; k < d; ++k) {
                        float x = load(hi, k);
                        a0[k] += v0 * x; a1[k] += v1 * x; a2[k] += v2 * x; a3[k] += v3 * x;
                    }
                }
                for (; level < len; ++level) axpy(gout[i] * c[len - 1 - level], hi, acc.data() + level * d, d);
            }
            if (top > 0) {  // the shared levels: four levels by four tokens, then one level at a time
                const TH* x[4];
                int64_t len[4];
                float v[4];
                for (int j = 0; j < 4; ++j) {
                    int64_t i = order[first + j], t = target[i];
                    x[j] = h + i * d;
                    len[j] = leaf_start[t + 1] - leaf_start[t];
                }
                auto value = [&](int j, int64_t level) {
                    int64_t i = order[first + j];
                    return gout[i] * coef[i * depth_max + len[j] - 1 - level];
                };
                int64_t level = 0;
                for (; level + 4 <= top; level += 4) {
                    float c[4][4];
                    float* y[4];
                    for (int r = 0; r < 4; ++r) {
                        y[r] = acc.data() + (level + r) * d;
                        for (int j = 0; j < 4; ++j) c[r][j] = value(j, level + r);
                    }
                    axpy4x4(c, x, y, d);
                }
                for (; level < top; ++level) {
                    for (int j = 0; j < 4; ++j) v[j] = value(j, level);
                    axpy4(v[0], x[0], v[1], x[1], v[2], x[2], v[3], x[3], acc.data() + level * d, d);
                }
            }
        }
        for (int64_t level = 0; level < height; ++level) {
            if (level < after) shared[level] = 1;
            flush(level);
        }
    }
    // the straddling nodes: their parts summed in float32, then written once
    std::vector<std::pair<int64_t, const float*>> pieces;
    for (const Part& part : parts)
        for (size_t j = 0; j < part.node.size(); ++j) pieces.emplace_back(part.node[j], part.row.data() + j * d);
    std::stable_sort(pieces.begin(), pieces.end(),
                     [](const std::pair<int64_t, const float*>& x, const std::pair<int64_t, const float*>& y) {
                         return x.first < y.first; });
    std::vector<float> sum((size_t)d);
    for (size_t j = 0; j < pieces.size();) {
        size_t k = j;
        std::fill(sum.begin(), sum.end(), 0.f);
        for (; k < pieces.size() && pieces[k].first == pieces[j].first; ++k)
            for (int64_t t = 0; t < d; ++t) sum[t] += pieces[k].second[t];
        TW* out = gw + row_of[pieces[j].first] * d;
        for (int64_t t = 0; t < d; ++t) store(out, t, sum[t]);
        j = k;
    }
}

// Huffman tree, the dense node gradient gw [nodes, d] from the touched rows' sums rows [M, d] (row_of: each node's
// rank among the touched, -1 elsewhere): every row written once, in row order, zero where no path reached. In
// chunks of 64 rows taken in turn, so that the threads first-touch the same huge page together: with a half of the
// matrix each (schedule static), the two threads' concurrent huge-page faults cost 0.5 s a call in the asv suite
// (V=50257, d=512: the kernel compacting memory for both at once), where this order costs 25 ms
extern "C" void expand_rows(const void* rows, int64_t d, int64_t nodes, const int64_t* row_of, int64_t item,
                            void* gw, int threads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t r = 0; r < nodes; ++r) {
        char* out = (char*)gw + r * d * item;
        if (row_of[r] < 0) std::memset(out, 0, d * item);
        else std::memcpy(out, (const char*)rows + row_of[r] * d * item, d * item);
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
extern "C" void path_backward_weight_##A##_##B(const void* h, int64_t d, int64_t n, \
        const int64_t* target, const int64_t* order, const int64_t* ls, const int64_t* ln, int64_t depth_max, \
        const float* coef, const float* gout, const int64_t* row_of, void* gw, int threads) { \
    path_backward_weight((const TA*)h, d, n, target, order, ls, ln, depth_max, coef, gout, row_of, (TB*)gw, \
                         threads); } \
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
    "path_backward_weight": [_P, _I, _I, _P, _P, _P, _P, _I, _P, _P, _P, _P, INT],
    "tree_walk": [_P, _I, _I, _P, _P, _P, _P, _P, _P, _P, INT],
}
PLAIN = {"path_touched": ([_I, _I, _P, _P, _P, _P, _P], INT64), "expand_rows": ([_P, _I, _I, _P, _I, _P, INT], None)}


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
    empty tensor where not wanted. 2 E d FLOPs per gradient wanted; the weight gradient first marks the reached
    nodes (one serial pass over the E pairs and the V-1 nodes), then reads each hidden row once into the M touched
    rows; a dense gradient copies those into place as it writes the V-1 rows in order (M d elements read again)."""
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
    row_of = torch.empty(nodes, dtype=torch.int64)
    touched = torch.empty(nodes, dtype=torch.int64)
    m = _library().path_touched(nodes, n, _ptr(target), _ptr(leaf_start), _ptr(leaf_node), _ptr(row_of),
                                _ptr(touched))
    rows = torch.empty(m, d, dtype=weight.dtype)
    _function("path_backward_weight", hidden, weight)(
        _ptr(hidden), d, n, _ptr(target), _ptr(order), _ptr(leaf_start), _ptr(leaf_node), depth_max, _ptr(coef),
        _ptr(grad_out), _ptr(row_of), _ptr(rows), torch.get_num_threads())
    if sparse:
        return [grad_hidden, rows, touched[:m].clone()]
    # the dense [V-1, d] gradient is most of a dense training step's traffic: first touched on huge pages, every
    # row once in row order
    grad_weight = fresh_empty(weight.shape, dtype=weight.dtype, device="cpu")
    _library().expand_rows(_ptr(rows), d, nodes, _ptr(row_of), rows.element_size(), _ptr(grad_weight),
                           torch.get_num_threads())
    return [grad_hidden, grad_weight, torch.empty(0, dtype=torch.int64)]


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
