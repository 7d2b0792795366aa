"""head.sample draws exactly from the head's distribution: for a fixed hidden state the empirical
distribution of many draws is within a total-variation bound of exp(log_probs) (or of
softmax(log_probs / T)), and far from another state's distribution (the check has power)."""

import pytest
import torch

from conftest import D, V, build

DRAWS = 40_000
BOUND = 0.045  # an exact sampler of V=97 outcomes stays near 0.02 at this many draws


def empirical(head, hidden, temperature=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = head.sample(hidden.expand(DRAWS, D), generator=g, temperature=temperature)
    assert tokens.dtype == torch.int64 and tokens.shape == (DRAWS,)
    return torch.bincount(tokens, minlength=V).double() / DRAWS


def target_distribution(head, hidden, temperature=1.0):
    return torch.softmax(head.log_probs(hidden)[0].double() / temperature, dim=0)


def states():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 1, D, generator=g, dtype=torch.float64) * 1.5


def tv(p, q):
    return 0.5 * float((p - q).abs().sum().detach())


def test_samples_follow_log_probs(spec):
    head = build(spec)
    with torch.no_grad():
        for p in head.parameters():  # sharper than the init, so that structure matters
            p.mul_(3)
    here, there = states()
    freq = empirical(head, here)
    assert tv(freq, target_distribution(head, here)) < BOUND
    assert tv(freq, target_distribution(head, there)) > 2 * BOUND


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_is_exact(spec, temperature):
    head = build(spec)
    here, _ = states()
    freq = empirical(head, here, temperature)
    assert tv(freq, target_distribution(head, here, temperature)) < BOUND


def test_vq_with_bias_samples_inside_codes_by_the_bias():
    head = build("vq:K=10,bias=1")
    with torch.no_grad():
        head.bias.copy_(torch.linspace(-3, 3, V, dtype=torch.float64))
    here, _ = states()
    for temperature in (1.0, 0.7):
        assert tv(empirical(head, here, temperature), target_distribution(head, here, temperature)) < BOUND


def test_sample_shapes_seeds_and_errors():
    head = build("vq:K=10")
    hidden = torch.randn(2, 3, D, dtype=torch.float64)
    a = head.sample(hidden, generator=torch.Generator().manual_seed(1))
    b = head.sample(hidden, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3) and torch.equal(a, b)
    for bad in (0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="temperature"):
            head.sample(hidden, temperature=bad)
    with pytest.raises(TypeError, match="generator"):
        head.sample(hidden, generator=0)


@pytest.mark.parametrize("options", ["K=10", "K=10,bias=1"])
def test_vq_sample_sorts_and_scans_v_once_until_the_mapping_or_bias_changes(options, monkeypatch):
    head = build(f"vq:{options}")
    with torch.no_grad():
        if head.bias is not None:
            head.bias.copy_(torch.linspace(-3, 3, V, dtype=torch.float64))
    hidden = torch.randn(5, D, dtype=torch.float64)

    def fresh(temperature=1.0):  # what sample drew before its tables were cached: everything rebuilt
        head._groups = head._bias_draw = None
        return head.sample(hidden, generator=torch.Generator().manual_seed(7), temperature=temperature)

    v_wide = []
    argsort, cumsum = torch.argsort, torch.cumsum
    monkeypatch.setattr(torch, "argsort", lambda x, *a, **k: (v_wide.append("sort"), argsort(x, *a, **k))[1])
    monkeypatch.setattr(torch, "cumsum", lambda x, *a, **k: (v_wide.append("scan") if x.numel() == V else None,
                                                            cumsum(x, *a, **k))[1])
    expected = fresh()
    v_wide.clear()
    for _ in range(3):
        assert torch.equal(head.sample(hidden, generator=torch.Generator().manual_seed(7)), expected)
    assert v_wide == []  # per call: K- and N-wide work only
    for change in ("mapping", "bias", "temperature"):
        if change == "mapping":
            head.set_mapping(torch.arange(V) % head.K)
        elif change == "bias" and head.bias is not None:
            with torch.no_grad():
                head.bias.mul_(-1)
        temperature = 0.5 if change == "temperature" else 1.0
        drawn = head.sample(hidden, generator=torch.Generator().manual_seed(7), temperature=temperature)
        assert torch.equal(drawn, fresh(temperature)), change


class HostWaits(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that make the host wait for the device on CUDA: a value read back (item, tolist, bool) or
    an output whose size depends on the data (nonzero, unique, boolean indexing)."""
    WAITING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
               "aten::masked_select", "aten::unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        bool_index = name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))
        self.count += name in self.WAITING or bool_index
        return func(*args, **kwargs)


@pytest.mark.parametrize("spec", ["hierarchical", "hierarchical:tree=huffman"])
def test_tree_sample_waits_for_the_device_a_fixed_number_of_times(spec):
    """Once per call at most besides the finiteness check, whatever the classes drawn or the paths' depths."""
    from vqbench.heads.registry import make_head
    head = make_head(spec, 500, D, dtype=torch.float64)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(0.01)  # near-uniform draws: many classes, deep and shallow paths
    hidden = torch.randn(64, D, dtype=torch.float64)
    expected = head.sample(hidden, generator=torch.Generator().manual_seed(2))
    waits = HostWaits()
    with waits:
        drawn = head.sample(hidden, generator=torch.Generator().manual_seed(2))
    assert torch.equal(drawn, expected) and ((drawn >= 0) & (drawn < 500)).all()
    assert waits.count <= 2, waits.count


def test_class_tree_draws_what_the_per_class_loop_drew():
    """Grouping by one sort consumes the generator as the former per-class loop did: the same tokens."""
    from vqbench.heads.contract import sample_rows
    from vqbench.heads.registry import make_head
    head = make_head("hierarchical", 500, D, dtype=torch.float64)
    tree, hidden = head.tree, torch.randn(64, D, dtype=torch.float64) * 0.1
    g = torch.Generator().manual_seed(4)
    cls = sample_rows(hidden @ tree.class_weight.T, g)
    expected = torch.empty_like(cls)
    for c in torch.unique(cls).tolist():
        picked = (cls == c).nonzero().squeeze(1)
        lo, hi = tree.class_bounds[c]
        rows = torch.arange(lo, hi) if tree.ids_in_frequency_order else tree.order[lo:hi]
        expected[picked] = rows[sample_rows(hidden[picked] @ tree.word_weight[rows].T, g)]
    assert torch.equal(head.sample(hidden, generator=torch.Generator().manual_seed(4)), expected)
