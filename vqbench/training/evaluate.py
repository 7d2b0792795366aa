"""Perplexity of a language model whose output layer is a vqbench head, on token ids or on cached states.

Both use the head's exact, normalised ``target_log_prob`` and sum in float64.
"""

from __future__ import annotations

import math

import torch

from vqbench.training.data import batchify, bptt_batches

EVAL_BATCH = 10  # streams of an evaluation split, as in the standard WikiText-2 setup


@torch.no_grad()
def hidden_states(body, ids: torch.Tensor, bptt: int, batch_size: int = EVAL_BATCH):
    """All hidden states of a split from a body in eval mode: ([T', d], [T'] targets)."""
    was_training = body.training
    body.eval()
    device = next(body.parameters()).device
    hs, ts, state = [], [], None
    for x, y in bptt_batches(batchify(ids, batch_size), bptt):
        h, state = body(x.to(device), state)
        hs.append(h.reshape(-1, h.shape[-1]))
        ts.append(y.reshape(-1).to(device))
    body.train(was_training)
    return torch.cat(hs), torch.cat(ts)


@torch.no_grad()
def state_perplexity(head, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 8192) -> float:
    """exp(mean NLL) of targets [T] given hidden states [T, d], in chunks of ``chunk`` positions."""
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    total = 0.0
    for i in range(0, targets.numel(), chunk):
        part = head.target_log_prob(hidden[i:i + chunk].to(device), targets[i:i + chunk].to(device))
        total -= float(part.double().sum())
    head.train(was_training)
    return math.exp(total / targets.numel())


def perplexity(body, head, ids: torch.Tensor, bptt: int, batch_size: int = EVAL_BATCH) -> float:
    """exp(mean NLL) of a split [T] of token ids, read in ``batch_size`` streams of BPTT windows."""
    return state_perplexity(head, *hidden_states(body, ids, bptt, batch_size))
