"""Two-level class-based softmax (Mikolov et al. 2011): p(w|h) = p(c(w)|h) p(w|c(w),h)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from baselines import class_kernels
from vqbench.heads.fresh import fresh_empty
from vqbench.heads.frequency import balanced_bins, frequency_order


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
        self.register_buffer("row_start", torch.cat([sizes.new_zeros(1), ends]), persistent=False)  # [C + 1]
        self.class_size_list = sizes.tolist()
        probs = counts / counts.sum()
        self.class_probability = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, class_of, probs)

        self.class_weight = nn.Parameter(torch.empty(num_classes, d_model))
        self.word_weight = nn.Parameter(torch.empty(vocab_size, d_model))

    @torch.no_grad()
    def reset_parameters(self):
        """Class vectors, then word vectors, uniform in +-1/sqrt(d) (HierarchicalSoftmax calls this)."""
        bound = 1.0 / math.sqrt(self.class_weight.shape[1])
        self.class_weight.uniform_(-bound, bound)
        self.word_weight.uniform_(-bound, bound)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from vqbench.heads.contract import refuse_other_structure
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
        from vqbench.heads.contract import upcast_scores
        cls = self.class_of[target]
        class_logits = upcast_scores(hidden @ self.class_weight.T)  # float32 under autocast, as the words' CE
        class_lp = torch.log_softmax(class_logits, dim=-1).gather(1, cls[:, None]).squeeze(1)
        # targets grouped by class; each group multiplies only its class's block of word vectors: the C++
        # kernels for CPU float32 and bfloat16, else one product per class from torch ops
        perm = torch.argsort(cls, stable=True)
        order = None if self.ids_in_frequency_order else self.order
        per_class = torch.bincount(cls, minlength=self.num_classes)
        if class_kernels.supports(hidden, self.word_weight):
            zero = per_class.new_zeros(1)
            token_start = torch.cat([zero, torch.cumsum(per_class, 0)])
            score_start = torch.cat([zero, torch.cumsum(per_class * self.class_sizes, 0)])
            within = WithinClassKernel.apply(hidden, self.word_weight, perm, self.position[target[perm]],
                                             token_start, self.row_start, score_start, order)
        else:
            within = WithinClassLogProb.apply(hidden, self.word_weight, perm, self.position[target[perm]],
                                              per_class.tolist(), self.class_size_list, order)
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

    def predict(self, hidden):
        """[N, d] -> [N] the argmax over V of log_probs (its first index among equal values, as an argmax
        over log_probs' rounded values), for ids in frequency order, without writing the normalised
        [V, N] log-probabilities or reducing them with argmax: per class, the shift logsumexp - log p(c)
        (the same expression as log_probs) and the block's amax give the class's best log-probability
        (rounding is monotone, so max_w round(x_w - s) = round(max x - s)); the first class with the
        best value wins, and only its rows, in the columns it won, are compared again to find the first
        token reaching it. Traffic: the [V, N] logits written once and read twice (logsumexp, amax)
        instead of also written normalised and argmax-reduced; FLOPs: 2 N d (C + V)."""
        class_lp = torch.log_softmax(self.class_weight @ hidden.T, dim=0)    # [C, N]
        logits = self.word_weight @ hidden.T                                 # [V, N]
        shift = torch.empty_like(class_lp)
        best = torch.full_like(class_lp, -math.inf)
        for c, (lo, hi) in enumerate(self.class_bounds):
            if hi > lo:
                block = logits[lo:hi]
                shift[c] = torch.logsumexp(block, dim=0) - class_lp[c]
                best[c] = block.amax(dim=0) - shift[c]
        if bool(best.isnan().any()):  # argmax's NaN rule (the first NaN wins) needs every value
            return self.log_probs(hidden).T.argmax(dim=0)
        winner = best.argmax(dim=0)                                          # [N]
        token = torch.empty_like(winner)
        for c in torch.unique(winner).tolist():
            cols = (winner == c).nonzero().squeeze(1)
            lo, hi = self.class_bounds[c]
            values = logits[lo:hi].index_select(1, cols) - shift[c].index_select(0, cols)   # rounded as log_probs
            token[cols] = values.argmax(dim=0) + lo
        return token

    def sample(self, hidden, generator):
        """[N] tokens: a class from p(c|h), then a word from the softmax over that class's rows. The tokens are
        grouped by class with one sort and one count, the call's only wait for the device (not one per class)."""
        from vqbench.heads.contract import sample_rows
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


class WithinClassLogProb(torch.autograd.Function):
    """log p(w | c(w), h) per token: a log-softmax over the rows of the target's class only.

    hidden [N, d], word_weight [V, d], perm [N] (tokens grouped by class, stable), positions [N] (each
    grouped token's row inside its class), per_class (tokens per class, C ints), class_sizes (rows per
    class, C ints), order ([V] rows in class order, or None when ids are already in that order) -> [N].

    Forward, class by class: logits h_c W_c^T [n_c, |c|] and their log-softmax (kept for backward, as
    cross_entropy's autograd keeps it). Backward writes each class's gradient blocks straight into the
    [N, d] and [V, d] gradients (torch.mm(out=)); classes no target reached get zero rows. The weight
    gradient is one fresh [V, d] tensor first touched on huge pages (vqbench.heads.fresh), rather than a
    fresh product per class concatenated afterwards.

    Analytic cost: forward 2 d sum_c n_c |c| FLOPs, reads h (N d) and the reached classes' rows, writes
    N values; backward 4 d sum_c n_c |c| FLOPs, reads the same rows and h again, writes the hidden
    gradient (N d) and the weight gradient (V d: the reached classes' rows, zeros elsewhere, as a dense
    gradient must).
    """

    @staticmethod
    def forward(ctx, hidden, word_weight, perm, positions, per_class, class_sizes, order):
        words = word_weight if order is None else word_weight.index_select(0, order)
        grouped = hidden.index_select(0, perm)                                   # [N, d]
        out = torch.empty(hidden.shape[0], dtype=hidden.dtype, device=hidden.device)
        saved, start, row = [], 0, 0
        for n_c, size in zip(per_class, class_sizes):
            if n_c:
                lsm = torch.log_softmax(grouped[start:start + n_c] @ words[row:row + size].T, dim=1)
                out[start:start + n_c] = lsm.gather(1, positions[start:start + n_c, None]).squeeze(1)
                saved.append(lsm)
            start, row = start + n_c, row + size
        ctx.save_for_backward(grouped, words, perm, positions, *saved)
        ctx.layout = per_class, class_sizes, order, word_weight.shape
        return torch.empty_like(out).index_copy_(0, perm, out)

    @staticmethod
    def backward(ctx, grad_out):
        # in the saved tensors' own dtypes: under a caller's autocast the products would come back in bf16/fp16
        # and could not be written into the gradients, which have the parameters' dtype
        with torch.autocast(device_type=grad_out.device.type, enabled=False):
            return WithinClassLogProb._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        grouped, words, perm, positions, *saved = ctx.saved_tensors
        per_class, class_sizes, order, weight_shape = ctx.layout
        g = grad_out.index_select(0, perm).to(grouped.dtype)                   # [N], grouped
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_grouped = torch.empty_like(grouped) if want_hidden else None
        grad_words = fresh_empty(weight_shape, dtype=words.dtype, device=words.device) if want_weight else None
        lsm_of = iter(saved)
        start = row = 0
        for n_c, size in zip(per_class, class_sizes):
            if n_c:
                # d log p(target) / d logits = onehot - softmax, scaled by each token's incoming gradient
                scores = next(lsm_of).exp().to(grouped.dtype).mul_(-g[start:start + n_c, None])
                scores[torch.arange(n_c, device=g.device), positions[start:start + n_c]] += g[start:start + n_c]
                if want_hidden:
                    torch.mm(scores, words[row:row + size], out=grad_grouped[start:start + n_c])
                if want_weight:
                    torch.mm(scores.T, grouped[start:start + n_c], out=grad_words[row:row + size])
            elif want_weight:
                grad_words[row:row + size].zero_()
            start, row = start + n_c, row + size
        grad_hidden = None
        if grad_grouped is not None:
            grad_hidden = torch.empty_like(grad_grouped).index_copy_(0, perm, grad_grouped)
        if grad_words is not None and order is not None:  # rows back from class order to token ids
            grad_words = torch.empty_like(grad_words).index_copy_(0, order, grad_words)
        return grad_hidden, grad_words, None, None, None, None, None


class WithinClassKernel(torch.autograd.Function):
    """WithinClassLogProb's result and gradients from the C++ kernels (baselines.class_kernels), for CPU
    float32 and bfloat16 tensors: all classes in one call, each class's rows streamed once per four of its
    tokens, float32 accumulation; the P = sum_c n_c |c| scores are kept for backward (P floats, as
    cross_entropy keeps its log-softmax).

    hidden [N, d], word_weight [V, d], perm [N], positions [N], token_start, row_start and score_start [C + 1]
    (each class's grouped tokens, rows in class order, and scores), order ([V] or None, as WithinClassLogProb)
    -> [N] in hidden's dtype.

    Analytic cost: forward 2 d P FLOPs, reads h (N d) and the reached classes' rows (plus their re-reads from
    cache), writes P + N values; backward 4 d P FLOPs, reads the same and the scores, writes the hidden gradient
    (N d) and the whole weight gradient (V d).
    """

    @staticmethod
    def forward(ctx, hidden, word_weight, perm, positions, token_start, row_start, score_start, order):
        words = word_weight if order is None else word_weight.index_select(0, order)
        grouped = hidden.index_select(0, perm)                                   # [N, d]
        scores, lse, own = class_kernels.class_forward(grouped, words, token_start, row_start, score_start,
                                                     positions, int(score_start[-1]))
        ctx.save_for_backward(grouped, words, perm, positions, token_start, row_start, score_start, scores, lse)
        ctx.order = order
        within = (own - lse).to(hidden.dtype)
        return torch.empty_like(within).index_copy_(0, perm, within)

    @staticmethod
    def backward(ctx, grad_out):
        grouped, words, perm, positions, token_start, row_start, score_start, scores, lse = ctx.saved_tensors
        grad_grouped, grad_words = class_kernels.class_backward(
            grouped, words, token_start, row_start, score_start, positions, scores, lse,
            grad_out.index_select(0, perm), *ctx.needs_input_grad[:2])
        grad_hidden = None
        if grad_grouped is not None:
            grad_hidden = torch.empty_like(grad_grouped).index_copy_(0, perm, grad_grouped)
        if grad_words is not None and ctx.order is not None:  # rows back from class order to token ids
            grad_words = torch.empty_like(grad_words).index_copy_(0, ctx.order, grad_words)
        return grad_hidden, grad_words, None, None, None, None, None, None
