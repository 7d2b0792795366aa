"""Two-level class-based softmax (Mikolov et al. 2011): p(w|h) = p(c(w)|h) p(w|c(w),h)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vqbench.frequency import balanced_bins, frequency_order


class ClassTree(nn.Module):
    """Classes by frequency binning; every class a softmax over its own tokens.

    Tokens in decreasing-frequency order are cut into C contiguous classes of about equal
    sqrt-frequency mass (the RNNLM toolkit's default binning), so frequent tokens sit in small
    classes and rare ones share large classes.

    Parameters: class_weight [C, d], word_weight [V, d] -> C * d + V * d.

    The loss touches only each target's class: targets are sorted by class and packed into
    tiles of T = ceil(N / C) rows of one class; one batched matmul multiplies every tile by
    its class's (padded) word vectors. Padding costs at most about 2x the unpadded work.
    """

    def __init__(self, vocab_size: int, d_model: int, counts: torch.Tensor, num_classes: int):
        super().__init__()
        self.vocab_size, self.d_model, self.num_classes = vocab_size, d_model, num_classes
        order = frequency_order(counts)
        class_sorted = balanced_bins(counts[order].sqrt(), num_classes)
        class_of = torch.empty(vocab_size, dtype=torch.int64)
        class_of[order] = class_sorted
        sizes = torch.bincount(class_sorted, minlength=num_classes)
        starts = torch.cumsum(sizes, 0) - sizes
        position = torch.empty(vocab_size, dtype=torch.int64)
        position[order] = torch.arange(vocab_size) - starts[class_sorted]
        width = int(sizes.max())
        slots = torch.arange(width)
        # class_tokens[c, j]: the j-th token of class c; padding slots point at token 0, masked
        members = starts[:, None] + slots
        class_tokens = torch.where(slots < sizes[:, None], order[members.clamp(max=vocab_size - 1)], 0)
        self.register_buffer("order", order, persistent=False)
        ends = torch.cumsum(sizes, 0)
        self.class_bounds = [(int(e - z), int(e)) for e, z in zip(ends, sizes)]  # rows of each class in order
        self.ids_in_frequency_order = bool(torch.equal(order, torch.arange(vocab_size)))
        self.register_buffer("class_of", class_of)
        self.register_buffer("position", position)
        self.register_buffer("class_sizes", sizes)
        self.register_buffer("class_tokens", class_tokens)
        self.max_class_size = width
        probs = counts / counts.sum()
        self.class_probability = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, class_of, probs)

        bound = 1.0 / math.sqrt(d_model)
        self.class_weight = nn.Parameter(torch.empty(num_classes, d_model).uniform_(-bound, bound))
        self.word_weight = nn.Parameter(torch.empty(vocab_size, d_model).uniform_(-bound, bound))

    def num_parameters(self) -> int:
        return (self.num_classes + self.vocab_size) * self.d_model

    def tile_rows(self, num_tokens: int) -> int:
        return max(1, math.ceil(num_tokens / self.num_classes))

    def target_log_prob(self, hidden, target):
        n = hidden.shape[0]
        cls = self.class_of[target]
        class_lp = torch.log_softmax(hidden @ self.class_weight.T, dim=-1).gather(1, cls[:, None]).squeeze(1)

        rows = self.tile_rows(n)
        perm = torch.argsort(cls, stable=True)
        cls_sorted = cls[perm]
        per_class = torch.bincount(cls_sorted, minlength=self.num_classes)
        tiles_per_class = (per_class + rows - 1) // rows
        tile_start = torch.cumsum(tiles_per_class, 0) - tiles_per_class
        group_start = torch.cumsum(per_class, 0) - per_class
        rank = torch.arange(n, device=hidden.device) - group_start[cls_sorted]
        tile = tile_start[cls_sorted] + rank // rows
        slot = rank % rows
        num_tiles = int(tiles_per_class.sum())

        packed = hidden.new_zeros(num_tiles, rows, self.d_model)
        packed = packed.index_put((tile, slot), hidden[perm])
        tile_class = torch.zeros(num_tiles, dtype=torch.int64, device=hidden.device)
        tile_class[tile] = cls_sorted
        words = self.word_weight[self.class_tokens[tile_class]]             # [tiles, S, d]
        logits = torch.bmm(packed, words.transpose(1, 2))[tile, slot]         # [N, S]
        valid = torch.arange(self.max_class_size, device=hidden.device) < self.class_sizes[cls_sorted, None]
        logits = logits.masked_fill(~valid, float("-inf"))
        word_lp = torch.log_softmax(logits, dim=-1).gather(1, self.position[target[perm]][:, None]).squeeze(1)
        within = torch.empty_like(word_lp).index_put((perm,), word_lp)
        return class_lp + within

    def log_probs(self, hidden):
        # token-major layout [V, N]: each class is a set of rows (a contiguous block when ids are
        # in frequency order, as in vqbench's corpora), normalised by one logsumexp over its rows;
        # the result is returned transposed
        class_lp = torch.log_softmax(self.class_weight @ hidden.T, dim=0)    # [C, N]
        logits = self.word_weight @ hidden.T                                 # [V, N]
        out = torch.empty_like(logits)
        for c, (lo, hi) in enumerate(self.class_bounds):
            rows = slice(lo, hi) if self.ids_in_frequency_order else self.order[lo:hi]
            block = logits[rows]
            out[rows] = block - (torch.logsumexp(block, dim=0) - class_lp[c])
        return out.T

    def largest_intermediate(self, num_tokens, op):
        if op != "loss":
            return num_tokens * self.vocab_size
        rows = self.tile_rows(num_tokens)
        tiles = min(num_tokens, self.num_classes + math.ceil(num_tokens / rows))
        return max(num_tokens * self.num_classes, tiles * self.max_class_size * self.d_model)

    def flops(self, num_tokens, op, target):
        d = self.d_model
        head = 2 * num_tokens * d * self.num_classes
        if op != "loss":
            return head + 2 * num_tokens * d * self.vocab_size
        if target is None:
            # the algorithm's expectation, without tile padding
            mean_size = float((self.class_probability * self.class_sizes.double().cpu()).sum())
            return head + 2 * num_tokens * d * mean_size
        rows = self.tile_rows(num_tokens)
        per_class = torch.bincount(self.class_of[target.to(self.class_of.device)], minlength=self.num_classes)
        num_tiles = int(((per_class + rows - 1) // rows).sum())
        return head + 2 * num_tiles * rows * self.max_class_size * d
