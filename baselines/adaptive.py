"""Adaptive softmax (Grave et al. 2017) through torch.nn.AdaptiveLogSoftmaxWithLoss."""

from __future__ import annotations

import math

import torch
from torch import nn

from vqbench.heads.frequency import frequency_order
from vqbench.heads.contract import Option, OutputHead, sample_rows
from vqbench.heads.registry import register_head


def default_cutoffs(vocab_size: int, d_model: int, div_value: float) -> tuple:
    """Cutoffs at V/16 and V/4 (33,278 tokens -> 2079, 8319; near Grave et al.'s 2000, 10000),
    fewer when d_model is too narrow to give every tail cluster at least one dimension."""
    cuts = sorted({c for c in (vocab_size // 16, vocab_size // 4) if 0 < c < vocab_size})
    cuts = cuts or [vocab_size // 2]
    while len(cuts) > 1 and d_model // div_value ** len(cuts) < 1:
        cuts.pop(0)
    return tuple(cuts)


@register_head("adaptive")
class AdaptiveSoftmax(OutputHead):
    """Adaptive softmax: a head over the shortlist plus one entry per tail cluster; cluster i
    projects h to d / div_value^(i+1) dimensions before its own softmax.

    Shapes: hidden [N, d] -> log_probs [N, V]. Token ids are frequency ranks; with unsorted
    ``token_counts`` the head maps ids to ranks itself.

    Parameters (closed form), with cutoffs c_1 < ... < c_n, c_{n+1} = V, h_i = d // div^i:
        d * (c_1 + n) + sum_i (d * h_i + h_i * (c_{i+1} - c_i)).
    """

    OPTIONS = (
        Option("cutoffs", tuple, None, "increasing ids in (0, V) that end the shortlist and each cluster",
               default_text="V/16, V/4"),
        Option("div_value", float, 4.0, "the projection shrink factor per cluster"),
    )
    TITLE = "adaptive softmax"
    CITATIONS = ("grave2017efficient",)
    SUMMARY = "Grave et al. 2017, through `torch.nn.AdaptiveLogSoftmaxWithLoss`"
    METHOD = ("Frequent tokens in a head softmax, rare tokens in tail clusters reached through the head, each "
              "cluster with a smaller projection [grave2017efficient]; run through "
              "torch.nn.AdaptiveLogSoftmaxWithLoss.")
    EXAMPLES = ("adaptive", "adaptive:cutoffs=2000/10000,div_value=4")
    SMALL_EXAMPLES = ("adaptive", "adaptive:cutoffs=10/40,div_value=2")
    ORDER = 1
    #: log_probs computes each tail cluster for groups of tokens in scratch tensors of this size
    SCRATCH_ELEMENTS = 1 << 24

    @classmethod
    def check_options(cls, vocab_size, d_model, *, cutoffs=None, div_value=4.0, token_counts=None, **_):
        super().check_options(vocab_size, d_model)
        if isinstance(div_value, bool) or not isinstance(div_value, (int, float)) or not 1 < div_value < math.inf:
            raise ValueError(f"div_value: must be a finite number > 1, got {div_value!r}")
        if cutoffs is None:
            cutoffs = default_cutoffs(vocab_size, d_model, div_value)
        if isinstance(cutoffs, (str, bytes)) or not hasattr(cutoffs, "__iter__"):
            raise TypeError(f"cutoffs: expected a non-empty sequence of ints, got {cutoffs!r}")
        cutoffs = tuple(cutoffs)
        if not cutoffs or any(isinstance(c, bool) or not isinstance(c, int) for c in cutoffs):
            raise TypeError(f"cutoffs: expected a non-empty sequence of ints, got {cutoffs!r}")
        if list(cutoffs) != sorted(set(cutoffs)) or cutoffs[0] <= 0 or cutoffs[-1] >= vocab_size:
            raise ValueError(
                f"cutoffs: must be strictly increasing ids in (0, {vocab_size}) "
                f"(vocab_size={vocab_size}), got {list(cutoffs)}")
        if int(d_model // (div_value ** len(cutoffs))) < 1:
            raise ValueError(
                f"div_value: d_model={d_model} / {float(div_value)}^{len(cutoffs)} leaves a tail "
                f"cluster with no dimension; lower div_value or use fewer cutoffs")

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, *, cutoffs=None, div_value=4.0, **_):
        cutoffs = default_cutoffs(vocab_size, d_model, div_value) if cutoffs is None else tuple(cutoffs)
        bounds = [*cutoffs, vocab_size]
        total = d_model * (cutoffs[0] + len(cutoffs))
        for i in range(len(cutoffs)):
            h = int(d_model // (div_value ** (i + 1)))
            total += d_model * h + h * (bounds[i + 1] - bounds[i])
        return total

    def __init__(self, vocab_size, d_model, *, cutoffs=None, div_value=4.0, token_counts=None):
        self.check_options(vocab_size, d_model, cutoffs=cutoffs, div_value=div_value)
        super().__init__(vocab_size, d_model, token_counts)
        cutoffs = self.resolve_options(self.vocab_size, self.d_model, {"cutoffs": cutoffs, "div_value": div_value})
        self.cutoffs = cutoffs = tuple(cutoffs["cutoffs"])
        self.div_value = float(div_value)
        self.hidden_sizes = [int(self.d_model // (self.div_value ** (i + 1))) for i in range(len(self.cutoffs))]
        # built without values, so that reset_parameters draws them (in the order torch's constructor would)
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(
            self.d_model, self.vocab_size, list(cutoffs), div_value=self.div_value, head_bias=False,
            device="meta").to_empty(device="cpu")
        self.reset_parameters()

        order = frequency_order(self.token_counts)
        self.permuted = bool((order != torch.arange(self.vocab_size)).any())
        if self.permuted:
            rank = torch.empty_like(order)
            rank[order] = torch.arange(self.vocab_size)
            self.register_buffer("rank_of_token", rank)
            self.register_buffer("token_of_rank", order)
        ranked_counts = self.token_counts[order]
        bounds = [0, *cutoffs, self.vocab_size]
        mass = torch.stack([ranked_counts[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
        self.cluster_probability = (mass / mass.sum())[1:].tolist()

    @classmethod
    def resolve_options(cls, vocab_size, d_model, values):
        if values.get("cutoffs") is None:
            div_value = values.get("div_value", 4.0)
            values = {**values, "cutoffs": default_cutoffs(vocab_size, d_model, float(div_value))}
        return values

    def reset_parameters(self):
        self.asm.reset_parameters()

    def _spec_values(self):
        return {"cutoffs": self.cutoffs, "div_value": self.div_value}

    def _score_bound(self, h_norm, stats):
        bound = h_norm * stats["asm.head.weight"][0]
        for i in range(len(self.asm.tail)):  # a projection (Frobenius norm), then the cluster's rows
            projected = h_norm * stats[f"asm.tail.{i}.0.weight"][1]
            bound = max(bound, projected * stats[f"asm.tail.{i}.1.weight"][0])
        return bound

    def closed_form_num_parameters(self) -> int:
        d, bounds = self.d_model, [*self.cutoffs, self.vocab_size]
        total = d * (self.cutoffs[0] + len(self.cutoffs))
        for i, h in enumerate(self.hidden_sizes):
            total += d * h + h * (bounds[i + 1] - bounds[i])
        return total

    def touched_parameters(self, target) -> int:
        """The head's weights and, for each tail cluster a target falls in, its projection and its rows (the
        cluster's softmax reads all of them)."""
        ranks = self._ranks(target.to(self.asm.head.weight.device))
        bounds = [*self.cutoffs, self.vocab_size]
        total = self.d_model * (self.cutoffs[0] + len(self.cutoffs))
        for i, h in enumerate(self.hidden_sizes):
            if bool(((ranks >= bounds[i]) & (ranks < bounds[i + 1])).any()):
                total += self.d_model * h + h * (bounds[i + 1] - bounds[i])
        return total

    def least_sampled_parameters(self) -> int:
        """The head's weights: every draw may be a shortlist token, reading no cluster."""
        return self.d_model * (self.cutoffs[0] + len(self.cutoffs))

    def least_predicted_parameters(self) -> int:
        """The head's weights: torch's predict stops after the head when every row's best entry is a
        shortlist token, reading no cluster."""
        return self.least_sampled_parameters()

    def _ranks(self, target):
        return self.rank_of_token[target] if self.permuted else target

    def _target_log_prob(self, hidden, target):
        return self._asm(hidden, target).output

    def _loss(self, hidden, target):
        return self._asm(hidden, target).loss

    def _asm(self, hidden, target):
        # torch's module writes lower-precision cluster scores into an output of hidden's dtype, which
        # autocast makes fail (index_copy_ of bfloat16 into float32): it runs in the parameters' dtype
        with torch.autocast(hidden.device.type, enabled=False):
            return self.asm(hidden, self._ranks(target))

    def _log_probs(self, hidden):
        if torch.is_grad_enabled() and (hidden.requires_grad or self.asm.head.weight.requires_grad):
            return self._log_probs_differentiable(hidden)
        out = hidden.new_empty(hidden.shape[0], self.vocab_size)
        self._log_probs_into(hidden, out)
        return out

    def _log_probs_differentiable(self, hidden):
        """AdaptiveLogSoftmaxWithLoss.log_prob's arithmetic, with token ids in place of ranks."""
        asm, c1 = self.asm, self.cutoffs[0]
        head = torch.log_softmax(hidden @ asm.head.weight.T, dim=-1)         # [N, c_1 + n]
        blocks = [head[:, :c1]] + [torch.log_softmax(tail(hidden), dim=-1) + head[:, c1 + i, None]
                                   for i, tail in enumerate(asm.tail)]
        by_rank = torch.cat(blocks, dim=1)
        return by_rank.index_select(1, self.rank_of_token) if self.permuted else by_rank

    @torch.no_grad()
    def _log_probs_into(self, hidden, out):
        # each cluster's block is computed for a group of tokens in a scratch tensor of at most
        # SCRATCH_ELEMENTS, normalised there while it is still in cache (log_softmax along its rows,
        # the fast direction) and written to the output once
        if self.permuted:
            by_rank = hidden.new_empty(hidden.shape[0], self.vocab_size)
            self._write_by_rank(hidden, by_rank)
            torch.index_select(by_rank, 1, self.rank_of_token, out=out)
        else:
            self._write_by_rank(hidden, out)

    def _write_by_rank(self, hidden, out):
        asm, c1, bounds = self.asm, self.cutoffs[0], [*self.cutoffs, self.vocab_size]
        head = torch.log_softmax(hidden @ asm.head.weight.T, dim=-1)         # [N, c_1 + n]
        out[:, :c1] = head[:, :c1]
        n = hidden.shape[0]
        for i, tail in enumerate(asm.tail):
            projected = hidden @ tail[0].weight.T                            # [N, h_i]
            size = bounds[i + 1] - bounds[i]
            group = max(1, min(n, self.SCRATCH_ELEMENTS // size))
            scratch = hidden.new_empty(group, size)
            for lo in range(0, n, group):
                hi = min(n, lo + group)
                block = scratch[:hi - lo]
                torch.mm(projected[lo:hi], tail[1].weight.T, out=block)
                torch.log_softmax(block, dim=-1, out=block)  # row by row: each row is read before it is written
                torch.add(block, head[lo:hi, c1 + i, None], out=out[lo:hi, bounds[i]:bounds[i + 1]])

    def _sample(self, hidden, generator, temperature):
        if temperature != 1.0:  # p^(1/T) does not factor into head and cluster
            return super()._sample(hidden, generator, temperature)
        c1, bounds = self.cutoffs[0], [*self.cutoffs, self.vocab_size]
        first = sample_rows(hidden @ self.asm.head.weight.T, generator)  # a shortlist token or a cluster
        rank = first.clone()
        for i, tail in enumerate(self.asm.tail):
            picked = (first == c1 + i).nonzero().squeeze(1)
            if picked.numel():
                rank[picked] = bounds[i] + sample_rows(tail(hidden[picked]), generator)
        return self.token_of_rank[rank] if self.permuted else rank

    def _predict(self, hidden):
        best = self.asm.predict(hidden)
        return self.token_of_rank[best] if self.permuted else best

    def largest_intermediate(self, num_tokens, op):
        if op != "loss":
            return num_tokens * self.vocab_size
        bounds = [*self.cutoffs, self.vocab_size]
        tails = [math.ceil(num_tokens * p) * (bounds[i + 1] - bounds[i])
                 for i, p in enumerate(self.cluster_probability)]
        return max(num_tokens * (self.cutoffs[0] + len(self.cutoffs)), *tails)

    def _tail_flops_per_token(self, i):
        bounds = [*self.cutoffs, self.vocab_size]
        h = self.hidden_sizes[i]
        return 2 * (self.d_model * h + h * (bounds[i + 1] - bounds[i]))

    def _matmul_flops(self, num_tokens, op, target):
        head = 2 * num_tokens * self.d_model * (self.cutoffs[0] + len(self.cutoffs))
        tails = range(len(self.cutoffs))
        if op in ("log_probs", "predict"):
            # predict: the worst case, every row's best head entry is a cluster
            return head + num_tokens * sum(self._tail_flops_per_token(i) for i in tails)
        if target is None:
            rows = [num_tokens * p for p in self.cluster_probability]
        else:
            ranks = self._ranks(target.to(self.asm.head.weight.device))
            bounds = [*self.cutoffs, self.vocab_size]
            rows = [int(((ranks >= bounds[i]) & (ranks < bounds[i + 1])).sum()) for i in tails]
        return head + sum(rows[i] * self._tail_flops_per_token(i) for i in tails)
