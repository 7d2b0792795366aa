import pytest
import torch

import vqbench
from vqbench import HEADS, OutputHead, make_head, parse_spec, register_head


def test_five_heads_and_the_peers_registered():
    assert sorted(HEADS) == ["adaptive", "hierarchical", "lowrank", "peer", "softmax", "vq"]
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
        OPTION_TYPES = {}

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
    from conftest import D, V, build
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
    from vqbench.vq import VQLogits
    assert VQLogits(97, 16, K=10).spec == "vq:K=10"
    assert VQLogits(97, 16, K=10, mapping=torch.arange(97) % 10).spec == "vq:K=10,mapping=custom"
    assert make_head("vq:mapping=frequency,K=10,bias=0", 97, 16).spec == "vq:K=10"
