"""Every head, every option combination: a normalised distribution and one consistent contract."""

import pytest
import torch

from conftest import D, N, V, build, dense, inputs
from vqbench import HeadOutput

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_probs_normalised_and_loss_consistent(spec, dtype):
    head = build(spec, dtype)
    hidden, target = inputs(dtype)
    log_probs = head.log_probs(hidden)
    assert log_probs.shape == (N, V) and log_probs.dtype == dtype
    assert torch.logsumexp(log_probs, dim=1).abs().max() < TOL[dtype]
    from_log_probs = -log_probs.gather(1, target[:, None]).mean()
    target_lp = head.target_log_prob(hidden, target)
    assert target_lp.shape == (N,)
    loss = head.loss(hidden, target)
    assert loss.dim() == 0
    assert torch.allclose(loss, from_log_probs, atol=TOL[dtype], rtol=0)
    assert torch.allclose(loss, -target_lp.mean(), atol=TOL[dtype], rtol=0)
    assert torch.allclose(target_lp, log_probs.gather(1, target[:, None]).squeeze(1), atol=TOL[dtype] * 10)


def test_predict_is_argmax(spec):
    head = build(spec)
    hidden, _ = inputs()
    predicted = head.predict(hidden)
    assert predicted.dtype == torch.int64
    assert torch.equal(predicted, head.log_probs(hidden).argmax(dim=1))


def test_forward_returns_output_and_loss(spec):
    head = build(spec)
    hidden, target = inputs()
    result = head(hidden, target)
    assert isinstance(result, HeadOutput)
    assert torch.allclose(result.output, head.target_log_prob(hidden, target))
    assert torch.allclose(result.loss, head.loss(hidden, target))


def test_gradients_reach_every_parameter(spec):
    head = build(spec)
    hidden, target = inputs()
    hidden.requires_grad_(True)
    head.loss(hidden, target).backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        grad = param.grad.to_dense() if param.grad.is_sparse else param.grad  # sparse_grad options
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def test_leading_dims(spec):
    head = build(spec)
    hidden, target = inputs(n=24)
    b_s_hidden, b_s_target = hidden.reshape(4, 6, D), target.reshape(4, 6)
    assert head.log_probs(b_s_hidden).shape == (4, 6, V)
    assert torch.allclose(head.log_probs(b_s_hidden).reshape(24, V), head.log_probs(hidden))
    assert head.target_log_prob(b_s_hidden, b_s_target).shape == (4, 6)
    assert head.predict(b_s_hidden).shape == (4, 6)
    assert torch.allclose(head.loss(b_s_hidden, b_s_target), head.loss(hidden, target))


def test_single_token(spec):
    head = build(spec)
    hidden, target = inputs(n=1)
    assert torch.allclose(head.loss(hidden, target), -head.log_probs(hidden)[0, target[0]])


def test_spec_round_trip(spec):
    head = build(spec)
    again = build(head.spec)
    assert again.spec == head.spec
    assert type(again) is type(head) and again.num_parameters() == head.num_parameters()


@pytest.mark.parametrize("layout", ["new_output", "row-major", "leading dims"])
def test_out_writes_the_same_values(spec, layout):
    head = build(spec)
    hidden, _ = inputs(n=24)
    if layout == "leading dims":
        hidden = hidden.reshape(4, 6, D)
        out = head.new_output(4, 6)
        assert out.shape == (4, 6, V) and out.dtype == torch.float64
    else:
        out = head.new_output(24) if layout == "new_output" else torch.empty(24, V, dtype=torch.float64)
    with torch.no_grad():
        expected = head.log_probs(hidden)
        out.fill_(float("nan"))
        assert head.log_probs(hidden, out=out) is out
        assert torch.allclose(out, expected, atol=1e-12, rtol=0)
        try:
            expected = head.logits(hidden)
        except NotImplementedError:
            return
        out.fill_(float("nan"))
        assert head.logits(hidden, out=out) is out
        assert torch.allclose(out, expected, atol=1e-12, rtol=0)


def test_new_output_layout():
    """Heads that build token-major outputs hand out the transposed view of a [V, N] tensor."""
    for spec, token_major in [("softmax", False), ("lowrank", False), ("vq:K=10", True), ("adaptive", False),
                              ("hierarchical", True), ("hierarchical:tree=huffman", True)]:
        out = build(spec).new_output(5)
        assert out.shape == (5, V)
        assert out.T.is_contiguous() is token_major and out.is_contiguous() is not token_major


def test_log_probs_gradients_match_the_loss_path(spec):
    """log_probs under autograd is differentiable and agrees with target_log_prob's gradients
    (two independent implementations for every head but the plain softmax)."""
    head = build(spec)
    hidden, target = inputs()
    hidden.requires_grad_(True)
    wrt = [hidden, *head.parameters()]
    from_log_probs = torch.autograd.grad(head.log_probs(hidden).gather(1, target[:, None]).sum(), wrt,
                                         allow_unused=True)
    from_target = torch.autograd.grad(head.target_log_prob(hidden, target).sum(), wrt, allow_unused=True)
    for a, b in zip(map(dense, from_log_probs), map(dense, from_target)):
        if a is None or b is None:
            assert a is None or not a.any()
            assert b is None or not b.any()
        else:
            assert torch.allclose(a, b, atol=1e-10, rtol=0)
