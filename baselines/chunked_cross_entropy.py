"""Exact linear + cross-entropy that never holds the N x V logits.

The idea behind Cut Cross-Entropy and Liger's fused linear cross-entropy: walk over chunks
of C tokens; for each chunk compute its C x V logits, the loss and, when gradients are
needed, the gradients for hidden, weight and bias right away, then drop the logits.
Backward only scales the stored gradients, so training costs the same three matrix
products as the plain path while peak extra memory is about C x V instead of N x V.
"""

from __future__ import annotations

import torch


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean_n CE(hidden[n] @ weight.T + bias, target[n]).

    hidden [N, d], weight [V, d], bias [V] or None, target [N] int64 -> scalar.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk, grads_for):
        n = hidden.shape[0]
        total = hidden.new_zeros((), dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32)
        want_hidden, want_weight, want_bias = grads_for
        want_grad = any(grads_for)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=total.dtype) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=total.dtype) if want_bias else None
        for lo in range(0, n, chunk):
            h = hidden[lo:lo + chunk]
            t = target[lo:lo + chunk]
            logits = h @ weight.T
            if bias is not None:
                logits += bias
            logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if want_grad:
                # d loss_sum / d logits = softmax - onehot, computed in place over the chunk
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(t), device=t.device), t] -= 1
                probs = probs.to(hidden.dtype)
                if grad_hidden is not None:
                    grad_hidden[lo:lo + chunk] = probs @ weight
                if grad_weight is not None:
                    # out= rather than addmm_, so that torch's FLOP counter sees the product
                    torch.addmm(grad_weight, probs.T.to(grad_weight.dtype), h.to(grad_weight.dtype),
                                out=grad_weight)
                if grad_bias is not None:
                    grad_bias += probs.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.n = n
        ctx.used = False
        return (total / n).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError("chunked cross-entropy: backward can run once (its gradients are scaled in place)")
        ctx.used = True
        scale = grad_output / ctx.n
        # in place: a weight-sized copy here would undo the memory the chunking saves
        grads = [None if g is None else g.mul_(scale.to(g.dtype)).to(grad_output.dtype) for g in ctx.saved_tensors]
        return (*grads, None, None, None)


def chunked_linear_cross_entropy(hidden, weight, bias, target, chunk: int):
    """Functional form; computes gradients in the forward only when autograd will need them."""
    enabled = torch.is_grad_enabled()
    grads_for = (enabled and hidden.requires_grad, enabled and weight.requires_grad,
                 enabled and bias is not None and bias.requires_grad)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, target, chunk, grads_for)


def _chunk_terms(hidden, weight, bias, target):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    lse = torch.logsumexp(logits, dim=1)
    nll = lse - logits.gather(1, target[:, None]).squeeze(1)
    return torch.stack([nll, lse - logits.mean(dim=1)]).to(hidden.dtype)


def chunked_token_terms(hidden, weight, bias, target, chunk: int) -> torch.Tensor:
    """[2, N]: per-token NLL and minus the mean log-probability over V, chunk by chunk.

    Each chunk's C x V logits are recomputed in backward (activation checkpointing) instead of kept,
    so any reduction of these terms, per-token ones included, has exact gradients at the memory of
    one chunk's logits.
    """
    from torch.utils.checkpoint import checkpoint

    parts = [checkpoint(_chunk_terms, hidden[lo:lo + chunk], weight, bias, target[lo:lo + chunk],
                        use_reentrant=False) for lo in range(0, hidden.shape[0], chunk)]
    return torch.cat(parts, dim=1)
