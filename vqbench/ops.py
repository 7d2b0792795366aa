"""The operations vqbench times, as zero-argument callables over fixed inputs.

logits:    the V logits (softmax h W^T, vq h C^T plus scatter), no normalisation; only heads
           that produce V logits in one step (others raise NotImplementedError).
log_probs: normalised log-probabilities over V.
logits_into, log_probs_into: the same, written into one output tensor allocated (in the head's
           preferred layout, ``new_output``) and first touched before the timing, as an inference
           loop that reuses its buffer does; the plain ops above return a fresh tensor each call,
           whose allocation and first-touch page faults they pay. Heads without a direct write
           copy their fresh result into the buffer, and pay for that too.
predict:   the argmax token.
loss:      forward of the training loss (mean NLL), no autograd graph.
train:     loss forward + backward, gradients for the head's parameters and the hidden states.
decode:    generation step for N sequences, one token each, drawn by ``head.sample`` (structured
           heads draw without the V log-probabilities); the small-batch case, N <= DECODE_MAX_BATCH.
decode_dense: the same draw the dense way, log_probs then torch.multinomial, for comparison.
"""

from __future__ import annotations

import torch

from vqbench.head import OutputHead
from vqbench.results import ALL_OPS, DECODE_OPS, INTO_OPS

DECODE_MAX_BATCH = 64


def make_op(head, op: str, hidden: torch.Tensor, target: torch.Tensor):
    """Return fn() running ``op`` once. hidden [N, d], target [N] int64."""
    if op == "logits":
        if type(head)._logits is OutputHead._logits:
            raise NotImplementedError(f"{head.name} has no one-step V logits")
        return _no_grad(lambda: head.logits(hidden))
    if op == "log_probs":
        return _no_grad(lambda: head.log_probs(hidden))
    if op in INTO_OPS:
        if op == "logits_into" and type(head)._logits is OutputHead._logits:
            raise NotImplementedError(f"{head.name} has no one-step V logits")
        out = head.new_output(hidden.shape[0])
        out.fill_(0)  # first touch outside the timing
        method = head.logits if op == "logits_into" else head.log_probs
        return _no_grad(lambda: method(hidden, out=out))
    if op == "predict":
        return _no_grad(lambda: head.predict(hidden))
    if op == "loss":
        return _no_grad(lambda: head.loss(hidden, target))
    if op == "train":
        trained = hidden.detach().requires_grad_(True)

        def train():
            head.zero_grad(set_to_none=True)
            trained.grad = None
            head.loss(trained, target).backward()
        return train
    if op in DECODE_OPS:
        if hidden.shape[0] > DECODE_MAX_BATCH:
            raise NotImplementedError(f"{op} is the generation case, timed for at most {DECODE_MAX_BATCH} "
                                      f"sequences, not N={hidden.shape[0]}")
        generator = torch.Generator(device=hidden.device).manual_seed(0)

        def decode():
            with torch.inference_mode():
                return head.sample(hidden, generator=generator)

        def decode_dense():
            with torch.inference_mode():
                probs = head.log_probs(hidden).exp_()
                return torch.multinomial(probs.float(), 1, generator=generator)
        return decode if op == "decode" else decode_dense
    raise ValueError(f"op: unknown op {op!r}; expected one of {', '.join(ALL_OPS)}")


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def analytic_flops(head, op: str, num_tokens: int, target: torch.Tensor) -> int:
    """Matrix-product FLOPs of ``op``. train = 3x the loss forward (each product has two
    backward products of the same size); logits, decode and the *_into ops = log_probs."""
    op = INTO_OPS.get(op, op)
    if op == "train":
        return 3 * head.flops(num_tokens, "loss", target)
    if op in ("logits", "decode_dense"):
        return head.flops(num_tokens, "log_probs")
    if op == "decode":  # a drawn token follows one class, path or cluster: the loss's expected count
        return head.flops(num_tokens, "loss")
    return head.flops(num_tokens, op, target)


def largest_intermediate(head, op: str, num_tokens: int) -> int:
    """Elements of the largest tensor ``op`` creates (analytic), for comparison with the
    measured peak memory; for the *_into ops, what the plain op would create)."""
    op = INTO_OPS.get(op, op)
    return int(head.largest_intermediate(num_tokens, "loss" if op == "train" else
                                         "log_probs" if op in ("logits", "decode", "decode_dense") else op))
