"""Binary hierarchical softmax over a Huffman tree (word2vec, fastText)."""

from __future__ import annotations

import heapq
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from baselines import huffman_kernels
from vqbench.heads.contract import argmax_over_tokens
from vqbench.heads.fresh import fresh_empty, fresh_zeros


def huffman_parents(counts: torch.Tensor):
    """Huffman tree over V leaves. Returns (parent [2V-1], is_right [2V-1]) int64.

    Leaves are 0..V-1, internal nodes V..2V-2, root 2V-2 (parent -1). Ties break by node id.
    """
    v = counts.numel()
    heap = [(float(c), i) for i, c in enumerate(counts.tolist())]
    heapq.heapify(heap)
    parent = [-1] * (2 * v - 1)
    is_right = [0] * (2 * v - 1)
    for node in range(v, 2 * v - 1):
        c_left, left = heapq.heappop(heap)
        c_right, right = heapq.heappop(heap)
        parent[left], parent[right], is_right[right] = node, node, 1
        heapq.heappush(heap, (c_left + c_right, node))
    return torch.tensor(parent), torch.tensor(is_right)


def leaf_order_rank(path_signs: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """[V] int64: each leaf's place among the leaves read left to right, from path_signs [V, D] (leaf upwards, +1
    left, -1 right, 0 past the path's end) and depth [V]. The paths read from the root are a prefix-free code, so
    sorting them as bit strings (1 = right) gives the left-to-right order; 62 bits at a time, least significant
    group first, each sort stable."""
    vocab, longest = path_signs.shape
    position = torch.arange(longest)
    from_root = (depth[:, None] - 1 - position).clamp(min=0)
    right = ((path_signs.gather(1, from_root) == -1) & (position < depth[:, None])).long()  # [V, D] root first
    order = torch.arange(vocab)
    for start in reversed(range(0, longest, 62)):
        bits = right[:, start:start + 62]
        key = torch.bitwise_left_shift(bits, 61 - torch.arange(bits.shape[1])).sum(1)
        order = order[torch.argsort(key[order], stable=True)]
    rank = torch.empty(vocab, dtype=torch.int64)
    rank[order] = torch.arange(vocab)
    return rank


class HuffmanTree(nn.Module):
    """p(w|h) = prod over the internal nodes n on w's path of sigmoid(+-h . u_n):
    + when the path turns left at n, - when it turns right.

    Parameters: node_weight [V-1, d] -> (V - 1) * d.

    Loss: one dot product per (token, node on its target's path); on the CPU in float32 and
    bfloat16 one fused C++ kernel per direction (PathWalk). ``sparse_grad``: node_weight's gradient
    is a sparse tensor of the touched rows (as nn.Embedding's sparse=True), not a dense [V-1, d] one
    that is zero but for them. log_probs and predict: h U^T for all V-1 nodes, then (CPU, float32 and
    bfloat16, no autograd) one C++ walk from the root down (huffman_kernels.tree_walk), else log-probabilities
    pushed down the tree one depth level at a time in torch ops (no loop over tokens).
    """

    def __init__(self, vocab_size: int, d_model: int, counts: torch.Tensor, sparse_grad: bool = False):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
        self.sparse_grad = sparse_grad
        parent, is_right = huffman_parents(counts)
        root = 2 * vocab_size - 2
        sign = 1 - 2 * is_right  # +1 left, -1 right

        # paths, leaf upwards: internal node index (0-based) and sign; sign 0 marks padding
        nodes, signs = [], []
        current = torch.arange(vocab_size)
        while (current != root).any():
            active = current != root
            up = torch.where(active, parent[current], root)
            nodes.append(torch.where(active, up - vocab_size, 0))
            signs.append(torch.where(active, sign[current], 0))
            current = up
        self.register_buffer("path_nodes", torch.stack(nodes, 1))
        self.register_buffer("path_signs", torch.stack(signs, 1).to(torch.int8))
        depth = (self.path_signs != 0).sum(1)
        self.register_buffer("depth", depth)
        # the same paths as CSR over the leaves, for the C++ kernels: leaf t's steps are
        # leaf_node[leaf_start[t]:leaf_start[t + 1]] with their signs
        on_path = self.path_signs != 0
        self.register_buffer("leaf_start", torch.cat([torch.zeros(1, dtype=torch.int64), depth.cumsum(0)]),
                             persistent=False)
        self.register_buffer("leaf_node", self.path_nodes[on_path].contiguous(), persistent=False)
        self.register_buffer("leaf_sign", self.path_signs[on_path].contiguous(), persistent=False)
        # the kernels visit tokens in their leaves' left-to-right order. Not buffers (nor walk_* below): the
        # floors count a head's buffers as a V-wide op's index data (measuring.ops.buffer_bytes)
        self.leaf_rank = leaf_order_rank(self.path_signs, depth)
        probs = counts / counts.sum()
        self.expected_depth = float((probs * depth.double()).sum())

        # internal nodes by depth from the root, with their two children (node ids), for the
        # level-by-level log_probs
        node_depth = torch.zeros(2 * vocab_size - 1, dtype=torch.int64)
        node_depth[:vocab_size] = depth
        # the k-th ancestor of a leaf at depth D sits at depth D - k - 1
        on_path = self.path_signs != 0
        ancestor_depth = depth[:, None] - torch.arange(on_path.shape[1]) - 1
        node_depth[self.path_nodes[on_path] + vocab_size] = ancestor_depth[on_path]
        children = torch.arange(2 * vocab_size - 2)
        left_child = torch.empty(vocab_size - 1, dtype=torch.int64)
        right_child = torch.empty(vocab_size - 1, dtype=torch.int64)
        left_child[parent[children][is_right[children] == 0] - vocab_size] = children[is_right[children] == 0]
        right_child[parent[children][is_right[children] == 1] - vocab_size] = children[is_right[children] == 1]
        self.register_buffer("left_child", left_child, persistent=False)
        self.register_buffer("right_child", right_child, persistent=False)
        self.walk_order, self.walk_slot, self.walk_rows = huffman_kernels.walk_plan(left_child, right_child, vocab_size)
        internal_depth = node_depth[vocab_size:]
        self.num_levels = int(internal_depth.max()) + 1
        for level in range(self.num_levels):
            nodes = (internal_depth == level).nonzero().flatten()            # internal node indices
            self.register_buffer(f"level{level}_node", nodes, persistent=False)
            self.register_buffer(f"level{level}_left", left_child[nodes], persistent=False)
            self.register_buffer(f"level{level}_right", right_child[nodes], persistent=False)

        self.node_weight = nn.Parameter(torch.empty(vocab_size - 1, d_model))

    @torch.no_grad()
    def reset_parameters(self):
        """Node vectors uniform in +-1/sqrt(d) (HierarchicalSoftmax calls this)."""
        bound = 1.0 / math.sqrt(self.node_weight.shape[1])
        self.node_weight.uniform_(-bound, bound)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from vqbench.heads.contract import refuse_other_structure
        refuse_other_structure(self, state_dict, prefix, ("path_nodes", "path_signs", "depth"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def touched_parameters(self, target) -> int:
        """The vectors of the internal nodes on the targets' paths, each once."""
        on_path = self.path_signs[target] != 0
        return int(torch.unique(self.path_nodes[target][on_path]).numel()) * self.d_model

    def least_sampled_parameters(self) -> int:
        """The vectors on the shortest root-to-leaf path (every draw may follow it)."""
        return int(self.depth.min()) * self.d_model

    def num_parameters(self) -> int:
        return (self.vocab_size - 1) * self.d_model

    def target_log_prob(self, hidden, target):
        if huffman_kernels.supports(hidden, self.node_weight):
            target = target.contiguous()
            order = torch.argsort(self.leaf_rank[target])                   # [N]
            return PathWalk.apply(hidden, self.node_weight, target, order, self.leaf_start, self.leaf_node,
                                  self.leaf_sign, self.depth, self.path_nodes.shape[1], self.sparse_grad)
        # one entry per (token, node on its path), token by token: E = sum of the targets' depths
        depth = self.depth[target]                                          # [N]
        on_path = self.path_signs[target] != 0                              # [N, D]
        nodes = self.path_nodes[target][on_path]                            # [E]
        if hidden.device.type == "cpu":
            return PathLogProb.apply(hidden, self.node_weight, depth, nodes, self.path_signs[target][on_path],
                                     self.sparse_grad)
        signs = self.path_signs[target][on_path].to(hidden.dtype)           # [E]
        token = torch.arange(target.shape[0], device=target.device).repeat_interleave(depth)
        # row gathers (index_select's backward is an index_add; F.embedding's sparse one keeps the touched rows):
        # no padded [N, D, d] tensor
        rows = (F.embedding(nodes, self.node_weight, sparse=True) if self.sparse_grad
                else self.node_weight.index_select(0, nodes))
        scores = torch.einsum("ed,ed->e", hidden.index_select(0, token), rows)
        return hidden.new_zeros(target.shape[0]).index_add(0, token, F.logsigmoid(signs * scores))

    def log_probs(self, hidden, out_t=None):
        """[N, V]: the transposed view of a token-major [V, N] tensor, or of out_t [V, N] when given (written).

        Without autograd on the CPU (float32, bfloat16): the [V-1, N] node scores h U^T, then one C++ walk
        from the root down (huffman_kernels.tree_walk) writes each leaf's log-probability once. Otherwise torch
        ops, one depth level at a time (differentiable)."""
        if self._walks(hidden):
            scores = self.node_weight @ hidden.T                        # [V-1, N]
            if out_t is None:
                out_t = fresh_empty((self.vocab_size, hidden.shape[0]), dtype=hidden.dtype, device="cpu")
            if huffman_kernels.supports(scores, out_t):
                huffman_kernels.tree_walk(scores, self.left_child, self.right_child, self.walk_order,
                                          self.walk_slot, self.walk_rows, out_t)
                return out_t.T
        levels = self._log_probs_by_level(hidden)
        if out_t is None:
            return levels
        out_t.copy_(levels.T)
        return out_t.T

    @torch.no_grad()  # an argmax has no gradient: no graph, and the walk below
    def predict(self, hidden):
        """[N] the most probable token, by the walk without writing the V log-probabilities (CPU, float32 or
        bfloat16; otherwise the argmax of log_probs)."""
        if self._walks(hidden):
            scores = self.node_weight @ hidden.T                        # [V-1, N]
            if huffman_kernels.supports(scores):
                return huffman_kernels.tree_argmax(scores, self.left_child, self.right_child, self.walk_order,
                                                   self.walk_slot, self.walk_rows, hidden.dtype)
        return argmax_over_tokens(self.log_probs(hidden))

    def _walks(self, hidden):
        """True where the C++ walk can build log_probs: CPU float32 or bfloat16, and no gradient wanted."""
        wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or self.node_weight.requires_grad)
        return not wants_grad and huffman_kernels.supports(hidden, self.node_weight)

    def _log_probs_by_level(self, hidden):
        # node-major layout [nodes, N]: each level moves whole rows (contiguous), which is far
        # faster than indexing columns of an [N, nodes] tensor; the result is returned transposed.
        # Both branch log-probabilities come from one logsigmoid over all nodes:
        # log sigmoid(-s) = log sigmoid(s) - s.
        scores = self.node_weight @ hidden.T                            # [V-1, N]
        go_left = F.logsigmoid(scores)
        go_right = go_left - scores if scores.requires_grad else torch.sub(go_left, scores, out=scores)
        out = hidden.new_empty(2 * self.vocab_size - 1, hidden.shape[0])
        out[-1] = 0                                                     # the root
        for level in range(self.num_levels):
            node = getattr(self, f"level{level}_node")
            above = out[node + self.vocab_size]                         # log p(reaching the node)
            out.index_copy_(0, getattr(self, f"level{level}_left"), go_left[node].add_(above))
            out.index_copy_(0, getattr(self, f"level{level}_right"), go_right[node].add_(above))
        return out[:self.vocab_size].T

    def sample(self, hidden, generator):
        """[N] tokens, each by walking down from the root: left with probability sigmoid(h . u_node). Every walk
        takes a step at each of the tree's levels (one that has reached its leaf keeps it), so no step waits for
        the device to say which walks are still going."""
        from vqbench.heads.contract import uniform
        n, v = hidden.shape[0], self.vocab_size
        node = torch.full((n,), v - 2, dtype=torch.int64, device=hidden.device)  # the root's index
        token = torch.full((n,), -1, dtype=torch.int64, device=hidden.device)
        for _ in range(self.num_levels):
            scores = torch.einsum("nd,nd->n", hidden, self.node_weight[node])
            left = uniform(n, hidden, generator) < torch.sigmoid(scores.double())
            child = torch.where(left, self.left_child[node], self.right_child[node])
            walking = token < 0
            token = torch.where(walking & (child < v), child, token)
            node = torch.where(walking & (child >= v), child - v, node)
        return token

    def largest_intermediate(self, num_tokens, op):
        if op != "loss":
            return num_tokens * (2 * self.vocab_size - 1)
        return num_tokens * int(self.depth.max()) * self.d_model

    def flops(self, num_tokens, op, target):
        d = self.d_model
        if op != "loss":
            return 2 * num_tokens * d * (self.vocab_size - 1)
        if target is None:
            return 2 * num_tokens * d * self.expected_depth
        return 2 * d * int(self.depth[target.to(self.depth.device)].sum())


class PathLogProb(torch.autograd.Function):
    """log p(target) = sum over the E (token, node) pairs on the targets' paths of logsigmoid(sign h . u); the
    CPU path from torch ops, taken where the C++ kernels (PathLogProbKernel) cannot run: float64 and float16,
    or no compiler.

    hidden [N, d], weight [V-1, d], depth [N] (>= 1), nodes [E] and signs [E] (int8, +-1), token-major
    (the pairs of token 0, then of token 1, ...) -> [N].

    Torch ops (float64 or float32 arithmetic; bfloat16 and float16 inputs are computed in float32 and
    rounded once, their M distinct path nodes converted once into U_M [M, d]). The scores are one
    sampled dense-dense product over the sparsity pattern of the pairs (CSR, no [E, d] tensor of
    gathered rows), and the backward is two sparse-dense products with the same pattern, token-major
    for the hidden states and node-major (over the M touched nodes) for the node vectors.

    Analytic cost, forward: 2 E d FLOPs; reads h (N d) and the M touched rows (M d) (half precision:
    also writes U_M, M d) and writes the N log-probabilities. Backward: 4 E d FLOPs; reads h and the
    M touched rows, writes the hidden gradient (N d)
    and the M touched rows of the weight gradient (M d), plus the dense zero gradient of all (V-1) d
    elements that autograd's dense parameter gradient requires (the floor's "gradients of the
    parameters it read" counts only the M d). word2vec and fastText do the same 2 E d (forward) and
    4 E d (update) multiply-adds, one (token, node) pair at a time.
    """

    @staticmethod
    def forward(ctx, hidden, weight, depth, nodes, signs, sparse):
        work = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        n = hidden.shape[0]
        unique, compact = torch.unique(nodes, return_inverse=True)          # [M], [E]
        h = hidden.to(work)
        if weight.dtype == work:  # the products read the touched rows where they lie
            u, col = weight, nodes                                          # [V-1, d], [E]
        else:  # the M touched rows, converted once
            u, col = weight.index_select(0, unique).to(work), compact       # [M, d], [E]
        crow = torch.zeros(n + 1, dtype=torch.int64)
        torch.cumsum(depth, 0, out=crow[1:])
        sign = signs.to(work)
        signed = sign * torch.ops.vqbench.csr_sampled_dots(crow, col, h, u)        # [E]
        token = torch.repeat_interleave(torch.arange(n), depth)            # [E]
        out = torch.zeros(n, dtype=work).index_add_(0, token, F.logsigmoid(signed))
        ctx.save_for_backward(h, u, crow, col, compact, token, sign, signed, unique)
        ctx.shapes = hidden.dtype, weight.shape
        ctx.sparse = sparse
        return out.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        h, u, crow, col, compact, token, sign, signed, unique = ctx.saved_tensors
        dtype, weight_shape = ctx.shapes
        n, m = h.shape[0], unique.numel()
        # d logsigmoid(s) / ds = sigmoid(-s); s = sign * score
        g = grad_out.to(h.dtype).index_select(0, token) * sign * torch.sigmoid(-signed)   # [E]
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.ops.vqbench.csr_mm(crow, col, g, u).to(dtype)
        if ctx.needs_input_grad[1]:
            order = torch.argsort(compact, stable=True)                      # node-major pairs
            node_crow = torch.zeros(m + 1, dtype=torch.int64)
            torch.cumsum(torch.bincount(compact, minlength=m), 0, out=node_crow[1:])
            touched = torch.ops.vqbench.csr_mm(node_crow, token.index_select(0, order), g.index_select(0, order), h)
            if ctx.sparse:
                grad_weight = _sparse_rows(unique, touched.to(dtype), weight_shape)
            else:
                # the dense zero gradient is most of a training step's memory traffic: first touched on huge pages
                grad_weight = fresh_zeros(weight_shape, dtype=dtype, device="cpu").index_copy_(0, unique,
                                                                                               touched.to(dtype))
        return grad_hidden, grad_weight, None, None, None, None


class PathWalk(torch.autograd.Function):
    """PathLogProb from the fused C++ kernels (baselines.huffman_kernels), for CPU float32 and bfloat16 tensors:
    hidden [N, d], weight [V-1, d], target [N], order [N] (the tokens sorted by their targets' places in the leaf
    order), the leaves' paths as CSR (leaf_start [V + 1], leaf_node, leaf_sign), depth [V], depth_max (the longest
    path), sparse -> [N]. Each token's path is read from the leaves' paths (no per-call gathers); dots,
    log-sigmoids and the path sum happen in one pass, with float32 accumulation.

    Analytic cost, forward: 2 E d FLOPs; reads h (N d) and the M touched rows (M d, from cache after the first
    reach), writes N log-probabilities and the N x D step coefficients. Backward: 4 E d FLOPs and a pass marking
    the reached nodes; reads h and the touched rows, writes the hidden gradient (N d) and the M touched rows'
    sums (M d); the dense weight gradient then reads those again and writes (V-1) d, each row once in row order
    (zero where no path reached), where ``sparse`` returns the M rows as they are.
    """

    @staticmethod
    def forward(ctx, hidden, weight, target, order, leaf_start, leaf_node, leaf_sign, depth, depth_max, sparse):
        pairs = int(depth[target].sum())
        out, coef = huffman_kernels.path_forward(hidden, weight, target, order, leaf_start, leaf_node, leaf_sign,
                                                 depth_max, pairs)
        ctx.save_for_backward(hidden, weight, target, order, leaf_start, leaf_node, coef)
        ctx.pairs, ctx.sparse = pairs, sparse
        return out.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, target, order, leaf_start, leaf_node, coef = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden, grad_weight, touched = huffman_kernels.path_backward(
            hidden, weight, target, order, leaf_start, leaf_node, coef, grad_out, ctx.pairs, want_hidden, want_weight,
            ctx.sparse)
        if want_weight and ctx.sparse:
            grad_weight = _sparse_rows(touched, grad_weight, weight.shape)
        return (grad_hidden if want_hidden else None, grad_weight if want_weight else None,
                None, None, None, None, None, None, None, None)


def _sparse_rows(rows, values, shape):
    """The sparse COO gradient [V-1, d] holding ``values`` [M, d] at the distinct, increasing ``rows`` [M]."""
    return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=True, check_invariants=False)


# The sparse products as two custom ops with their FLOPs registered: torch's FLOP counter would
# count a sparse CSR x dense product as the dense one, and does not count the sampled product at all.
@torch.library.custom_op("vqbench::csr_sampled_dots", mutates_args=())
def csr_sampled_dots(crow: torch.Tensor, col: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[E]: left[i] . right[col[e]] for each pair e = (i, col[e]) of the CSR pattern crow [n + 1], col [E];
    left [n, d], right [m, d]. 2 E d FLOPs; reads left and right once (no gathered rows written)."""
    pattern = _csr(crow, col, left.new_zeros(col.numel()), (left.shape[0], right.shape[0]))
    return torch.sparse.sampled_addmm(pattern, left, right.T, beta=0).values().clone()


@torch.library.custom_op("vqbench::csr_mm", mutates_args=())
def csr_mm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """[n, d] = S @ dense for the CSR matrix S [n, m] (crow [n + 1], col [E], values [E]); dense [m, d].
    2 E d FLOPs; reads dense's rows named by col, writes n d."""
    return _csr(crow, col, values, (crow.numel() - 1, dense.shape[0])) @ dense


@register_flop_formula([torch.ops.vqbench.csr_sampled_dots, torch.ops.vqbench.csr_mm])
def _csr_flops(crow_shape, col_shape, third_shape, fourth_shape, *args, **kwargs) -> int:
    return 2 * col_shape[0] * fourth_shape[1]


def _csr(crow, col, values, size):
    """A sparse CSR tensor (its invariants hold by construction: no check, no beta-state warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
