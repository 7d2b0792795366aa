"""Two-level class-based softmax (Mikolov et al. 2011): p(w|h) = p(c(w)|h) p(w|c(w),h)."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from vqbench.frequency import balanced_bins, frequency_order


class ClassTree(nn.Module):
    """Classes by frequency binning; every class a softmax over its own tokens.

    Tokens in decreasing-frequency order are cut into C contiguous classes of about equal
    sqrt-frequency mass (the RNNLM toolkit's default binning), so frequent tokens sit in small
    classes and rare ones share large classes.

    Parameters: class_weight [C, d], word_weight [V, d] -> C * d + V * d.

    The loss touches only each target's class: targets are grouped by class and each group
    multiplies its class's word vectors, a contiguous block of rows when ids are in frequency
    order (else one row gather of the weight first), so the work is exactly sum_c n_c |c| d.
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
        self.register_buffer("order", order, persistent=False)
        ends = torch.cumsum(sizes, 0)
        self.class_bounds = [(int(e - z), int(e)) for e, z in zip(ends, sizes)]  # rows of each class in order
        self.ids_in_frequency_order = bool(torch.equal(order, torch.arange(vocab_size)))
        self.register_buffer("class_of", class_of)
        self.register_buffer("position", position)
        self.register_buffer("class_sizes", sizes)
        self.class_size_list = sizes.tolist()
        probs = counts / counts.sum()
        self.class_probability = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, class_of, probs)

        bound = 1.0 / math.sqrt(d_model)
        self.class_weight = nn.Parameter(torch.empty(num_classes, d_model).uniform_(-bound, bound))
        self.word_weight = nn.Parameter(torch.empty(vocab_size, d_model).uniform_(-bound, bound))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from vqbench.head import refuse_other_structure
        refuse_other_structure(self, state_dict, prefix, ("class_of", "position", "class_sizes"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def touched_parameters(self, target) -> int:
        """The class vectors and the word vectors of every class a target falls in."""
        classes = torch.unique(self.class_of[target])
        return (self.num_classes + int(self.class_sizes[classes].sum())) * self.d_model

    def least_sampled_parameters(self) -> int:
        """The class vectors and the word vectors of the smallest class (every draw may land in it)."""
        return (self.num_classes + int(self.class_sizes[self.class_sizes > 0].min())) * self.d_model

    def num_parameters(self) -> int:
        return (self.num_classes + self.vocab_size) * self.d_model

    def target_log_prob(self, hidden, target):
        cls = self.class_of[target]
        class_lp = torch.log_softmax(hidden @ self.class_weight.T, dim=-1).gather(1, cls[:, None]).squeeze(1)
        # targets grouped by class; each group multiplies only its class's block of word vectors
        # (a slice of one split of the weight: its backward is one concatenation, no scatter)
        perm = torch.argsort(cls, stable=True)
        per_class = torch.bincount(cls, minlength=self.num_classes).tolist()
        hidden_groups = hidden[perm].split(per_class)
        position_groups = self.position[target[perm]].split(per_class)
        words = self.word_weight if self.ids_in_frequency_order else self.word_weight.index_select(0, self.order)
        word_blocks = words.split(self.class_size_list)
        nll = [F.cross_entropy(h @ w.T, p, reduction="none")                # [n_c]
               for h, w, p, n in zip(hidden_groups, word_blocks, position_groups, per_class) if n]
        within = torch.empty_like(class_lp).index_put((perm,), -torch.cat(nll))
        return class_lp + within

    def log_probs(self, hidden, out_t=None):
        """[N, d] -> [N, V], built token-major ([V, N], returned transposed); out_t: an optional
        [V, N] destination (no autograd). Each class is a set of rows (a contiguous block when ids
        are in frequency order, as in vqbench's corpora), normalised by one logsumexp over them."""
        class_lp = torch.log_softmax(self.class_weight @ hidden.T, dim=0)    # [C, N]
        logits = torch.mm(self.word_weight, hidden.T, out=out_t)             # [V, N]
        # without autograd the logits are normalised where they lie
        out = torch.empty_like(logits) if logits.requires_grad else logits
        for c, (lo, hi) in enumerate(self.class_bounds):
            rows = slice(lo, hi) if self.ids_in_frequency_order else self.order[lo:hi]
            block = logits[rows]
            shift = torch.logsumexp(block, dim=0) - class_lp[c]
            if out is logits and isinstance(rows, slice):
                block.sub_(shift)
            else:
                out[rows] = block - shift
        return out.T

    def sample(self, hidden, generator):
        """[N] tokens: a class from p(c|h), then a word from the softmax over that class's rows. The tokens are
        grouped by class with one sort and one count, the call's only wait for the device (not one per class)."""
        from vqbench.head import sample_rows
        cls = sample_rows(hidden @ self.class_weight.T, generator)
        token = torch.empty_like(cls)
        order = torch.argsort(cls, stable=True)                            # by class, ascending within one
        counts = torch.bincount(cls, minlength=self.num_classes).tolist()
        ends = itertools.accumulate(counts)
        for c, (n, end) in enumerate(zip(counts, ends)):
            if not n:
                continue
            picked = order[end - n:end]
            lo, hi = self.class_bounds[c]
            rows = torch.arange(lo, hi, device=hidden.device) if self.ids_in_frequency_order else self.order[lo:hi]
            position = sample_rows(hidden[picked] @ self.word_weight[rows].T, generator)
            token[picked] = rows[position]
        return token

    def largest_intermediate(self, num_tokens, op):
        if op != "loss":
            return num_tokens * self.vocab_size
        # the grouped hidden states, or the logits of the class with the most expected work
        per_class = torch.ceil(num_tokens * self.class_probability) * self.class_sizes.double().cpu()
        return int(max(num_tokens * self.num_classes, num_tokens * self.d_model, per_class.max()))

    def flops(self, num_tokens, op, target):
        d = self.d_model
        head = 2 * num_tokens * d * self.num_classes
        if op != "loss":
            return head + 2 * num_tokens * d * self.vocab_size
        if target is None:
            mean_size = float((self.class_probability * self.class_sizes.double().cpu()).sum())
            return head + 2 * num_tokens * d * mean_size
        cls = self.class_of[target.to(self.class_of.device)]
        return head + 2 * d * int(self.class_sizes[cls].sum())
