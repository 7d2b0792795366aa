"""Padding a head's V-wide matrix to a multiple of ``pad`` rows, exactly.

GEMM kernels run far below their peak at odd output widths (V=50257, GPT-2's vocabulary; nanoGPT pads it to
50304 for this reason). A padded head holds W = ceil(V / pad) * pad rows, the W - V extra ones zero, and adds
-inf to their logits, so the loss, log-probabilities and gradients on the V real tokens are those of the
unpadded head: exp(-inf) adds nothing to a normaliser, and a logit that is -inf gets a zero gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from vqbench.heads.contract import check_int_option


def padded_width(vocab_size: int, pad: Optional[int]) -> int:
    """W: vocab_size rounded up to a multiple of pad (vocab_size itself without pad)."""
    if pad is None:
        return vocab_size
    pad = check_int_option("pad", pad, minimum=1)
    return -(-vocab_size // pad) * pad


def padded_rows(weight: torch.Tensor, width: int) -> torch.Tensor:
    """weight [V, k] -> [W, k] with zero rows appended."""
    return F.pad(weight, (0, 0, 0, width - weight.shape[0]))


def logit_mask(vocab_size: int, width: int) -> torch.Tensor:
    """[W]: 0 for the V real tokens, -inf for the padding."""
    mask = torch.zeros(width)
    mask[vocab_size:] = float("-inf")
    return mask


def masked_bias(mask: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """[W]: the bias [V] (or none) on the real tokens, -inf on the padding; gradients reach the bias."""
    if bias is None:
        return mask
    return mask + F.pad(bias, (0, mask.shape[0] - bias.shape[0]))
