"""Full softmax: one Linear(d, V)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.chunked_cross_entropy import chunked_linear_cross_entropy, chunked_token_terms
from vqbench.head import LogitsHead, check_int_option, linear_into
from vqbench.registry import register_head


@register_head("softmax")
class FullSoftmax(LogitsHead):
    """Full softmax output layer: logits = h W^T (+ b), softmax over V.

    Shapes: hidden [N, d] -> logits [N, V]; weight W [V, d]; bias b [V] with ``bias=1``.

    Parameters (closed form): V * d, plus V with ``bias=1``.

    Options:
        bias: add a bias (default 0, as in GPT-2 style LMs).
        chunk: tokens per chunk of the exact memory-efficient loss (see
            baselines.chunked_cross_entropy); peak extra memory about chunk x V instead of N x V.
            Default none: the plain path.
    """

    OPTION_TYPES = {"bias": bool, "chunk": int}

    @classmethod
    def check_options(cls, vocab_size, d_model, *, bias=False, chunk=None, token_counts=None, **_):
        super().check_options(vocab_size, d_model)
        if chunk is not None:
            check_int_option("chunk", chunk, minimum=1)

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, *, bias=False, **_):
        return vocab_size * d_model + (vocab_size if bias else 0)

    def __init__(self, vocab_size, d_model, *, bias=False, chunk=None, token_counts=None):
        self.check_options(vocab_size, d_model, chunk=chunk)
        super().__init__(vocab_size, d_model, token_counts)
        self.chunk = chunk
        bound = 1.0 / math.sqrt(self.d_model)
        self.weight = nn.Parameter(torch.empty(self.vocab_size, self.d_model).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(self.vocab_size)) if bias else None

    def _spec_values(self):
        return {"bias": self.bias is not None, "chunk": self.chunk}

    def _score_bound(self, h_norm, stats):
        return h_norm * stats["weight"][0] + (stats["bias"][0] if self.bias is not None else 0.0)

    def closed_form_num_parameters(self) -> int:
        return self.vocab_size * self.d_model + (self.vocab_size if self.bias is not None else 0)

    def _logits(self, hidden):
        return F.linear(hidden, self.weight, self.bias)

    def _logits_into(self, hidden, out):
        linear_into(hidden, self.weight, self.bias, out)

    def _loss(self, hidden, target):
        if self.chunk is not None:
            return chunked_linear_cross_entropy(hidden, self.weight, self.bias, target, self.chunk)
        return F.cross_entropy(self._logits(hidden), target)

    def _token_nll(self, hidden, target):
        if self.chunk is None:
            return super()._token_nll(hidden, target)
        return chunked_token_terms(hidden, self.weight, self.bias, target, self.chunk)[0]

    def _mean_log_prob(self, hidden):
        if self.chunk is None:
            return super()._mean_log_prob(hidden)
        # the target column is not needed: any id will do
        target = torch.zeros(hidden.shape[0], dtype=torch.int64, device=hidden.device)
        return -chunked_token_terms(hidden, self.weight, self.bias, target, self.chunk)[1]

    def largest_intermediate(self, num_tokens, op):
        if op == "loss" and self.chunk is not None:
            return min(self.chunk, num_tokens) * self.vocab_size
        return num_tokens * self.vocab_size

    def _matmul_flops(self, num_tokens, op, target):
        return 2 * num_tokens * self.d_model * self.vocab_size
