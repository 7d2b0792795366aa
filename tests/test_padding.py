"""pad: a head whose V-wide matrix is padded to a multiple of `pad` rows computes exactly what the unpadded
head computes on the V real tokens (loss, log-probs, logits, argmax, gradients), and its extra rows stay zero."""

import pytest
import torch

from vqbench.heads.registry import make_head

V, D, N = 50, 12, 9


def pair(spec, pad, dtype=torch.float64):
    torch.manual_seed(0)
    plain = make_head(spec, V, D, dtype=dtype)
    torch.manual_seed(0)
    joiner = "," if ":" in spec else ":"
    padded = make_head(f"{spec}{joiner}pad={pad}", V, D, dtype=dtype)
    return plain, padded


def grads(head, hidden, target, **options):
    head.zero_grad(set_to_none=True)
    h = hidden.clone().requires_grad_(True)
    loss = head.loss(h, target, **options)
    loss.sum().backward()
    return loss.detach(), h.grad, {n: p.grad for n, p in head.named_parameters()}


@pytest.mark.parametrize("spec", ["softmax", "softmax:bias=1", "softmax:chunk=4", "softmax:chunk=4,bias=1",
                                  "lowrank", "lowrank:bias=1"])
@pytest.mark.parametrize("pad", [64, 16])
def test_padded_head_is_exact_on_the_real_tokens(spec, pad):
    plain, padded = pair(spec, pad)
    width = -(-V // pad) * pad
    assert padded.weight.shape[0] == width and plain.weight.shape[0] == V
    assert padded.num_parameters() == plain.num_parameters() + (width - V) * padded.weight.shape[1]
    with torch.no_grad():
        padded.weight[V:].zero_()  # the padding is zero from the start; kept so after a step below
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, N, D, generator=g, dtype=torch.float64)
    target = torch.randint(0, V, (3, N), generator=g)
    target[0, 0] = V - 1  # the last real token, next to the padding
    with torch.no_grad():
        torch.testing.assert_close(padded.log_probs(hidden), plain.log_probs(hidden), rtol=0, atol=1e-12)
        torch.testing.assert_close(padded.logits(hidden), plain.logits(hidden), rtol=0, atol=1e-12)
        assert torch.equal(padded.predict(hidden), plain.predict(hidden))
        torch.testing.assert_close(padded.target_log_prob(hidden, target), plain.target_log_prob(hidden, target),
                                   rtol=0, atol=1e-12)
    for options in ({}, {"reduction": "none"}, {"label_smoothing": 0.1}, {"ignore_index": int(target[1, 2])}):
        loss_a, hidden_a, params_a = grads(plain, hidden, target, **options)
        loss_b, hidden_b, params_b = grads(padded, hidden, target, **options)
        torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-12)
        torch.testing.assert_close(hidden_b, hidden_a, rtol=0, atol=1e-12)
        for name, grad in params_a.items():
            wide = params_b[name]
            if name == "weight":
                assert torch.equal(wide[V:], torch.zeros_like(wide[V:]))  # the padding never trains
                wide = wide[:V]
            torch.testing.assert_close(wide, grad, rtol=0, atol=1e-12)


def test_padded_logits_into_a_buffer_and_bfloat16():
    plain, padded = pair("softmax", 64, torch.bfloat16)
    hidden = torch.randn(N, D).to(torch.bfloat16)
    with torch.no_grad():
        out = padded.new_output(N)
        assert torch.equal(padded.logits(hidden, out=out), plain.logits(hidden))
        assert torch.isfinite(padded.log_probs(hidden)).all()
        assert padded.log_probs(hidden).shape == (N, V)


def test_pad_is_in_the_spec_and_checked():
    plain, padded = pair("softmax", 64)
    assert plain.spec == "softmax" and padded.spec == "softmax:pad=64"
    assert make_head("lowrank:pad=128", V, D).spec == "lowrank:pad=128"  # the default rank is not written
    assert make_head("softmax:pad=1", V, D).weight.shape[0] == V
    with pytest.raises(ValueError, match="^pad: must be >= 1"):
        make_head("softmax:pad=0", V, D)
    with pytest.raises(TypeError, match="^pad: expected an int"):
        make_head("softmax", V, D, pad=6.5)
    assert "mask" not in padded.state_dict()
