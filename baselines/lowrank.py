"""Low-rank factorised softmax: Linear(d, r) then Linear(r, V)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqbench.head import LogitsHead, Option, check_int_option, linear_into
from vqbench.registry import register_head


@register_head("lowrank")
class LowRankSoftmax(LogitsHead):
    """Low-rank output layer: logits = (h P^T) W^T (+ b), softmax over V.

    Shapes: hidden [N, d] -> [N, r] -> logits [N, V]; P [r, d]; W [V, r]; b [V] with ``bias=1``.

    Parameters (closed form): r * d + V * r, plus V with ``bias=1``.
    """

    OPTIONS = (
        Option("rank", int, None, "r, 1 <= r <= d", default_text="max(1, d // 4)"),
        Option("bias", bool, False, "add a bias on the V logits"),
    )
    TITLE = "low-rank factorisation"
    CITATIONS = ("sainath2013lowrank",)
    SUMMARY = "Linear(d, r) then Linear(r, V)"
    METHOD = ("The V x d output matrix factorised through a rank-r bottleneck, Linear(d, r) then Linear(r, V) "
              "[sainath2013lowrank].")
    EXAMPLES = ("lowrank", "lowrank:rank=128")
    SMALL_EXAMPLES = ("lowrank", "lowrank:rank=3,bias=1")
    CAPABILITIES = frozenset({"label_smoothing", "logits"})
    ORDER = 3

    @classmethod
    def check_options(cls, vocab_size, d_model, *, rank=None, bias=False, token_counts=None, **_):
        super().check_options(vocab_size, d_model)
        if rank is not None:
            check_int_option("rank", rank, minimum=1, maximum=d_model,
                             why_max=" (d_model; a larger rank adds nothing)")

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, *, rank=None, bias=False, **_):
        rank = max(1, d_model // 4) if rank is None else rank
        return rank * d_model + vocab_size * rank + (vocab_size if bias else 0)

    def __init__(self, vocab_size, d_model, *, rank=None, bias=False, token_counts=None):
        self.check_options(vocab_size, d_model, rank=rank)
        super().__init__(vocab_size, d_model, token_counts)
        rank = self.resolve_options(self.vocab_size, self.d_model, {"rank": rank})["rank"]
        self.rank = check_int_option("rank", rank, minimum=1, maximum=self.d_model,
                                     why_max=" (d_model; a larger rank adds nothing)")
        self.down = nn.Parameter(torch.empty(self.rank, self.d_model))
        self.weight = nn.Parameter(torch.empty(self.vocab_size, self.rank))
        self.bias = nn.Parameter(torch.empty(self.vocab_size)) if bias else None
        self.reset_parameters()

    @classmethod
    def resolve_options(cls, vocab_size, d_model, values):
        if values.get("rank") is None:
            values = {**values, "rank": max(1, d_model // 4)}
        return values

    @torch.no_grad()
    def reset_parameters(self):
        self.down.uniform_(-1 / math.sqrt(self.d_model), 1 / math.sqrt(self.d_model))
        self.weight.uniform_(-1 / math.sqrt(self.rank), 1 / math.sqrt(self.rank))
        if self.bias is not None:
            self.bias.zero_()

    def _spec_values(self):
        return {"rank": self.rank, "bias": self.bias is not None}

    def _score_bound(self, h_norm, stats):
        # |h P^T| <= |h| |P|_F, then each logit <= that times a row of W
        low = h_norm * stats["down"][1]
        return low * stats["weight"][0] + (stats["bias"][0] if self.bias is not None else 0.0)

    def closed_form_num_parameters(self) -> int:
        extra = self.vocab_size if self.bias is not None else 0
        return self.rank * self.d_model + self.vocab_size * self.rank + extra

    def _logits(self, hidden):
        return F.linear(hidden @ self.down.T, self.weight, self.bias)

    def _logits_into(self, hidden, out):
        linear_into(hidden @ self.down.T, self.weight, self.bias, out)

    def _matmul_flops(self, num_tokens, op, target):
        return 2 * num_tokens * self.rank * (self.d_model + self.vocab_size)
