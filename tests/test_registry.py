import pytest
import torch

import vqbench
import inspect
import os
import re

from vqbench import HEADS, OutputHead, make_head, parse_spec, register_head
from vqbench.heads.contract import CAPABILITIES
from vqbench.heads.registry import canonical_spec, default_specs, expand_spec, readme_table, registered_heads
from conftest import D, SPECS, V

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_five_heads_and_the_peers_are_found_without_a_list():
    assert {"adaptive", "hierarchical", "lowrank", "peer", "softmax", "vq"} <= set(HEADS)
    assert list(registered_heads())[0] == "softmax"  # the baseline leads tables and listings
    for name, cls in HEADS.items():
        assert issubclass(cls, OutputHead) and cls.name == name
        assert "Parameters (closed form)" in cls.__doc__ and "Shapes" in cls.__doc__


def test_parse_spec():
    assert parse_spec("vq") == ("vq", {})
    assert parse_spec(" vq:K=1024, mapping=frequency ") == ("vq", {"K": "1024", "mapping": "frequency"})


@pytest.mark.parametrize("bad", ["", ":K=1", "vq:", "vq:K", "vq:K=", "vq:=3", "vq:K=1,,", "vq:K=1,K=2"])
def test_malformed_spec(bad):
    with pytest.raises(ValueError, match="spec"):
        make_head(bad, 97, 16)


def test_spec_and_keywords_agree():
    torch.manual_seed(0)
    a = make_head("vq", 97, 16, K=10, mapping="contiguous")
    torch.manual_seed(0)
    b = make_head("vq:K=10,mapping=contiguous", 97, 16)
    assert torch.equal(a.mapping, b.mapping) and torch.equal(a.codebook, b.codebook)
    assert a.spec == b.spec == "vq:K=10,mapping=contiguous"
    assert make_head("adaptive:cutoffs=10/40,div_value=2", 97, 16).cutoffs == (10, 40)
    assert make_head("softmax:bias=true", 97, 16).bias is not None


@pytest.mark.parametrize("spec,kwargs,match,error", [
    ("nope", {}, "unknown head 'nope'.*softmax", ValueError),
    ("vq:colour=red", {}, "colour", ValueError),
    ("vq", {"colour": "red"}, "colour", ValueError),
    ("vq:K=abc", {}, "K", ValueError),
    ("softmax:bias=maybe", {}, "bias", ValueError),
    ("vq:K=10", {"K": 10}, "K", ValueError),
    (42, {}, "spec", TypeError),
])
def test_bad_names_and_options(spec, kwargs, match, error):
    with pytest.raises(error, match=match):
        make_head(spec, 97, 16, **kwargs)


def test_a_sixth_head_is_one_class_and_a_decorator():
    @register_head("uniform_test_head")
    class Uniform(OutputHead):
        """Shapes: [N, d] -> [N, V]. Parameters (closed form): d."""

        def __init__(self, vocab_size, d_model, *, token_counts=None):
            super().__init__(vocab_size, d_model, token_counts)
            self.scale = torch.nn.Parameter(torch.zeros(d_model))

        def closed_form_num_parameters(self):
            return self.d_model

        def _log_probs(self, hidden):
            scores = (hidden @ self.scale)[:, None].expand(-1, self.vocab_size)
            return torch.log_softmax(scores, dim=-1)

        def _target_log_prob(self, hidden, target):
            return self._log_probs(hidden)[:, 0]

        def _matmul_flops(self, num_tokens, op, target):
            return 2 * num_tokens * self.d_model

    try:
        head = make_head("uniform_test_head", 5, 3)
        log_probs = head.log_probs(torch.randn(2, 3))
        assert log_probs.shape == (2, 5)
        assert torch.allclose(log_probs.exp().sum(1), torch.ones(2))
        assert "uniform_test_head" in HEADS
        assert head.num_parameters() == 3
    finally:
        del HEADS["uniform_test_head"]


def test_version():
    assert vqbench.__version__


def test_spec_round_trips(spec):
    from conftest import build
    head = build(spec)
    options = {"embeddings": torch.randn(V, D)} if "kmeans" in spec else {}
    again = make_head(head.spec, V, D, dtype=torch.float64, **options)
    assert again.spec == head.spec
    assert [(n, tuple(p.shape)) for n, p in again.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in head.named_parameters()]
    for (name, a), (_, b) in zip(again.named_buffers(), head.named_buffers()):
        if "kmeans" not in spec:
            assert torch.equal(a, b), name


def test_spec_of_a_directly_built_head_names_its_options():
    from vqbench.heads.vq import VQLogits
    assert VQLogits(97, 16, K=10).spec == "vq:K=10"
    assert VQLogits(97, 16, K=10, mapping=torch.arange(97) % 10).spec == "vq:K=10,mapping=custom"
    assert make_head("vq:mapping=frequency,K=10,bias=0", 97, 16).spec == "vq:K=10"


@pytest.mark.parametrize("name", list(registered_heads()))
def test_options_are_declared_once_and_agree_with_the_constructor(name):
    """OPTIONS names every keyword the constructor takes (besides token_counts), with the same default."""
    cls = registered_heads()[name]
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
              if p.kind == p.KEYWORD_ONLY and k != "token_counts"}
    assert {o.name: o.default for o in cls.OPTIONS} == params
    assert set(cls.CAPABILITIES) <= set(CAPABILITIES)
    with open(os.path.join(ROOT, "vqbench", "references.bib")) as f:
        keys = set(re.findall(r"@\w+\{([^,]+),", f.read()))
    assert set(cls.CITATIONS) <= keys
    assert cls.TITLE and cls.SUMMARY and cls.EXAMPLES
    for spec in cls.EXAMPLES + cls.SMALL_EXAMPLES:
        for one in expand_spec(spec):
            assert parse_spec(one)[0] == name


def test_readme_head_table_is_the_generated_one():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert readme_table() in readme, "README's head table: paste vqbench.heads.registry.readme_table() into it"


def test_reset_parameters_is_where_weights_start(spec):
    """Constructing a head and resetting it draw the same weights from the same seed."""
    extra = {"embeddings": torch.randn(V, D)} if "kmeans" in spec else {}
    torch.manual_seed(3)
    head = make_head(spec, V, D, **extra)
    built = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        for p in head.parameters():
            p.fill_(7.0)
    torch.manual_seed(3)
    head.reset_parameters()
    for key, value in head.state_dict().items():
        assert torch.equal(value, built[key]), key


@pytest.mark.parametrize("spec,V_,d,canonical", [
    ("softmax:bias=0", 500, 64, "softmax"), ("vq", 50257, 512, "vq:K=1024"), ("vq", 500, 64, "vq:K=500"),
    ("lowrank:rank=16", 500, 64, "lowrank"), ("lowrank:rank=16", 500, 128, "lowrank:rank=16"),
    ("hierarchical:classes=22", 500, 64, "hierarchical"), ("hierarchical:tree=huffman", 500, 64,
                                                           "hierarchical:tree=huffman"),
    ("adaptive:div_value=4.0", 500, 64, "adaptive"), ("adaptive:div_value=2", 500, 64, "adaptive:div_value=2"),
    ("vq:bias=0,K=8,path=collapsed", 500, 64, "vq:K=8"),
])
def test_canonical_spec_is_what_the_head_reports(spec, V_, d, canonical):
    assert canonical_spec(spec, V_, d) == canonical == make_head(spec, V_, d).spec


def test_brace_sets_sweep_any_option():
    assert expand_spec("vq:K={256,1024},bias={0,1}") == ["vq:K=256,bias=0", "vq:K=256,bias=1", "vq:K=1024,bias=0",
                                                         "vq:K=1024,bias=1"]
    assert expand_spec("lowrank:rank={ 8, 16 }") == ["lowrank:rank=8", "lowrank:rank=16"]
    assert expand_spec("softmax") == ["softmax"]
    for bad in ("vq:K={256,}", "vq:K={256", "vq:K=256}", "vq:K={{1}}"):
        with pytest.raises(ValueError, match="spec"):
            expand_spec(bad)
    with pytest.raises(ValueError, match="braces"):
        make_head("vq:K={4,8}", 97, 16)


def test_default_specs_come_from_each_heads_metadata():
    assert default_specs() == ("softmax", "softmax:chunk=256", "adaptive", "hierarchical",
                               "hierarchical:tree=huffman", "lowrank", "vq")


def test_the_suite_runs_every_heads_small_examples():
    for name, cls in registered_heads().items():
        if "loss_only" not in cls.CAPABILITIES:
            assert cls.SMALL_EXAMPLES and set(cls.SMALL_EXAMPLES) <= set(SPECS), name
