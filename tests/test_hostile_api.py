"""Hostile use of the head API: aliasing outputs, NaN rows, foreign state, degenerate counts, odd devices.
Each case asserts the exact outcome: the error and the argument it names, or the correct answer."""

import pytest
import torch

import vqbench
from conftest import D, N, SPECS, V, build, heads_with, inputs

LOGITS_SPECS = [spec for spec in SPECS if spec.split(":")[0] in heads_with("logits")]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("method", ["predict", "sample"])
def test_a_nan_or_inf_row_is_refused_not_turned_into_a_token(spec, method):
    head = build(spec)
    hidden, _ = inputs()
    hidden = hidden.clone()
    hidden[3, 0] = float("nan") if method == "predict" else float("inf")
    with pytest.raises(ValueError, match="hidden: contains NaN or infinite"):
        getattr(head, method)(hidden)


@pytest.mark.parametrize("spec", LOGITS_SPECS + ["hierarchical", "adaptive"])
@pytest.mark.parametrize("victim", ["hidden", "parameter"])
def test_out_that_aliases_an_input_is_refused(spec, victim):
    head = build(spec)
    hidden, _ = inputs(n=V)
    if victim == "hidden":
        storage = torch.zeros(V * V + V * D, dtype=torch.float64)
        hidden = storage[:V * D].view(V, D).copy_(hidden)
        out = storage[V * D - 5:V * D - 5 + V * V].view(V, V)  # overlaps hidden's last elements
        name = "hidden"
    else:
        param = max(head.parameters(), key=lambda p: p.numel())
        out = param.detach().view(-1)[:V].view(1, V)
        hidden = hidden[:1]
        name = ""
    with torch.no_grad(), pytest.raises(ValueError, match=f"out: shares memory with {name}"):
        head.log_probs(hidden, out=out)


@pytest.mark.parametrize("spec", LOGITS_SPECS)
def test_out_that_overlaps_itself_is_refused(spec):
    head = build(spec)
    hidden, _ = inputs(n=4)
    base = torch.zeros(V + 3, dtype=torch.float64)
    out = base.as_strided((4, V), (1, 1))  # rows share memory
    with torch.no_grad(), pytest.raises(ValueError, match="out: has elements that share memory"):
        head.logits(hidden, out=out)


def test_out_next_to_hidden_in_one_storage_is_fine():
    head = build("vq:K=10")
    storage = torch.zeros(N * D + N * V, dtype=torch.float64)
    hidden, _ = inputs()
    h = storage[:N * D].view(N, D).copy_(hidden)
    out = storage[N * D:].view(N, V)
    with torch.no_grad():
        head.log_probs(h, out=out)
    torch.testing.assert_close(out, head.log_probs(hidden))


@pytest.mark.parametrize("spec, buffer", [("hierarchical", "tree.class_of"),
                                          ("hierarchical:tree=huffman", "tree.path_nodes")])
def test_a_tree_refuses_state_trained_with_other_token_counts(spec, buffer):
    trained = build(spec, token_counts=torch.arange(1, V + 1).double())  # ids not in frequency order
    plain = build(spec)
    with pytest.raises(ValueError, match=f"state_dict: {buffer} differs .* other token_counts"):
        plain.load_state_dict(trained.state_dict())


@pytest.mark.parametrize("spec", ["hierarchical", "hierarchical:tree=huffman", "vq:K=10"])
def test_state_with_the_same_token_counts_loads_and_gives_the_same_answers(spec):
    counts = torch.arange(1, V + 1).double()
    trained = build(spec, token_counts=counts)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    again = build(spec, token_counts=counts)
    again.load_state_dict(trained.state_dict())
    hidden, _ = inputs()
    torch.testing.assert_close(again.log_probs(hidden), trained.log_probs(hidden))
    assert torch.equal(again.predict(hidden), trained.predict(hidden))


def test_vq_adopts_the_mapping_of_its_state():
    trained = build("vq:K=10", token_counts=torch.arange(1, V + 1).double())
    plain = build("vq:K=10")
    plain.load_state_dict(trained.state_dict())
    hidden, _ = inputs()
    torch.testing.assert_close(plain.log_probs(hidden), trained.log_probs(hidden))


@pytest.mark.parametrize("counts, match", [
    (torch.full((V,), 1e308, dtype=torch.float64), "overflows"),
    (torch.full((V,), float("nan")), "finite"),
    (-torch.ones(V), "non-negative"),
    (torch.zeros(V), "all zero"),
    (torch.ones(V + 1), r"shape \[97\]"),
])
def test_degenerate_token_counts_are_refused(counts, match):
    with pytest.raises(ValueError, match=f"token_counts: .*{match}"):
        vqbench.make_head("hierarchical", V, D, token_counts=counts)


@pytest.mark.parametrize("spec", ["softmax", "vq:K=8", "hierarchical:tree=huffman", "adaptive"])
def test_one_huge_count_still_gives_a_normalised_head(spec):
    counts = torch.ones(V, dtype=torch.float64)
    counts[5] = 1e200
    head = build(spec, token_counts=counts)
    hidden, target = inputs()
    total = head.log_probs(hidden).exp().sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total))
    assert int(head.predict(hidden).max()) < V and int(head.sample(hidden).max()) < V


@pytest.mark.parametrize("method", ["loss", "log_probs", "predict", "sample"])
def test_meta_tensors_are_refused_by_name(method):
    head = vqbench.make_head("vq:K=8", 50, 8, device="meta")
    hidden = torch.empty(4, 8, device="meta")
    args = (hidden, torch.zeros(4, dtype=torch.long, device="meta")) if method == "loss" else (hidden,)
    with pytest.raises(ValueError, match="hidden: on the meta device"):
        getattr(head, method)(*args)


@pytest.mark.parametrize("value", [1e4, -1e4])
@pytest.mark.parametrize("spec", ["softmax", "vq:K=10", "hierarchical", "hierarchical:tree=huffman", "adaptive"])
def test_extreme_but_finite_states_stay_normalised(spec, value):
    head = build(spec)
    hidden = torch.full((3, D), value, dtype=torch.float64)
    lp = head.log_probs(hidden)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    assert int(head.predict(hidden).max()) < V
