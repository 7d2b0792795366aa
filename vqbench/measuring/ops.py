"""The operations vqbench times: one record per op, with how to build its callable and its analytic counts.

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

This module imports no torch: the results format and the tables read the op names from it. The code
that runs inside the timing is vqbench.measuring.op_calls (part of a row's code fingerprint); the counts here
feed the floors, which are derived when tables are built, so correcting a count never stales a time.
A new op is one record here and one builder there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

DECODE_MAX_BATCH = 64  # the largest N the decode ops are timed at (vqbench.measuring.op_calls checks it)
INT64_BYTES = 8


@dataclass(frozen=True)
class Op:
    """One timed operation.

    name: the op's name in results files and tables.
    builder: name of the function in vqbench.measuring.op_calls that returns its callable.
    flops_as: which ``head.flops`` op its matrix-product count is read from; train is 3x that
        (each product has two backward products of the same size).
    writes: what it writes once, for its least traffic: "V" (N x V values), "ids" (N int64),
        "scalar" (the loss) or "grads" (the gradients of the parameters read and of the hidden states).
    reads: which parameters it must read: "all", "targets" (those the targets reach,
        head.touched_parameters), "drawn" (the cheapest draw's, head.least_sampled_parameters) or
        "predicted" (head.least_predicted_parameters).
    intermediate_as: which ``head.largest_intermediate`` op its largest tensor is read from.
    into: written into a reused buffer of the plain op named here.
    decode: a generation step, timed for small N only.
    """
    name: str
    builder: str
    flops_as: str
    writes: str
    reads: str = "all"
    intermediate_as: str = ""
    into: str = ""
    decode: bool = False
    default: bool = False

    def build(self, head, hidden, target) -> Callable[[], object]:
        """fn() running the op once on hidden [N, d] and target [N] (int64)."""
        return getattr(importlib.import_module("vqbench.measuring.op_calls"), self.builder)(head, hidden, target)

    def flops(self, head, num_tokens: int, target=None) -> int:
        """Matrix-product FLOPs, analytic."""
        # a decode draw's count is the expectation over the head's frequencies, not the sweep's targets
        count = head.flops(num_tokens, self.flops_as, None if self.decode else target)
        return 3 * count if self.name == "train" else count

    def traffic(self, head, num_tokens: int, element_size: int, target=None) -> Tuple[int, int]:
        """(bytes read, bytes written) the op cannot avoid: the hidden states and the parameters it needs read
        once (plus the index buffers of a V-wide op, which must know every token's place), the targets for a
        loss, what it writes written once, and the intermediates the head's loss path materialises by
        definition (head.materialised_bytes: VQ's scatter path writes the N x V logits, training reads them)."""
        n, d = num_tokens, head.d_model
        params = parameters_read(head, self.reads, target) * element_size
        read = n * d * element_size + params + (INT64_BYTES * n if self.writes in ("scalar", "grads") else 0)
        if self.writes == "V":
            read += buffer_bytes(head)
            written = n * head.vocab_size * element_size
        elif self.writes == "ids":
            written = INT64_BYTES * n
        elif self.writes == "scalar":
            written = element_size
        else:
            written = params + n * d * element_size
        if self.writes in ("scalar", "grads"):  # a loss path that materialises V-wide intermediates pays them
            extra_read, extra_written = head.materialised_bytes(n, self.name, element_size)
            read, written = read + extra_read, written + extra_written
        return int(read), int(written)

    def intermediate(self, head, num_tokens: int) -> int:
        """Elements of the largest tensor the op creates (analytic; for the *_into ops, what the plain op would
        create), for comparison with the measured peak memory."""
        return int(head.largest_intermediate(num_tokens, self.intermediate_as or self.flops_as))


def parameters_read(head, reads: str, target=None) -> int:
    if reads == "targets" and target is not None:
        return head.touched_parameters(target)
    if reads == "drawn":
        return head.least_sampled_parameters()
    if reads == "predicted":
        return head.least_predicted_parameters()
    return head.num_parameters()


def buffer_bytes(head) -> int:
    """Bytes of the head's buffers (index maps, tree paths), each at its own element size."""
    return sum(b.numel() * b.element_size() for b in head.buffers())


OPS: Dict[str, Op] = {op.name: op for op in (
    Op("logits", "build_logits", "log_probs", "V", default=True),
    Op("log_probs", "build_log_probs", "log_probs", "V", default=True),
    Op("logits_into", "build_logits_into", "log_probs", "V", into="logits"),
    Op("log_probs_into", "build_log_probs_into", "log_probs", "V", into="log_probs"),
    Op("predict", "build_predict", "predict", "ids", reads="predicted", default=True),
    Op("loss", "build_loss", "loss", "scalar", reads="targets", default=True),
    Op("train", "build_train", "loss", "grads", reads="targets", default=True),
    # a drawn token follows one class, path or cluster: the loss's expected count
    Op("decode", "build_decode", "loss", "ids", reads="drawn", intermediate_as="log_probs", decode=True,
       default=True),
    Op("decode_dense", "build_decode_dense", "log_probs", "ids", decode=True),
)}

#: every op a sweep can time, in table order; the *_into ops and decode_dense are asked for by name
ALL_OPS = tuple(OPS)
DEFAULT_OPS = tuple(name for name, op in OPS.items() if op.default)
INTO_OPS = {name: op.into for name, op in OPS.items() if op.into}
V_WIDE_OPS = tuple(name for name, op in OPS.items() if op.writes == "V")
DECODE_OPS = tuple(name for name, op in OPS.items() if op.decode)


def get_op(name: str) -> Op:
    if name not in OPS:
        raise ValueError(f"op: unknown op {name!r}; expected one of {', '.join(ALL_OPS)}")
    return OPS[name]


def make_op(head, op: str, hidden, target):
    """Return fn() running ``op`` once. hidden [N, d], target [N] int64."""
    return get_op(op).build(head, hidden, target)


def analytic_flops(head, op: str, num_tokens: int, target=None) -> int:
    return get_op(op).flops(head, num_tokens, target)


def largest_intermediate(head, op: str, num_tokens: int) -> int:
    return get_op(op).intermediate(head, num_tokens)


def least_traffic(head, op: str, num_tokens: int, element_size: int, target: Optional[object] = None):
    return get_op(op).traffic(head, num_tokens, element_size, target)
