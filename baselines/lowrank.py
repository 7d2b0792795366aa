"""Low-rank factorised softmax: Linear(d, r) then Linear(r, V)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqbench.head import LogitsHead, check_int_option, linear_into
from vqbench.padding import logit_mask, masked_bias, padded_rows, padded_width
from vqbench.registry import register_head


@register_head("lowrank")
class LowRankSoftmax(LogitsHead):
    """Low-rank output layer: logits = (h P^T) W^T (+ b), softmax over V.

    Shapes: hidden [N, d] -> [N, r] -> logits [N, V]; P [r, d]; W [V, r] ([Q, r] with ``pad``); b [V] with
    ``bias=1``.

    Parameters (closed form): r * d + Q * r, plus V with ``bias=1``; Q = V without ``pad``.

    Options:
        rank: r, 1 <= r <= d (default max(1, d // 4)).
        bias: add a bias on the V logits (default 0).
        pad: W's rows rounded up to a multiple of ``pad`` (Q), the extra logits -inf: exact, as softmax's
            ``pad`` (see vqbench.padding). Default none.
    """

    OPTION_TYPES = {"rank": int, "bias": bool, "pad": int}

    def __init__(self, vocab_size, d_model, *, rank=None, bias=False, pad=None, token_counts=None):
        super().__init__(vocab_size, d_model, token_counts)
        if rank is None:
            rank = max(1, self.d_model // 4)
        self.rank = check_int_option("rank", rank, minimum=1, maximum=self.d_model,
                                     why_max=" (d_model; a larger rank adds nothing)")
        self.down = nn.Parameter(torch.empty(self.rank, self.d_model).uniform_(
            -1 / math.sqrt(self.d_model), 1 / math.sqrt(self.d_model)))
        self.pad, width = pad, padded_width(self.vocab_size, pad)
        self.weight = nn.Parameter(padded_rows(torch.empty(self.vocab_size, self.rank).uniform_(
            -1 / math.sqrt(self.rank), 1 / math.sqrt(self.rank)), width))
        self.bias = nn.Parameter(torch.zeros(self.vocab_size)) if bias else None
        self.register_buffer("mask", logit_mask(self.vocab_size, width) if width > self.vocab_size else None,
                             persistent=False)

    def _spec_values(self):
        return {"rank": self.rank, "bias": self.bias is not None, "pad": self.pad}

    def closed_form_num_parameters(self) -> int:
        extra = self.vocab_size if self.bias is not None else 0
        return self.rank * self.d_model + self.weight.shape[0] * self.rank + extra

    def _wide_logits(self, hidden):
        bias = self.bias if self.mask is None else masked_bias(self.mask, self.bias)
        return F.linear(hidden @ self.down.T, self.weight, bias)

    def _logits(self, hidden):
        return self._wide_logits(hidden)[:, :self.vocab_size]

    def _logits_into(self, hidden, out):
        # out holds V columns: the real rows' product, unpadded
        linear_into(hidden @ self.down.T, self.weight[:self.vocab_size], self.bias, out)

    def largest_intermediate(self, num_tokens, op):
        return num_tokens * self.weight.shape[0]

    def _matmul_flops(self, num_tokens, op, target):
        return 2 * num_tokens * self.rank * (self.d_model + self.weight.shape[0])
