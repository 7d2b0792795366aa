"""Token -> code mappings for VQ-Logits: built by strategy, or given and validated."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from vqbench.heads.frequency import balanced_bins, frequency_order

MAPPINGS = ("random", "contiguous", "frequency", "kmeans")


def validate_mapping(mapping, vocab_size: int, num_codes: int) -> torch.Tensor:
    """Return ``mapping`` as a [V] int64 CPU tensor with values in [0, K), or raise."""
    if not isinstance(mapping, torch.Tensor):
        raise TypeError(f"mapping: expected a strategy name or a torch.Tensor, got {type(mapping).__name__}")
    if mapping.is_floating_point() or mapping.is_complex() or mapping.dtype == torch.bool:
        raise TypeError(f"mapping: expected an integer tensor, got dtype {mapping.dtype}")
    if mapping.dim() != 1 or mapping.numel() != vocab_size:
        raise ValueError(
            f"mapping: expected shape [{vocab_size}] (one code per token), got {list(mapping.shape)}")
    mapping = mapping.detach().to("cpu", torch.int64)
    low, high = int(mapping.min()), int(mapping.max())
    if low < 0 or high >= num_codes:
        raise ValueError(f"mapping: codes must lie in [0, {num_codes}) (K={num_codes}), got [{low}, {high}]")
    return mapping


def build_mapping(strategy: str, vocab_size: int, num_codes: int, counts: torch.Tensor,
                  seed: int = 0, embeddings: Optional[torch.Tensor] = None,
                  kmeans_iters: int = 20) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Build a mapping [V] int64 and, for k-means, the centroids [K, d].

    random: a balanced random assignment (every code gets floor or ceil of V / K tokens);
    contiguous: blocks of consecutive ids, code(i) = i * K // V;
    frequency: tokens in decreasing-frequency order cut into K contiguous blocks of about
        equal total count, so frequent tokens get codes of their own and rare ones share;
    kmeans: Lloyd's k-means over ``embeddings`` [V, d] (for example a trained softmax weight).
    """
    generator = torch.Generator().manual_seed(seed)
    if strategy == "random":
        balanced = torch.arange(vocab_size) % num_codes
        return balanced[torch.randperm(vocab_size, generator=generator)], None
    if strategy == "contiguous":
        return torch.arange(vocab_size) * num_codes // vocab_size, None
    if strategy == "frequency":
        order = frequency_order(counts)
        mapping = torch.empty(vocab_size, dtype=torch.int64)
        mapping[order] = balanced_bins(counts[order], num_codes)
        return mapping, None
    if strategy == "kmeans":
        if embeddings is None:
            raise ValueError("embeddings: mapping='kmeans' needs embeddings of shape [vocab_size, d]")
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 \
                or embeddings.shape[0] != vocab_size:
            shape = list(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings: expected shape [{vocab_size}, d], got {shape}")
        return kmeans(embeddings, num_codes, iters=kmeans_iters, generator=generator)
    raise ValueError(f"mapping: unknown strategy {strategy!r}; expected one of {', '.join(MAPPINGS)} or a tensor")


def kmeans(points: torch.Tensor, num_clusters: int, iters: int = 20,
           generator: Optional[torch.Generator] = None, chunk: int = 8192):
    """Lloyd's k-means. points [V, d] -> (assignment [V] int64, centroids [K, d] float32).

    Starts from K distinct random points; an empty cluster is re-seeded with the point
    farthest from its centroid, so every cluster ends non-empty.
    """
    x = points.detach().to("cpu", torch.float32)
    n = x.shape[0]
    start = torch.randperm(n, generator=generator)[:num_clusters]
    centroids = x[start].clone()
    sq_norms = (x * x).sum(1)
    assign = torch.zeros(n, dtype=torch.int64)
    for _ in range(iters):
        best = torch.empty(n)
        for lo in range(0, n, chunk):  # bounded memory: chunk x K distances at a time
            part = x[lo:lo + chunk]
            dist = sq_norms[lo:lo + chunk, None] - 2 * part @ centroids.T + (centroids * centroids).sum(1)
            best[lo:lo + chunk], assign[lo:lo + chunk] = dist.min(1)
        sizes = torch.bincount(assign, minlength=num_clusters)
        empty = (sizes == 0).nonzero().flatten()
        if len(empty):
            far = torch.topk(best, len(empty)).indices
            assign[far] = empty
            sizes = torch.bincount(assign, minlength=num_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = sums / sizes.clamp(min=1)[:, None].to(x.dtype)
    return assign, centroids
