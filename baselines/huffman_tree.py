"""Binary hierarchical softmax over a Huffman tree (word2vec, fastText)."""

from __future__ import annotations

import heapq
import math

import torch
import torch.nn.functional as F
from torch import nn


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


class HuffmanTree(nn.Module):
    """p(w|h) = prod over the internal nodes n on w's path of sigmoid(+-h . u_n):
    + when the path turns left at n, - when it turns right.

    Parameters: node_weight [V-1, d] -> (V - 1) * d.

    Loss: gathers the vectors on each target's path (sum of the depths rows, no padding) and
    takes one dot product per (token, node). log_probs: h U^T for all V-1 nodes, then
    log-probabilities pushed down the tree one depth level at a time (no loop over tokens).
    """

    def __init__(self, vocab_size: int, d_model: int, counts: torch.Tensor):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
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
        internal_depth = node_depth[vocab_size:]
        self.num_levels = int(internal_depth.max()) + 1
        for level in range(self.num_levels):
            nodes = (internal_depth == level).nonzero().flatten()            # internal node indices
            self.register_buffer(f"level{level}_node", nodes, persistent=False)
            self.register_buffer(f"level{level}_left", left_child[nodes], persistent=False)
            self.register_buffer(f"level{level}_right", right_child[nodes], persistent=False)

        bound = 1.0 / math.sqrt(d_model)
        self.node_weight = nn.Parameter(torch.empty(vocab_size - 1, d_model).uniform_(-bound, bound))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from vqbench.head import refuse_other_structure
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
        # one entry per (token, node on its path), token by token: E = sum of the targets' depths
        depth = self.depth[target]                                          # [N]
        on_path = self.path_signs[target] != 0                              # [N, D]
        nodes = self.path_nodes[target][on_path]                            # [E]
        signs = self.path_signs[target][on_path].to(hidden.dtype)           # [E]
        token = torch.arange(target.shape[0], device=target.device).repeat_interleave(depth)
        # row gathers (index_select: its backward is an index_add, no padded [N, D, d] tensor)
        scores = torch.einsum("ed,ed->e", hidden.index_select(0, token), self.node_weight.index_select(0, nodes))
        return hidden.new_zeros(target.shape[0]).index_add(0, token, F.logsigmoid(signs * scores))

    def log_probs(self, hidden):
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
        from vqbench.head import uniform
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
