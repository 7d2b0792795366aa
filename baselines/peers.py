"""Peers: fused exact linear + cross-entropy losses from other projects, behind the same interface.

    peer:impl=torch-lce             torch's F.linear_cross_entropy, its reference path
    peer:impl=torch-lce,chunked=1   the same with options=LinearCrossEntropyOptions() (chunked)
    peer:impl=compile               torch.compile of F.linear + F.cross_entropy
    peer:impl=cce                   Cut Cross-Entropy (package cut-cross-entropy; torch_compile on CPU)
    peer:impl=liger                 Liger's fused linear cross-entropy (package liger-kernel; CUDA only)

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

from vqbench.head import OutputHead, Option, check_choice
from vqbench.registry import register_head

IMPLS = ("torch-lce", "compile", "cce", "liger")
PACKAGES = {"cce": "cut_cross_entropy", "liger": "liger_kernel"}


@register_head("peer")
class PeerLoss(OutputHead):
    """A peer's fused linear cross-entropy over a full softmax weight W [V, d] (no bias).

    Shapes: hidden [N, d], target [N] -> loss (scalar); weight W [V, d].

    Parameters (closed form): V * d, as `softmax`.
    """

    OPTIONS = (
        Option("impl", str, "torch-lce", "whose fused linear cross-entropy runs the loss", choices=IMPLS),
        Option("chunked", bool, False, "torch-lce through its chunked path (LinearCrossEntropyOptions())"),
    )
    TITLE = "peers"
    CITATIONS = ("wijmans2025cut", "hsu2024liger")
    SUMMARY = ("fused exact losses of others over a full softmax weight: torch's `F.linear_cross_entropy` "
               "(reference and chunked), `torch.compile` of linear + cross-entropy, Cut Cross-Entropy, Liger "
               "(CUDA); loss and training step only")
    EXAMPLES = ("peer:impl=torch-lce", "peer:impl=torch-lce,chunked=1", "peer:impl=compile", "peer:impl=cce",
                "peer:impl=liger")
    COMPARED = ()
    CAPABILITIES = frozenset({"loss_only"})
    ORDER = 5

    @classmethod
    def check_options(cls, vocab_size, d_model, *, impl="torch-lce", chunked=False, token_counts=None, **_):
        super().check_options(vocab_size, d_model)
        check_choice("impl", impl, IMPLS)
        if chunked and impl != "torch-lce":
            raise ValueError("chunked: only torch-lce has a chunked option")

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, **_):
        return vocab_size * d_model

    def __init__(self, vocab_size, d_model, *, impl="torch-lce", chunked=False, token_counts=None):
        self.check_options(vocab_size, d_model, impl=impl, chunked=chunked)
        super().__init__(vocab_size, d_model, token_counts)
        self.impl = impl
        self.chunked = bool(chunked)
        if impl == "torch-lce" and not hasattr(F, "linear_cross_entropy"):
            raise NotImplementedError(f"impl: torch-lce needs F.linear_cross_entropy (torch >= 2.13), "
                                      f"this is torch {torch.__version__}")
        if impl in PACKAGES and importlib.util.find_spec(PACKAGES[impl]) is None:
            raise NotImplementedError(f"impl: {impl} needs the package {PACKAGES[impl].replace('_', '-')} "
                                      f"(pip install -e \".[peers]\")")
        self.weight = nn.Parameter(torch.empty(self.vocab_size, self.d_model))
        self._compiled = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.d_model)  # as vqbench's softmax
        self.weight.uniform_(-bound, bound)

    def _spec_values(self):
        return {"impl": self.impl, "chunked": self.chunked}

    def closed_form_num_parameters(self) -> int:
        return self.vocab_size * self.d_model

    def _loss(self, hidden, target):
        if self.impl == "torch-lce":
            options = torch.nn.LinearCrossEntropyOptions() if self.chunked else None
            return F.linear_cross_entropy(hidden, self.weight, target, options=options)
        if self.impl == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(_plain_loss, dynamic=False)
            return self._compiled(hidden, self.weight, target)
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
        return 2 * num_tokens * self.d_model * self.vocab_size


def _plain_loss(hidden, weight, target):
    return F.cross_entropy(F.linear(hidden, weight), target)
