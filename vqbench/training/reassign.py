"""A learned VQ-Logits mapping: tokens periodically re-assigned to the code that maximises their likelihood.

Rule (one hard-EM step on a first-order bound). Under VQ-Logits a token v in code k has
log p(v | h) = s_k(h) (+ b_v) - log Z(h), s_k = h . c_k, Z = sum over tokens of exp(logit). Moving v
from code j to code k changes the log-likelihood of a window of training positions by
    [S_vk - w_v m_k] - [S_vj - w_v m_j]   to first order in Z (a lower bound, as log is concave),
where S_vk = sum of s_k over the positions whose target is v, m_k = sum over all positions of
exp(s_k) / Z (the probability one more token in code k would take), and w_v = exp(b_v) (1 without
bias). Between two re-assignments both are accumulated over the training batches; at a
re-assignment every token seen since the last one moves to argmax_k (S_vk - w_v m_k), staying put
when no move gains. Tokens not seen keep their code. With a margin m > 0 a token moves only when the
move gains more than m nats per occurrence of it in the window, so that moves the first-order gain
barely favours (noise on a few occurrences) stop and the map settles. The codebook (and bias) keep training under the
new map and the loss stays the exact VQ-Logits loss at every step. (Dropping the m_k term, that is
holding Z fixed, is a trap: every token then flocks to the few codes that score high everywhere.)
"""

from __future__ import annotations

import torch

from vqbench.heads.vq import VQLogits


class CodeReassigner:
    """Accumulates per-token code scores and re-assigns tokens every ``every`` training steps.

    Memory: a [V, K] float32 sum and a [V] count.
    """

    def __init__(self, head: VQLogits, every: int, margin: float = 0.0):
        if not isinstance(head, VQLogits):
            raise TypeError(f"head: re-assignment needs a vq head, got {type(head).__name__}")
        if every < 1:
            raise ValueError(f"every: re-assignment period must be >= 1 step, got {every}")
        if not margin >= 0 or margin == float("inf"):
            raise ValueError(f"margin: must be a finite number of nats >= 0, got {margin!r}")
        self.head, self.every, self.margin = head, every, margin
        self.last_seen = 0  # tokens seen in the window of the latest re-assignment
        device = head.codebook.device
        dtype = torch.float64 if head.codebook.dtype == torch.float64 else torch.float32
        self.score_sums = torch.zeros(head.vocab_size, head.K, dtype=dtype, device=device)
        self.counts = torch.zeros(head.vocab_size, dtype=torch.int64, device=device)
        self.code_mass = torch.zeros(head.K, dtype=dtype, device=device)

    @torch.no_grad()
    def observe(self, hidden: torch.Tensor, targets: torch.Tensor) -> None:
        """hidden [..., d], targets [...]: add h . c_k for every code to each target's row."""
        dtype = self.score_sums.dtype
        hidden = hidden.detach().reshape(-1, self.head.d_model).to(dtype)
        targets = targets.reshape(-1)
        scores = hidden @ self.head.codebook.detach().to(dtype).T  # [N, K]
        log_z = torch.logsumexp(scores + self.head.code_log_mass(dtype).detach(), dim=1)  # [N]
        self.score_sums.index_add_(0, targets, scores)
        self.counts += torch.bincount(targets, minlength=self.head.vocab_size)
        self.code_mass += torch.exp(scores - log_z[:, None]).sum(0)

    @torch.no_grad()
    def maybe_reassign(self, step: int):
        """After training step ``step``: re-assign if the period is up; returns the number of tokens moved or None."""
        if step % self.every:
            return None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.score_sums)  # every process must get the same map
            torch.distributed.all_reduce(self.counts)
            torch.distributed.all_reduce(self.code_mass)
        seen = self.counts > 0
        weight = torch.ones(self.head.vocab_size, dtype=self.code_mass.dtype, device=self.code_mass.device)
        if self.head.bias is not None:
            weight = torch.exp(self.head.bias.detach().to(weight.dtype))
        gain = self.score_sums[seen] - weight[seen, None] * self.code_mass[None, :]
        codes = self.head.mapping.clone()
        current = gain.gather(1, codes[seen][:, None]).squeeze(1)
        best, choice = gain.max(dim=1)
        needed = self.margin * self.counts[seen].to(gain.dtype)  # margin nats per occurrence
        codes[seen] = torch.where(best > current + needed, choice, codes[seen])
        self.last_seen = int(seen.sum())
        moved = int((codes != self.head.mapping).sum())
        self.head.set_mapping(codes)
        self.score_sums.zero_()
        self.counts.zero_()
        self.code_mass.zero_()
        return moved

    def state_dict(self) -> dict:
        return {"score_sums": self.score_sums, "counts": self.counts, "code_mass": self.code_mass}

    def load_state_dict(self, state: dict) -> None:
        self.score_sums.copy_(state["score_sums"])
        self.counts.copy_(state["counts"])
        self.code_mass.copy_(state["code_mass"])
