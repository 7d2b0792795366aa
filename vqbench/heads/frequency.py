"""Token frequencies: defaults, validation, frequency order and balanced binning."""

from __future__ import annotations

import torch


def default_token_counts(vocab_size: int) -> torch.Tensor:
    """Zipf counts for ids sorted by decreasing frequency: count(i) = 1 / (i + 1). [V] float64."""
    return 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)


def validate_token_counts(token_counts, vocab_size: int) -> torch.Tensor:
    """Return token_counts as a [V] float64 CPU tensor, or raise naming the argument."""
    counts = torch.as_tensor(token_counts).detach().to("cpu")
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"token_counts: expected real numbers, got dtype {counts.dtype}")
    counts = counts.to(torch.float64)
    if counts.dim() != 1 or counts.numel() != vocab_size:
        raise ValueError(
            f"token_counts: expected shape [{vocab_size}] (vocab_size), got {list(counts.shape)}")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("token_counts: must be finite and non-negative")
    if counts.sum() <= 0:
        raise ValueError("token_counts: must not be all zero")
    if not torch.isfinite(counts.sum()):
        raise ValueError("token_counts: their sum overflows float64; scale them down (only ratios matter)")
    return counts


def frequency_order(counts: torch.Tensor) -> torch.Tensor:
    """Token ids by decreasing count, ties by increasing id. [V] int64."""
    ids = torch.arange(counts.numel())
    # stable sort on -count keeps ties in id order
    return ids[torch.sort(-counts, stable=True).indices]


def balanced_bins(weights: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Split a sequence into ``num_bins`` contiguous, non-empty bins of about equal weight.

    weights: [n] non-negative, n >= num_bins. Returns [n] int64 bin ids, non-decreasing,
    starting at 0, ending at num_bins - 1, each step 0 or 1 (so no bin is empty).
    A heavy item gets a bin of its own instead of leaving the next bins empty.
    """
    n = weights.numel()
    if num_bins > n:
        raise ValueError(f"num_bins: {num_bins} bins cannot be filled by {n} items")
    weights = weights.to(torch.float64)
    total = weights.sum()
    exclusive = torch.cumsum(weights, 0) - weights
    target = torch.floor(exclusive / total * num_bins).clamp(max=num_bins - 1).long()
    position = torch.arange(n)
    # b[i] = min(target[i], b[i-1] + 1), unrolled: i + cummin(target - i)
    capped = position + torch.cummin(target - position, dim=0).values
    # leave at least one item for every later bin
    return torch.maximum(capped, num_bins - n + position)
