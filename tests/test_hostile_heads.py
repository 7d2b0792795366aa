"""Hostile numbers for every head: NaN/inf parameters, finite states whose scores overflow, extreme
temperatures, mixed precision and compiled callers. Each case asserts the exact outcome: the error and the
argument it names, or the answer of a float64 head."""

import pytest
import torch

from conftest import D, V, build, inputs

# every head and tree, with and without a bias
HEADS = ["softmax", "softmax:chunk=7", "adaptive", "hierarchical", "hierarchical:tree=huffman", "lowrank",
         "vq:K=10", "vq:K=10,bias=1"]


def _poison(head, value):
    """Write value into one element of the head's largest parameter through load_state_dict (as a user
    loading a broken checkpoint does) and return that parameter's name."""
    state = head.state_dict()
    name = max(state, key=lambda k: state[k].numel() * state[k].is_floating_point())
    state[name].view(-1)[1] = value
    head.load_state_dict(state)
    return name


@pytest.mark.parametrize("spec", HEADS)
@pytest.mark.parametrize("method", ["predict", "sample"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_parameter_is_refused_by_name(spec, method, value):
    head = build(spec)
    hidden, _ = inputs()
    getattr(head, method)(hidden)  # a first call caches the parameters' check: the change must be seen
    name = _poison(head, value)
    with pytest.raises(ValueError, match=f"^{name}: holds NaN or inf"):
        getattr(head, method)(hidden)


def test_vq_with_a_nan_codebook_row_never_predicts_a_token_past_v():
    head = build("vq:K=4", vocab_size=50, d_model=8)
    state = head.state_dict()
    state["codebook"][1, 0] = float("nan")
    head.load_state_dict(state)
    with pytest.raises(ValueError, match="^codebook: holds NaN or inf"):
        head.predict(torch.randn(5, 8, dtype=torch.float64))


def test_a_parameter_changed_in_place_is_checked_again():
    head = build("softmax")
    hidden, _ = inputs()
    head.predict(hidden)
    with torch.no_grad():
        head.weight[0, 0] = float("nan")  # an optimiser step's kind of write
    with pytest.raises(ValueError, match="^weight: holds NaN"):
        head.predict(hidden)


@pytest.mark.parametrize("spec", HEADS)
@pytest.mark.parametrize("dtype, value", [(torch.float32, 3e38), (torch.float16, 6e4)])
@pytest.mark.parametrize("method", ["predict", "sample"])
def test_finite_states_whose_scores_overflow_raise_or_match_float64(spec, dtype, value, method):
    head = build(spec, dtype=dtype)
    hidden, _ = inputs(dtype=dtype)
    hidden = hidden.clone()
    hidden[3] = value
    wide = build(spec)
    expected = wide.log_probs(hidden.double())
    try:
        got = getattr(head, method)(hidden) if method == "predict" else head.sample(hidden, temperature=1e-30)
    except ValueError as error:
        assert str(error).startswith("hidden: logits overflow to inf/NaN in row 3")
        return
    # a defined answer: a most probable token of the float64 head in every row
    assert int(got.max()) < V
    best = expected.max(dim=-1).values
    assert torch.equal(expected.gather(1, got[:, None]).squeeze(1), best)


@pytest.mark.parametrize("spec", HEADS)
@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-40, 1e300, 1.7e308])
def test_extreme_temperatures_give_valid_draws(spec, temperature):
    head = build(spec)
    hidden, _ = inputs()
    draws = head.sample(hidden, generator=torch.Generator().manual_seed(0), temperature=temperature)
    assert draws.dtype == torch.int64 and int(draws.min()) >= 0 and int(draws.max()) < V
    if temperature < 1:  # the limit T -> 0: a most probable token in every row
        lp = head.log_probs(hidden)
        torch.testing.assert_close(lp.gather(1, draws[:, None]).squeeze(1), lp.max(dim=-1).values)


@pytest.mark.parametrize("spec", ["softmax", "vq:K=10,bias=1"])
def test_a_huge_temperature_draws_nearly_uniformly(spec):
    head = build(spec)
    hidden = torch.randn(1, D, dtype=torch.float64).expand(20000, D)
    draws = head.sample(hidden, generator=torch.Generator().manual_seed(0), temperature=1e300)
    counts = torch.bincount(draws, minlength=V).double()
    assert float(counts.min()) > 0.5 * 20000 / V and float(counts.max()) < 1.5 * 20000 / V


# ---------------------------------------------------------------------------- mixed precision

AUTOCAST_HEADS = HEADS + ["vq:K=64,path=scatter", "hierarchical:classes=7"]


def _autocast_case(spec, device):
    torch.manual_seed(0)
    import vqbench
    head = vqbench.make_head(spec, 5000, 64, device=device)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(256, 64, generator=g).to(device)
    target = torch.randint(0, 5000, (256,), generator=g).to(device)
    return head, hidden, target


def _check_autocast(spec, device, dtype):
    head, hidden, target = _autocast_case(spec, device)
    reference = head.loss(hidden, target)
    with torch.autocast(device, dtype=dtype):
        loss = head.loss(hidden, target)
    assert loss.dtype == torch.float32
    assert abs(loss.item() / reference.item() - 1) < 2e-3
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", AUTOCAST_HEADS)
def test_every_head_trains_under_cpu_autocast_in_float32(spec, dtype):
    _check_autocast(spec, "cpu", dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", AUTOCAST_HEADS)
def test_every_head_trains_under_cuda_autocast_in_float32(spec, dtype):
    _check_autocast(spec, "cuda", dtype)


# ---------------------------------------------------------------------------- compiled callers

def _compilable():
    try:
        torch.compile(lambda x: x + 1, backend="eager", fullgraph=True)(torch.ones(1))
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _compilable(), reason="torch.compile (dynamo) does not run here")
@pytest.mark.parametrize("spec", ["softmax", "lowrank", "vq:K=10"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compiled_loss_is_one_graph_and_matches_eager(spec, reduction):
    import torch._dynamo

    torch._dynamo.reset()
    head = build(spec)
    hidden, target = inputs()
    target = target.clone()
    target[2] = -100  # ignored, as in padded batches
    fn = torch.compile(lambda h, t: head.loss(h, t, reduction=reduction), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(hidden, target), head.loss(hidden, target, reduction=reduction))


@pytest.mark.parametrize("spec", ["softmax", "lowrank", "vq:K=10", "hierarchical"])
def test_overflow_in_float16_autocast_products_is_caught(spec):
    head = build(spec, dtype=torch.float32)
    hidden, _ = inputs(dtype=torch.float32)
    hidden = hidden.clone()
    hidden[3] = 6e4  # finite in float32, but float16 products overflow
    with torch.autocast("cpu", dtype=torch.float16):
        try:
            got = head.predict(hidden)
        except ValueError as error:
            assert str(error).startswith("hidden: logits overflow to inf/NaN in row 3")
            return
    expected = build(spec).log_probs(hidden.double())
    assert torch.equal(expected.gather(1, got[:, None]).squeeze(1), expected.max(dim=-1).values)
