"""Low-rank factorised softmax: Linear(d, r) then Linear(r, V)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.chunked_cross_entropy import chunked_linear_cross_entropy, chunked_token_terms
from vqbench.heads.contract import LogitsHead, Option, check_int_option, linear_into
from vqbench.heads.padding import logit_mask, masked_bias, padded_width
from vqbench.heads.registry import register_head


@register_head("lowrank")
class LowRankSoftmax(LogitsHead):
    """Low-rank output layer: logits = (h P^T) W^T (+ b), softmax over V.

    Shapes: hidden [N, d] -> [N, r] -> logits [N, V]; P [r, d]; W [V, r] ([Q, r] with ``pad``); b [V] with
    ``bias=1``.

    Parameters (closed form): r * d + Q * r, plus V with ``bias=1``; Q = V without ``pad``.

    Options (``chunk``): tokens per chunk of the exact memory-efficient loss, as softmax's ``chunk``: the
    chunked linear cross-entropy (baselines.chunked_cross_entropy) over the projected states x = h P^T
    [N, r], so training never holds the N x V logits; peak extra memory about chunk x V. Traffic per
    training step: per chunk, W [V, r] read twice (logits, gradient of x) and the gradient of W read and
    written once, so about 4 (N / chunk) V r elements, plus h, P and x; no N x V tensor goes to memory when a
    chunk's logits fit in cache. FLOPs as the plain path: 2 N r (d + V) forward, 2 N r (3 d + 3 V) with the
    gradients.

    ``pad``: W's rows rounded up to a multiple of ``pad`` (Q), the extra logits -inf: exact, as softmax's
    ``pad`` (see vqbench.heads.padding).
    """

    OPTIONS = (
        Option("rank", int, None, "r, 1 <= r <= d", default_text="max(1, d // 4)"),
        Option("bias", bool, False, "add a bias on the V logits"),
        Option("chunk", int, None, "tokens per chunk of an exact loss that never holds the N x V logits (as "
                                   "softmax's); none: the plain path"),
        Option("pad", int, None, "W's rows rounded up to a multiple of pad, the extra logits -inf (as softmax's)",
               default_text="none"),
    )
    TITLE = "low-rank factorisation"
    CITATIONS = ("sainath2013lowrank",)
    SUMMARY = ("Linear(d, r) then Linear(r, V); `chunk` and `pad` as softmax's")
    METHOD = ("The V x d output matrix factorised through a rank-r bottleneck, Linear(d, r) then Linear(r, V) "
              "[sainath2013lowrank].")
    EXAMPLES = ("lowrank", "lowrank:rank=128", "lowrank:chunk=256", "lowrank:pad=64")
    SMALL_EXAMPLES = ("lowrank", "lowrank:rank=3,bias=1", "lowrank:rank=3,bias=1,chunk=7", "lowrank:rank=3,pad=16")
    CAPABILITIES = frozenset({"label_smoothing", "logits"})
    ORDER = 3

    @classmethod
    def check_options(cls, vocab_size, d_model, *, rank=None, bias=False, chunk=None, pad=None, token_counts=None,
                      **_):
        super().check_options(vocab_size, d_model)
        if pad is not None:
            check_int_option("pad", pad, minimum=1)
        if chunk is not None:
            check_int_option("chunk", chunk, minimum=1)
        if rank is not None:
            check_int_option("rank", rank, minimum=1, maximum=d_model,
                             why_max=" (d_model; a larger rank adds nothing)")

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, *, rank=None, bias=False, pad=None, **_):
        rank = max(1, d_model // 4) if rank is None else rank
        return rank * d_model + padded_width(vocab_size, pad) * rank + (vocab_size if bias else 0)

    def __init__(self, vocab_size, d_model, *, rank=None, bias=False, chunk=None, pad=None, token_counts=None):
        self.check_options(vocab_size, d_model, rank=rank, chunk=chunk, pad=pad)
        super().__init__(vocab_size, d_model, token_counts)
        self.chunk = chunk
        rank = self.resolve_options(self.vocab_size, self.d_model, {"rank": rank})["rank"]
        self.rank = check_int_option("rank", rank, minimum=1, maximum=self.d_model,
                                     why_max=" (d_model; a larger rank adds nothing)")
        self.pad, width = pad, padded_width(self.vocab_size, pad)
        self.down = nn.Parameter(torch.empty(self.rank, self.d_model))
        self.weight = nn.Parameter(torch.empty(width, self.rank))
        self.bias = nn.Parameter(torch.empty(self.vocab_size)) if bias else None
        self.register_buffer("mask", logit_mask(self.vocab_size, width) if width > self.vocab_size else None,
                             persistent=False)
        self.reset_parameters()

    @classmethod
    def resolve_options(cls, vocab_size, d_model, values):
        if values.get("rank") is None:
            values = {**values, "rank": max(1, d_model // 4)}
        return values

    @torch.no_grad()
    def reset_parameters(self):
        self.down.uniform_(-1 / math.sqrt(self.d_model), 1 / math.sqrt(self.d_model))
        self.weight[:self.vocab_size].uniform_(-1 / math.sqrt(self.rank), 1 / math.sqrt(self.rank))
        self.weight[self.vocab_size:].zero_()  # the padding rows
        if self.bias is not None:
            self.bias.zero_()

    def _spec_values(self):
        return {"rank": self.rank, "bias": self.bias is not None, "chunk": self.chunk, "pad": self.pad}

    def _score_bound(self, h_norm, stats):
        # |h P^T| <= |h| |P|_F, then each logit <= that times a row of W
        low = h_norm * stats["down"][1]
        return low * stats["weight"][0] + (stats["bias"][0] if self.bias is not None else 0.0)

    def closed_form_num_parameters(self) -> int:
        extra = self.vocab_size if self.bias is not None else 0
        return self.rank * self.d_model + self.weight.shape[0] * self.rank + extra

    def _wide_bias(self):
        return self.bias if self.mask is None else masked_bias(self.mask, self.bias)

    def _wide_logits(self, hidden):
        return F.linear(hidden @ self.down.T, self.weight, self._wide_bias())

    def _logits(self, hidden):
        return self._wide_logits(hidden)[:, :self.vocab_size]

    def _logits_into(self, hidden, out):
        # out holds V columns: the real rows' product, unpadded
        linear_into(hidden @ self.down.T, self.weight[:self.vocab_size], self.bias, out)

    def largest_intermediate(self, num_tokens, op):
        return num_tokens * self.weight.shape[0]

    def _loss(self, hidden, target):
        if self.chunk is not None:
            return chunked_linear_cross_entropy(hidden @ self.down.T, self.weight, self._wide_bias(), target,
                                                self.chunk)
        return super()._loss(hidden, target)

    def _token_nll(self, hidden, target):
        if self.chunk is None:
            return super()._token_nll(hidden, target)
        return chunked_token_terms(hidden @ self.down.T, self.weight[:self.vocab_size], self.bias, target,
                                   self.chunk)[0]

    def _mean_log_prob(self, hidden):
        if self.chunk is None:
            return super()._mean_log_prob(hidden)
        # the target column is not needed: any id will do
        target = torch.zeros(hidden.shape[0], dtype=torch.int64, device=hidden.device)
        return -chunked_token_terms(hidden @ self.down.T, self.weight[:self.vocab_size], self.bias, target,
                                    self.chunk)[1]

    def largest_intermediate(self, num_tokens, op):
        if op == "loss" and self.chunk is not None:
            return max(min(self.chunk, num_tokens) * self.vocab_size, num_tokens * self.rank)
        return num_tokens * self.vocab_size

    def _matmul_flops(self, num_tokens, op, target):
        return 2 * num_tokens * self.rank * (self.d_model + self.weight.shape[0])
