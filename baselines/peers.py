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

from vqbench.heads.contract import OutputHead, Option, check_choice, check_int_option
from vqbench.heads.padding import logit_mask, padded_width
from vqbench.heads.registry import register_head

IMPLS = ("torch-lce", "compile", "cce", "liger")
PACKAGES = {"cce": "cut_cross_entropy", "liger": "liger_kernel"}


@register_head("peer")
class PeerLoss(OutputHead):
    """A peer's fused linear cross-entropy over a full softmax weight W [V, d] (no bias).

    Shapes: hidden [N, d], target [N] -> loss (scalar); weight W [V, d].

    Parameters (closed form): V * d, as `softmax` (P * d with ``pad``).

    ``pad`` (compile only), as softmax's ``pad``: W [P, d], P = V rounded up to a multiple of pad, the extra
    logits -inf through the product's bias (the other peers take no bias to mask them with).
    """

    OPTIONS = (
        Option("impl", str, "torch-lce", "whose fused linear cross-entropy runs the loss", choices=IMPLS),
        Option("chunked", bool, False, "torch-lce through its chunked path (LinearCrossEntropyOptions())"),
        Option("pad", int, None, "impl=compile only: W's rows rounded up to a multiple of pad, the extra logits "
                                 "-inf", default_text="none"),
    )
    TITLE = "peers"
    CITATIONS = ("wijmans2025cut", "hsu2024liger")
    SUMMARY = ("fused exact losses of others over a full softmax weight: torch's `F.linear_cross_entropy` "
               "(reference and chunked), `torch.compile` of linear + cross-entropy, Cut Cross-Entropy, Liger "
               "(CUDA); loss and training step only")
    EXAMPLES = ("peer:impl=torch-lce", "peer:impl=torch-lce,chunked=1", "peer:impl=compile",
                "peer:impl=compile,pad=64", "peer:impl=cce", "peer:impl=liger")
    COMPARED = ()
    CAPABILITIES = frozenset({"loss_only"})
    ORDER = 5

    @classmethod
    def check_options(cls, vocab_size, d_model, *, impl="torch-lce", chunked=False, pad=None, token_counts=None,
                      **_):
        super().check_options(vocab_size, d_model)
        check_choice("impl", impl, IMPLS)
        if pad is not None:
            check_int_option("pad", pad, minimum=1)
            if impl != "compile":
                raise ValueError("pad: only impl=compile masks padded logits (through a bias the other peers lack)")
        if chunked and impl != "torch-lce":
            raise ValueError("chunked: only torch-lce has a chunked option")

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, pad=None, **_):
        return padded_width(vocab_size, pad) * d_model

    def __init__(self, vocab_size, d_model, *, impl="torch-lce", chunked=False, pad=None, token_counts=None):
        self.check_options(vocab_size, d_model, impl=impl, chunked=chunked, pad=pad)
        super().__init__(vocab_size, d_model, token_counts)
        self.impl = impl
        self.chunked = bool(chunked)
        self.pad, width = pad, padded_width(self.vocab_size, pad)
        if impl == "torch-lce" and not hasattr(F, "linear_cross_entropy"):
            raise NotImplementedError(f"impl: torch-lce needs F.linear_cross_entropy (torch >= 2.13), "
                                      f"this is torch {torch.__version__}")
        if impl in PACKAGES and importlib.util.find_spec(PACKAGES[impl]) is None:
            raise NotImplementedError(f"impl: {impl} needs the package {PACKAGES[impl].replace('_', '-')} "
                                      f"(pip install -e \".[peers]\")")
        self.weight = nn.Parameter(torch.empty(width, self.d_model))
        self.register_buffer("mask", logit_mask(self.vocab_size, width) if width > self.vocab_size else None,
                             persistent=False)
        self._compiled = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.d_model)  # as vqbench's softmax
        self.weight[:self.vocab_size].uniform_(-bound, bound)
        self.weight[self.vocab_size:].zero_()  # the padding rows

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
            # its torch_compile path returns a float32 loss for half inputs; every head's loss has hidden's dtype
            return linear_cross_entropy(hidden, self.weight, target, **kind).to(hidden.dtype)
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
