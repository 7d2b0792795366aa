"""Peer heads: each peer's loss and gradients equal vqbench's softmax on the same weights; peers refuse what
they do not implement, and name the package or device they need."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from vqbench import make_head

V, D, N = 300, 16, 24
HAS_LCE = hasattr(F, "linear_cross_entropy")


def pair(spec):
    torch.manual_seed(0)
    peer = make_head(spec, V, D)
    softmax = make_head("softmax", V, D)
    with torch.no_grad():
        softmax.weight.copy_(peer.weight)
    return peer, softmax


def loss_and_grads(head, hidden, target):
    h = hidden.clone().requires_grad_(True)
    loss = head.loss(h, target)
    loss.backward()
    return loss.detach(), h.grad, head.weight.grad


PEERS = [pytest.param("peer:impl=torch-lce", marks=pytest.mark.skipif(not HAS_LCE, reason="torch without F.linear_cross_entropy")),
         pytest.param("peer:impl=torch-lce,chunked=1", marks=pytest.mark.skipif(not HAS_LCE, reason="torch without F.linear_cross_entropy")),
         "peer:impl=compile",
         pytest.param("peer:impl=cce", marks=pytest.mark.skipif(importlib.util.find_spec("cut_cross_entropy") is None,
                                                               reason="cut-cross-entropy not installed"))]


@pytest.mark.parametrize("spec", PEERS)
def test_peer_loss_and_gradients_equal_softmax(spec):
    peer, softmax = pair(spec)
    g = torch.Generator().manual_seed(1)
    hidden, target = torch.randn(N, D, generator=g), torch.randint(0, V, (N,), generator=g)
    ours = loss_and_grads(softmax, hidden, target)
    theirs = loss_and_grads(peer, hidden, target)
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert peer.num_parameters() == softmax.num_parameters() == V * D


HAS_CCE = importlib.util.find_spec("cut_cross_entropy") is not None


@pytest.mark.skipif(not HAS_CCE, reason="cut-cross-entropy not installed")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 4e-2)])
@pytest.mark.parametrize("n,d,v", [(37, 24, 301), (5, 7, 2), (1, 3, 513)])
def test_cce_on_cpu_equals_softmax_in_float32_and_bfloat16(dtype, tol, n, d, v):
    torch.manual_seed(0)
    peer, softmax = make_head("peer:impl=cce", v, d, dtype=dtype), make_head("softmax", v, d, dtype=dtype)
    with torch.no_grad():
        softmax.weight.copy_(peer.weight)
    g = torch.Generator().manual_seed(2)
    hidden, target = torch.randn(n, d, generator=g).to(dtype), torch.randint(0, v, (n,), generator=g)
    theirs, ours = loss_and_grads(peer, hidden, target), loss_and_grads(softmax, hidden, target)
    assert theirs[0].dtype == dtype
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


def test_peers_refuse_what_they_do_not_implement():
    peer, _ = pair("peer:impl=torch-lce") if HAS_LCE else pair("peer:impl=compile")
    hidden, target = torch.randn(4, D), torch.randint(0, V, (4,))
    for call in (lambda: peer.log_probs(hidden), lambda: peer.predict(hidden), lambda: peer.sample(hidden),
                 lambda: peer.target_log_prob(hidden, target), lambda: peer.loss(hidden, target, reduction="sum")):
        with pytest.raises(NotImplementedError, match="peer"):
            call()


@pytest.mark.parametrize("spec, match", [("peer:impl=liger", "liger"), ("peer:impl=nope", "impl"),
                                         ("peer:impl=compile,chunked=1", "chunked")])
def test_missing_packages_devices_and_bad_options_are_named(spec, match):
    if spec == "peer:impl=liger" and importlib.util.find_spec("liger_kernel") is not None:
        head = make_head(spec, V, D)
        with pytest.raises(NotImplementedError, match="CUDA"):
            head.loss(torch.randn(4, D), torch.zeros(4, dtype=torch.long))
        return
    with pytest.raises((NotImplementedError, ValueError), match=match):
        make_head(spec, V, D)


def test_peer_spec_round_trips():
    if HAS_LCE:
        assert make_head("peer:chunked=1", V, D).spec == "peer:chunked=1"
    assert make_head("peer:impl=compile", V, D).spec == "peer:impl=compile"


def test_the_peer_losses_script_lists_every_peer():
    import subprocess
    import sys
    import os
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "peer_losses.py")
    done = subprocess.run([sys.executable, script, "--vocab", "300", "--d-model", "16", "--tokens", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    body = {line.split("|")[1].strip(): line for line in lines[1:]}
    assert set(body) == {"softmax", "peer:impl=torch-lce", "peer:impl=torch-lce,chunked=1", "peer:impl=compile",
                         "peer:impl=cce", "peer:impl=liger"}
    reference = float(body["softmax"].split("|")[2])
    assert float(body["peer:impl=torch-lce"].split("|")[2]) == pytest.approx(reference, abs=1e-5)
    assert "not run" in body["peer:impl=liger"] or float(body["peer:impl=liger"].split("|")[2]) > 0


def test_padded_compiled_peer_equals_softmax_and_its_padding_never_trains():
    torch.manual_seed(0)
    peer = make_head("peer:impl=compile,pad=64", V, D)
    softmax = make_head("softmax", V, D)
    assert peer.weight.shape[0] == 320 and peer.num_parameters() == 320 * D
    with torch.no_grad():
        softmax.weight.copy_(peer.weight[:V])
    g = torch.Generator().manual_seed(1)
    hidden, target = torch.randn(N, D, generator=g), torch.randint(0, V, (N,), generator=g)
    ours, theirs = loss_and_grads(softmax, hidden, target), loss_and_grads(peer, hidden, target)
    torch.testing.assert_close(theirs[0], ours[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs[1], ours[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs[2][:V], ours[2], rtol=1e-5, atol=1e-5)
    assert torch.equal(theirs[2][V:], torch.zeros(320 - V, D))
    with pytest.raises(ValueError, match="^pad: only impl=compile"):
        make_head("peer:impl=cce,pad=64", V, D)
