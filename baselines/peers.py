"""Peers: fused exact linear + cross-entropy losses from other projects, behind the same interface.

    peer:impl=torch-lce             torch's F.linear_cross_entropy, its reference path
    peer:impl=torch-lce,chunked=1   the same with options=LinearCrossEntropyOptions() (chunked)
    peer:impl=compile               torch.compile of F.linear + F.cross_entropy
    peer:impl=cce                   Cut Cross-Entropy (package cut-cross-entropy; torch_compile on CPU)
    peer:impl=liger                 Liger's fused linear cross-entropy (package liger-kernel; CUDA only)
    peer:impl=compile,pad=64        the compiled loss over a weight padded to a multiple of 64 rows (exact)

Each is a full softmax (one weight [V, d], initialised as vqbench's softmax) whose loss, and so whose
training step, runs through the peer's function; log_probs, logits, predict and sample raise
NotImplementedError (a sweep records them as not applicable). A peer whose package or device is
missing raises NotImplementedError naming what it needs. The optional extra installs the packages:
pip install -e ".[peers]".
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

from vqbench.head import OutputHead, check_choice
from vqbench.padding import logit_mask, padded_rows, padded_width
from vqbench.registry import register_head

IMPLS = ("torch-lce", "compile", "cce", "liger")
PACKAGES = {"cce": "cut_cross_entropy", "liger": "liger_kernel"}


@register_head("peer")
class PeerLoss(OutputHead):
    """A peer's fused linear cross-entropy over a full softmax weight W [V, d] (no bias).

    Shapes: hidden [N, d], target [N] -> loss (scalar); weight W [V, d].

    Parameters (closed form): V * d, as `softmax` (P * d with ``pad``).

    Options:
        impl: "torch-lce" (default), "compile", "cce" or "liger".
        chunked: torch-lce through its chunked path (LinearCrossEntropyOptions()).
        pad: compile only, as softmax's ``pad``: W [P, d], P = V rounded up to a multiple of pad, the extra
            logits -inf through the product's bias (the other peers take no bias to mask them with).
    """

    OPTION_TYPES = {"impl": str, "chunked": bool, "pad": int}

    def __init__(self, vocab_size, d_model, *, impl="torch-lce", chunked=False, pad=None, token_counts=None):
        super().__init__(vocab_size, d_model, token_counts)
        self.impl = check_choice("impl", impl, IMPLS)
        if chunked and impl != "torch-lce":
            raise ValueError("chunked: only torch-lce has a chunked option")
        self.chunked = bool(chunked)
        if pad is not None and impl != "compile":
            raise ValueError("pad: only impl=compile masks padded logits (through a bias the other peers lack)")
        self.pad, width = pad, padded_width(self.vocab_size, pad)
        if impl == "torch-lce" and not hasattr(F, "linear_cross_entropy"):
            raise NotImplementedError(f"impl: torch-lce needs F.linear_cross_entropy (torch >= 2.13), "
                                      f"this is torch {torch.__version__}")
        if impl in PACKAGES and importlib.util.find_spec(PACKAGES[impl]) is None:
            raise NotImplementedError(f"impl: {impl} needs the package {PACKAGES[impl].replace('_', '-')} "
                                      f"(pip install -e \".[peers]\")")
        bound = 1.0 / math.sqrt(self.d_model)  # as vqbench's softmax
        self.weight = nn.Parameter(padded_rows(torch.empty(self.vocab_size, self.d_model).uniform_(-bound, bound),
                                               width))
        self.register_buffer("mask", logit_mask(self.vocab_size, width) if width > self.vocab_size else None,
                             persistent=False)
        self._compiled = None

    @property
    def FLOPS_COUNTABLE(self) -> bool:
        """cce compiles with fullgraph=True (its CPU path, and its backward's sort on CUDA), which cannot run
        under torch.utils.flop_counter: a sweep takes the analytic count instead."""
        return self.impl != "cce"

    def _spec_values(self):
        return {"impl": self.impl, "chunked": self.chunked, "pad": self.pad}

    def closed_form_num_parameters(self) -> int:
        return self.weight.shape[0] * self.d_model

    def _loss(self, hidden, target):
        if self.impl == "torch-lce":
            options = torch.nn.LinearCrossEntropyOptions() if self.chunked else None
            return F.linear_cross_entropy(hidden, self.weight, target, options=options)
        if self.impl == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(_plain_loss, dynamic=False)
            return self._compiled(hidden, self.weight, self.mask, target)
        if self.impl == "cce":
            from cut_cross_entropy import linear_cross_entropy
            kind = {} if hidden.device.type == "cuda" else {"impl": "torch_compile"}
            return linear_cross_entropy(hidden, self.weight, target, **kind)
        if hidden.device.type != "cuda":
            raise NotImplementedError("liger's fused linear cross-entropy runs on CUDA only")
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        return liger_fused_linear_cross_entropy(hidden, self.weight, target)

    def _token_nll(self, hidden, target):
        raise NotImplementedError(f"{self.spec}: only the mean loss (reduction='mean', no ignored targets)")

    def _target_log_prob(self, hidden, target):
        raise NotImplementedError(f"{self.spec} implements the loss and the training step only")

    def _log_probs(self, hidden):
        raise NotImplementedError(f"{self.spec} implements the loss and the training step only")

    _predict = _log_probs

    def _sample(self, hidden, generator, temperature):
        raise NotImplementedError(f"{self.spec} implements the loss and the training step only")

    def _matmul_flops(self, num_tokens, op, target):
        return 2 * num_tokens * self.d_model * self.weight.shape[0]


def _plain_loss(hidden, weight, mask, target):
    return F.cross_entropy(F.linear(hidden, weight, mask), target)
