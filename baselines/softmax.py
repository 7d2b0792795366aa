"""Full softmax: one Linear(d, V)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.chunked_cross_entropy import chunked_linear_cross_entropy, chunked_token_terms
from vqbench.heads.contract import LogitsHead, Option, check_int_option, linear_into
from vqbench.heads.padding import logit_mask, masked_bias, padded_width
from vqbench.heads.registry import register_head


@register_head("softmax")
class FullSoftmax(LogitsHead):
    """Full softmax output layer: logits = h W^T (+ b), softmax over V.

    Shapes: hidden [N, d] -> logits [N, V]; weight W [V, d] ([P, d] with ``pad``); bias b [V] with ``bias=1``.

    Parameters (closed form): P * d, plus V with ``bias=1``; P = V without ``pad``.

    ``pad``: compute P = V rounded up to a multiple of ``pad`` logits (64 or 128: GEMM kernels run far below
    their peak at odd widths such as V=50257), the P - V extra ones -inf, exact (see vqbench.heads.padding);
    logits and log_probs return the [N, V] view of the [N, P] result.
    """

    OPTIONS = (
        Option("bias", bool, False, "add a bias b [V] (GPT-2 style LMs have none)"),
        Option("chunk", int, None, "tokens per chunk of an exact loss that never holds the N x V logits "
                                   "(peak about chunk x V); none: the plain path", default_text="none"),
        Option("pad", int, None, "compute V rounded up to a multiple of pad logits (64, 128: GEMMs run far "
                                 "below peak at odd widths), the extra ones -inf; exact", default_text="none"),
    )
    TITLE = "full softmax"
    CITATIONS = ("wijmans2025cut", "hsu2024liger")
    SUMMARY = ("Linear(d, V); `chunk` is an exact loss that never holds the N x V logits (the idea of Cut "
               "Cross-Entropy / Liger's fused linear cross-entropy); `pad` computes V rounded up to a multiple of "
               "pad logits, the extra ones masked (exact)")
    METHOD = ("The baseline: logits h W^T over all V tokens, normalised by a softmax. `softmax:chunk=C` computes "
              "the same loss and gradients over chunks of C tokens without holding the N x V logits, the idea of "
              "Cut Cross-Entropy [wijmans2025cut] and Liger's fused linear cross-entropy [hsu2024liger].")
    EXAMPLES = ("softmax", "softmax:bias=1", "softmax:chunk=256", "softmax:pad=64")
    SMALL_EXAMPLES = ("softmax", "softmax:bias=1", "softmax:chunk=7", "softmax:chunk=7,bias=1", "softmax:pad=16,bias=1",
                      "softmax:chunk=7,pad=16")
    COMPARED = ("softmax", "softmax:chunk=256")
    CAPABILITIES = frozenset({"label_smoothing", "logits"})
    ORDER = 0

    @classmethod
    def check_options(cls, vocab_size, d_model, *, bias=False, chunk=None, pad=None, token_counts=None, **_):
        super().check_options(vocab_size, d_model)
        if chunk is not None:
            check_int_option("chunk", chunk, minimum=1)
        if pad is not None:
            check_int_option("pad", pad, minimum=1)

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, *, bias=False, pad=None, **_):
        return padded_width(vocab_size, pad) * d_model + (vocab_size if bias else 0)

    def __init__(self, vocab_size, d_model, *, bias=False, chunk=None, pad=None, token_counts=None):
        self.check_options(vocab_size, d_model, chunk=chunk, pad=pad)
        super().__init__(vocab_size, d_model, token_counts)
        self.chunk = chunk
        self.pad, width = pad, padded_width(self.vocab_size, pad)
        self.weight = nn.Parameter(torch.empty(width, self.d_model))
        self.bias = nn.Parameter(torch.empty(self.vocab_size)) if bias else None
        # not in the state_dict: a padded head's checkpoint differs from the unpadded one only by zero rows
        self.register_buffer("mask", logit_mask(self.vocab_size, width) if width > self.vocab_size else None,
                             persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The V real rows uniform in +-1/sqrt(d) (nn.Linear's default), the padding rows zero."""
        bound = 1.0 / math.sqrt(self.d_model)
        self.weight[:self.vocab_size].uniform_(-bound, bound)
        self.weight[self.vocab_size:].zero_()
        if self.bias is not None:
            self.bias.zero_()

    def _spec_values(self):
        return {"bias": self.bias is not None, "chunk": self.chunk, "pad": self.pad}

    def _score_bound(self, h_norm, stats):
        return h_norm * stats["weight"][0] + (stats["bias"][0] if self.bias is not None else 0.0)

    def closed_form_num_parameters(self) -> int:
        return self.weight.shape[0] * self.d_model + (self.vocab_size if self.bias is not None else 0)

    def _wide_bias(self):
        return self.bias if self.mask is None else masked_bias(self.mask, self.bias)

    def _wide_logits(self, hidden):
        return F.linear(hidden, self.weight, self._wide_bias())

    def _logits(self, hidden):
        return self._wide_logits(hidden)[:, :self.vocab_size]

    def _logits_into(self, hidden, out):
        # out holds V columns: the real rows' product, unpadded
        linear_into(hidden, self.weight[:self.vocab_size], self.bias, out)

    def _loss(self, hidden, target):
        if self.chunk is not None:
            return chunked_linear_cross_entropy(hidden, self.weight, self._wide_bias(), target, self.chunk)
        return F.cross_entropy(self._wide_logits(hidden), target)

    def _token_nll(self, hidden, target):
        if self.chunk is None:
            return super()._token_nll(hidden, target)
        return chunked_token_terms(hidden, self.weight[:self.vocab_size], self.bias, target, self.chunk)[0]

    def _mean_log_prob(self, hidden):
        if self.chunk is None:
            return super()._mean_log_prob(hidden)
        # the target column is not needed: any id will do; the mean is over the V real rows
        target = torch.zeros(hidden.shape[0], dtype=torch.int64, device=hidden.device)
        return -chunked_token_terms(hidden, self.weight[:self.vocab_size], self.bias, target, self.chunk)[1]

    def largest_intermediate(self, num_tokens, op):
        if op == "loss" and self.chunk is not None:
            return min(self.chunk, num_tokens) * self.weight.shape[0]
        return num_tokens * self.weight.shape[0]

    def _matmul_flops(self, num_tokens, op, target):
        return 2 * num_tokens * self.d_model * self.weight.shape[0]  # the padded width is computed too
