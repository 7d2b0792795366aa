"""Analytic parameter and FLOP counts against measurements.

FlopCounterMode counts matrix products (mm, addmm, bmm, einsum through bmm); it cannot see
gathers, scatters, exponentials or reductions, and neither do the analytic counts.
"""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import D, N, SPECS, V, build, inputs
from baselines.adaptive import default_cutoffs


def counted(fn):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def test_num_parameters_is_trainable_numel(spec):
    head = build(spec)
    assert head.num_parameters() == sum(p.numel() for p in head.parameters() if p.requires_grad)


def adaptive_closed_form(vocab, d, cutoffs, div):
    bounds = [*cutoffs, vocab]
    total = d * (cutoffs[0] + len(cutoffs))
    for i in range(len(cutoffs)):
        h = int(d // div ** (i + 1))
        total += d * h + h * (bounds[i + 1] - bounds[i])
    return total


@pytest.mark.parametrize("spec,expected", [
    ("softmax", V * D),
    ("softmax:bias=1", V * D + V),
    ("lowrank", (D // 4) * D + V * (D // 4)),
    ("lowrank:rank=3,bias=1", 3 * D + V * 3 + V),
    ("hierarchical:tree=huffman", (V - 1) * D),
    ("hierarchical:classes=5", 5 * D + V * D),
    ("hierarchical", round(math.sqrt(V)) * D + V * D),
    ("vq:K=10", 10 * D),
    ("vq:K=10,bias=1", 10 * D + V),
    ("adaptive", adaptive_closed_form(V, D, default_cutoffs(V, D, 4.0), 4.0)),
    ("adaptive:cutoffs=10/40,div_value=2", adaptive_closed_form(V, D, (10, 40), 2.0)),
])
def test_num_parameters_closed_form(spec, expected):
    assert build(spec).num_parameters() == expected


def test_flops_match_counter(spec):
    head = build(spec)
    hidden, target = inputs()
    assert head.flops(N, "loss", target) == counted(lambda: head.loss(hidden, target))
    assert head.flops(N, "log_probs") == counted(lambda: head.log_probs(hidden))
    predict = counted(lambda: head.predict(hidden))
    if spec.startswith("adaptive"):
        # torch's predict runs the tail clusters only for rows whose best head entry is a
        # cluster: flops("predict") is that worst case
        assert head.flops(N, "predict") >= predict >= 2 * N * D * (head.cutoffs[0] + len(head.cutoffs))
    else:
        assert head.flops(N, "predict") == predict


@pytest.mark.parametrize("spec", [s for s in SPECS if s.startswith(("adaptive", "hierarchical"))])
def test_expected_flops_between_extremes(spec):
    """Without targets: the expectation under the head's frequencies, no more than log_probs."""
    head = build(spec)
    expected = head.flops(N, "loss")
    assert 0 < expected <= head.flops(N, "log_probs")
    frequent = torch.zeros(N, dtype=torch.int64)
    assert head.flops(N, "loss", frequent) <= head.flops(N, "log_probs")


def test_flops_known_values():
    assert build("softmax").flops(N, "loss") == 2 * N * D * V
    assert build("vq:K=10").flops(N, "log_probs") == 2 * N * D * 10
    assert build("lowrank:rank=3,bias=1").flops(N, "predict") == 2 * N * 3 * (D + V)
