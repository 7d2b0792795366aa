"""The code a timed op runs: one builder per op, each returning a zero-argument callable over fixed inputs.

Only what runs inside the timing lives here (it is part of every row's code fingerprint); the op's
name, analytic counts and table placement are its record in vqbench.measuring.ops.

Every builder takes (head, hidden [N, d], target [N] int64) and returns fn() that runs the op once.
"""

from __future__ import annotations

import torch

from vqbench.heads.contract import OutputHead

DECODE_MAX_BATCH = 64


def has_one_step_logits(head) -> bool:
    """True when the head produces its V logits in one step (it overrides ``_logits``)."""
    return type(head)._logits is not OutputHead._logits


def _require_logits(head) -> None:
    if not has_one_step_logits(head):
        raise NotImplementedError(f"{head.name} has no one-step V logits")


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def build_logits(head, hidden, target):
    _require_logits(head)
    return _no_grad(lambda: head.logits(hidden))


def build_log_probs(head, hidden, target):
    return _no_grad(lambda: head.log_probs(hidden))


def _build_into(method, head, hidden):
    out = head.new_output(hidden.shape[0])
    out.fill_(0)  # first touch outside the timing
    return _no_grad(lambda: method(hidden, out=out))


def build_logits_into(head, hidden, target):
    _require_logits(head)
    return _build_into(head.logits, head, hidden)


def build_log_probs_into(head, hidden, target):
    return _build_into(head.log_probs, head, hidden)


def build_predict(head, hidden, target):
    return _no_grad(lambda: head.predict(hidden))


def build_loss(head, hidden, target):
    return _no_grad(lambda: head.loss(hidden, target))


def build_train(head, hidden, target):
    trained = hidden.detach().requires_grad_(True)

    def train():
        head.zero_grad(set_to_none=True)
        trained.grad = None
        head.loss(trained, target).backward()
    return train


def _check_decode_batch(op: str, hidden) -> None:
    if hidden.shape[0] > DECODE_MAX_BATCH:
        raise NotImplementedError(f"{op} is the generation case, timed for at most {DECODE_MAX_BATCH} "
                                  f"sequences, not N={hidden.shape[0]}")


def build_decode(head, hidden, target):
    _check_decode_batch("decode", hidden)
    generator = torch.Generator(device=hidden.device).manual_seed(0)

    def decode():
        with torch.inference_mode():
            return head.sample(hidden, generator=generator)
    return decode


def build_decode_dense(head, hidden, target):
    _check_decode_batch("decode_dense", hidden)
    generator = torch.Generator(device=hidden.device).manual_seed(0)

    def decode_dense():
        with torch.inference_mode():
            probs = head.log_probs(hidden).exp_()
            return torch.multinomial(probs.float(), 1, generator=generator)
    return decode_dense
