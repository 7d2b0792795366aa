"""head.loss with F.cross_entropy's options (ignore_index, reduction, label_smoothing): values and
gradients equal F.cross_entropy applied to the head's own log_probs, for every head."""

import pytest
import torch
import torch.nn.functional as F

from conftest import D, N, V, build, dense, heads_with, inputs

SMOOTHING_HEADS = heads_with("label_smoothing")


def reference_and_ours(head, hidden, target, **options):
    h1 = hidden.clone().requires_grad_(True)
    ours = head.loss(h1, target, **options)
    grads_ours = torch.autograd.grad(ours.sum(), [h1, *head.parameters()], allow_unused=True)
    h2 = hidden.clone().requires_grad_(True)
    reference = F.cross_entropy(head.log_probs(h2), target, **options)
    grads_ref = torch.autograd.grad(reference.sum(), [h2, *head.parameters()], allow_unused=True)
    return ours, reference, grads_ours, grads_ref


def assert_grads_equal(grads_ours, grads_ref):
    for a, b in zip(map(dense, grads_ours), map(dense, grads_ref)):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros(()) if b is None else b
        torch.testing.assert_close(a.expand_as(b) if a.dim() == 0 else a, b.expand_as(a) if b.dim() == 0 else b,
                                   rtol=1e-7, atol=1e-9)


def with_ignored(every):
    """The conftest inputs with every ``every``-th target set to -100."""
    hidden, target = inputs()
    target = target.clone()
    target[::every] = -100
    return hidden, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_with_ignored_targets_match_cross_entropy(spec, reduction):
    head = build(spec)
    hidden, target = with_ignored(3)
    ours, reference, g_ours, g_ref = reference_and_ours(head, hidden, target, reduction=reduction)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-10)
    assert_grads_equal(g_ours, g_ref)
    if reduction == "none":
        assert ours.shape == target.shape and bool((ours[::3] == 0).all())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_custom_ignore_index_and_leading_dims(spec, reduction):
    head = build(spec)
    hidden, target = inputs()
    target = target.clone()
    target[1::4] = 3
    hidden, target = hidden.reshape(4, N // 4, D), target.reshape(4, N // 4)
    ours = head.loss(hidden, target, ignore_index=3, reduction=reduction)
    reference = F.cross_entropy(head.log_probs(hidden).reshape(-1, V), target.reshape(-1), ignore_index=3,
                                reduction=reduction)
    torch.testing.assert_close(ours.reshape(-1) if reduction == "none" else ours, reference)


def test_an_all_ignored_batch_gives_cross_entropy_answer(spec):
    head = build(spec)
    hidden, _ = inputs()
    target = torch.full((N,), -100)
    assert torch.isnan(head.loss(hidden, target))  # mean over no target: NaN, as F.cross_entropy
    h = hidden.clone().requires_grad_(True)
    total = head.loss(h, target, reduction="sum")
    assert float(total.detach()) == 0.0
    total.backward()
    assert h.grad is not None and float(h.grad.abs().sum()) == 0.0
    assert head.loss(hidden, target, reduction="none").eq(0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_is_exact_or_refused_by_name(spec, reduction):
    head = build(spec)
    hidden, target = with_ignored(5)
    if spec.split(":")[0] not in SMOOTHING_HEADS:
        with pytest.raises(NotImplementedError, match=rf"label_smoothing: {spec.split(':')[0]}"):
            head.loss(hidden, target, label_smoothing=0.1, reduction=reduction)
        return
    ours, reference, g_ours, g_ref = reference_and_ours(head, hidden, target, label_smoothing=0.1,
                                                        reduction=reduction)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-10)
    assert_grads_equal(g_ours, g_ref)


def test_default_path_is_unchanged(spec):
    head = build(spec)
    hidden, target = inputs()
    torch.testing.assert_close(head.loss(hidden, target), -head.target_log_prob(hidden, target).mean())


@pytest.mark.parametrize("options, match", [
    ({"reduction": "avg"}, "reduction"), ({"ignore_index": 1.5}, "ignore_index"),
    ({"label_smoothing": 1.5}, "label_smoothing"), ({"label_smoothing": "a"}, "label_smoothing")])
def test_bad_options_are_named(options, match):
    head = build("softmax")
    hidden, target = inputs()
    with pytest.raises((ValueError, TypeError), match=match):
        head.loss(hidden, target, **options)


def test_targets_out_of_range_are_still_refused_next_to_ignored_ones():
    head = build("vq:K=10")
    hidden, target = inputs()
    target = target.clone()
    target[0], target[1] = -100, V
    with pytest.raises(ValueError, match="target: .*ignore_index=-100"):
        head.loss(hidden, target)
