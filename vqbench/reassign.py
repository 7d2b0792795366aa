"""A learned VQ-Logits mapping: tokens periodically re-assigned to the code that maximises their likelihood.

Rule (hard EM with the normaliser held fixed). Under VQ-Logits a token v in code k has
log p(v | h) = h . c_k (+ b_v) - log Z(h). Between two re-assignments we add up, for every training
position whose target is v, the scores h . c_k of all K codes. At a re-assignment each token seen since
the last one moves to the code with the largest summed score, i.e. the code that maximises its own
log-likelihood over those positions if Z(h) did not change. Tokens not seen keep their code. The
codebook (and bias) then keep training under the new map; Z is recomputed exactly, so the loss stays
the exact VQ-Logits loss at every step.
"""

from __future__ import annotations

import torch

from vqbench.vq import VQLogits


class CodeReassigner:
    """Accumulates per-token code scores and re-assigns tokens every ``every`` training steps.

    Memory: a [V, K] float32 sum and a [V] count.
    """

    def __init__(self, head: VQLogits, every: int):
        if not isinstance(head, VQLogits):
            raise TypeError(f"head: re-assignment needs a vq head, got {type(head).__name__}")
        if every < 1:
            raise ValueError(f"every: re-assignment period must be >= 1 step, got {every}")
        self.head, self.every = head, every
        device = head.codebook.device
        dtype = torch.float64 if head.codebook.dtype == torch.float64 else torch.float32
        self.score_sums = torch.zeros(head.vocab_size, head.K, dtype=dtype, device=device)
        self.counts = torch.zeros(head.vocab_size, dtype=torch.int64, device=device)

    @torch.no_grad()
    def observe(self, hidden: torch.Tensor, targets: torch.Tensor) -> None:
        """hidden [..., d], targets [...]: add h . c_k for every code to each target's row."""
        dtype = self.score_sums.dtype
        hidden = hidden.detach().reshape(-1, self.head.d_model).to(dtype)
        targets = targets.reshape(-1)
        scores = hidden @ self.head.codebook.detach().to(dtype).T  # [N, K]
        self.score_sums.index_add_(0, targets, scores)
        self.counts += torch.bincount(targets, minlength=self.head.vocab_size)

    @torch.no_grad()
    def maybe_reassign(self, step: int):
        """After training step ``step``: re-assign if the period is up; returns the number of tokens moved or None."""
        if step % self.every:
            return None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.score_sums)  # every process must get the same map
            torch.distributed.all_reduce(self.counts)
        seen = self.counts > 0
        codes = self.head.mapping.clone()
        codes[seen] = self.score_sums[seen].argmax(dim=1)
        moved = int((codes != self.head.mapping).sum())
        self.head.set_mapping(codes)
        self.score_sums.zero_()
        self.counts.zero_()
        return moved

    def state_dict(self) -> dict:
        return {"score_sums": self.score_sums, "counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        self.score_sums.copy_(state["score_sums"])
        self.counts.copy_(state["counts"])
