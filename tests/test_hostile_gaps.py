"""Faults the suite did not notice (a mutation check): each test here fails when the fault is put back.
Seed-paired quality ratios, the frozen protocol's hidden-state cache, adaptive's scratch groups, decode-sized
log_probs without autograd, and VQ label smoothing with a bias."""

import math
import os
import pickle

import pytest
import torch

from conftest import D, SPECS, V, build, inputs
from vqbench import quality, train
from vqbench.training.lm import LSTMBody


# ---------------------------------------------------------------------------- ratios paired by seed

def _row(name, seed, ppl):
    return {"name": name, "seed": seed, "test_ppl": ppl, "valid_ppl": ppl + 1, "output_params": 100, "head": name,
            "group": "g", "epochs": 3, "last_epoch_gain": 0.0, "varies": ""}


def test_ratios_pair_runs_by_seed_when_the_reference_misses_one():
    # the reference lacks seed 1 and lists its rows out of order: pairing by position would divide the
    # variant's seed-1 run by the reference's seed-2 run
    rows = [_row("softmax", 2, 200.0), _row("softmax", 0, 100.0),
            _row("vq", 0, 110.0), _row("vq", 1, 500.0), _row("vq", 2, 230.0)]
    summary = {s["name"]: s for s in quality.aggregate(rows, "softmax")}
    vq = summary["vq"]
    assert vq["seed_ratios"] == {0: pytest.approx(1.1), 2: pytest.approx(1.15)}
    assert vq["ratio_seeds"] == 2 and vq["ratio_mean"] == pytest.approx(1.125)
    assert vq["seeds"] == 3 and vq["test_mean"] == pytest.approx(280.0)


# ---------------------------------------------------------------------------- the hidden-state cache

class _Hostile:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.mkdir, (self.sentinel,)


def test_a_hostile_pickle_at_the_hidden_state_cache_is_never_run(tmp_path):
    torch.manual_seed(0)
    body_path = tmp_path / "best.pt"
    body_path.write_bytes(b"checkpoint")
    task = train.FrozenTask.__new__(train.FrozenTask)
    task.cfg = train.TrainConfig(protocol="frozen", body_from=str(body_path), bptt=5)
    task.body = LSTMBody(20, 8, 1, 0.0)
    ids = torch.randint(0, 20, (64,))
    stamp = os.stat(body_path).st_mtime_ns
    cache = f"{body_path}.hidden-valid-{stamp}-{len(ids)}-b2-t5.pt"
    sentinel = tmp_path / "ran"
    with open(cache, "wb") as f:
        pickle.dump(_Hostile(str(sentinel)), f)
    hidden, targets = task.cached_states("valid", ids, 2)
    assert not sentinel.exists()  # the pickle's code never ran
    expected = train.hidden_states(task.body, ids, 5, 2)
    torch.testing.assert_close(hidden, expected[0])
    assert torch.equal(targets, expected[1])
    again = torch.load(cache, weights_only=True)  # the cache now holds the recomputed states
    torch.testing.assert_close(again[0], expected[0])


# ---------------------------------------------------------------------------- adaptive's scratch groups

@pytest.mark.parametrize("scratch", [1, 50, 61, 97, 130, 1000])
@pytest.mark.parametrize("n", [1, 6, 7, 13, 40])
@pytest.mark.parametrize("spec", ["adaptive", "adaptive:cutoffs=10/40,div_value=2"])
def test_adaptive_scratch_groups_cover_every_row(spec, n, scratch, monkeypatch):
    head = build(spec, token_counts=None)
    monkeypatch.setattr(type(head), "SCRATCH_ELEMENTS", scratch)  # groups of a few rows, not dividing n
    hidden, _ = inputs(n=n)
    expected = head.log_probs(hidden)  # the differentiable path: no scratch groups
    out = torch.full((n, V), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        head.log_probs(hidden, out=out)
        plain = head.log_probs(hidden)
    torch.testing.assert_close(out, expected.detach())
    torch.testing.assert_close(plain, expected.detach())


def test_adaptive_scratch_groups_with_permuted_ids(monkeypatch):
    head = build("adaptive", token_counts=torch.arange(1, V + 1).double())
    monkeypatch.setattr(type(head), "SCRATCH_ELEMENTS", 61)
    hidden, _ = inputs(n=13)
    expected = head.log_probs(hidden).detach()
    with torch.no_grad():
        torch.testing.assert_close(head.log_probs(hidden), expected)


# ---------------------------------------------------------------------------- decode: one token, no autograd

@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(D,), (1, D), (1, 1, D)])
def test_log_probs_of_one_token_without_autograd_are_normalised(spec, shape):
    head = build(spec)
    hidden, _ = inputs(n=1)
    hidden = hidden.reshape(shape)
    expected = head.log_probs(hidden.reshape(1, D)).detach().reshape(*shape[:-1], V)
    with torch.no_grad():
        lp = head.log_probs(hidden)
    assert lp.shape == (*shape[:-1], V)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(shape[:-1], dtype=torch.float64))
    torch.testing.assert_close(lp, expected)
    with torch.inference_mode():
        torch.testing.assert_close(head.log_probs(hidden), expected)


# ---------------------------------------------------------------------------- VQ label smoothing with a bias

@pytest.mark.parametrize("spec", ["vq:K=10,bias=1", "vq:K=10,bias=1,path=scatter", "vq:K=10,bias=1,mapping=random"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_vq_label_smoothing_with_a_bias_matches_its_log_probs(spec, reduction, eps):
    head = build(spec)
    with torch.no_grad():
        head.bias.copy_(torch.linspace(-3, 2, V, dtype=torch.float64) ** 2)  # far from zero, uneven by code
    hidden, target = inputs()
    lp = head.log_probs(hidden)
    per_token = -(1 - eps) * lp.gather(1, target[:, None]).squeeze(1) - eps * lp.mean(dim=1)
    expected = {"mean": per_token.mean(), "sum": per_token.sum(), "none": per_token}[reduction]
    got = head.loss(hidden, target, label_smoothing=eps, reduction=reduction)
    torch.testing.assert_close(got, expected)
    assert math.isfinite(got.sum().item())
