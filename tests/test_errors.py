"""Bad input: a clear ValueError or TypeError naming the argument, never a crash inside torch."""

import pytest
import torch

import vqbench
from conftest import D, N, V, build, inputs


def test_wrong_hidden_width(spec):
    head = build(spec)
    with pytest.raises(ValueError, match="hidden.*d_model"):
        head.log_probs(torch.randn(N, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden"):
        head.loss(torch.randn(N, D - 1, dtype=torch.float64), torch.zeros(N, dtype=torch.long))


def test_hidden_dtype_and_type(spec):
    head = build(spec)
    with pytest.raises(TypeError, match="hidden.*dtype"):
        head.log_probs(torch.randn(N, D, dtype=torch.float32))
    with pytest.raises(TypeError, match="hidden"):
        head.log_probs(torch.zeros(N, D, dtype=torch.long))
    with pytest.raises(TypeError, match="hidden"):
        head.predict([[0.0] * D])
    with pytest.raises(ValueError, match="hidden"):
        head.log_probs(torch.randn(0, D, dtype=torch.float64))


def test_bad_targets(spec):
    head = build(spec)
    hidden, target = inputs()
    with pytest.raises(TypeError, match="target"):
        head.loss(hidden, target.double())
    with pytest.raises(ValueError, match=r"target.*\[0, 97\)"):
        head.loss(hidden, torch.full((N,), V))
    with pytest.raises(ValueError, match="target"):
        head.loss(hidden, torch.full((N,), -1))
    with pytest.raises(ValueError, match="target.*shape"):
        head.loss(hidden, target[:-1])
    with pytest.raises(ValueError, match="target.*shape"):
        head.target_log_prob(hidden, target[None])
    with pytest.raises(TypeError, match="target"):
        head.loss(hidden, target.tolist())
    # int32 targets are accepted and mean the same
    assert torch.allclose(head.loss(hidden, target.int()), head.loss(hidden, target))


def test_flops_bad_arguments():
    head = build("softmax")
    with pytest.raises(ValueError, match="op"):
        head.flops(N, "train")
    with pytest.raises(ValueError, match="num_tokens"):
        head.flops(0, "loss")
    with pytest.raises(ValueError, match="target"):
        head.flops(N, "loss", torch.zeros(N + 1, dtype=torch.long))


@pytest.mark.parametrize("kwargs,match,error", [
    ({"K": V + 1}, "K.*vocab_size", ValueError),
    ({"K": 0}, "K", ValueError),
    ({"K": 2.5}, "K", TypeError),
    ({"K": 10, "mapping": torch.zeros(V - 1, dtype=torch.long)}, r"mapping.*\[97\]", ValueError),
    ({"K": 10, "mapping": torch.full((V,), 10)}, r"mapping.*\[0, 10\)", ValueError),
    ({"K": 10, "mapping": torch.full((V,), -1)}, "mapping", ValueError),
    ({"K": 10, "mapping": torch.zeros(V)}, "mapping.*integer", TypeError),
    ({"K": 10, "mapping": "spectral"}, "mapping.*spectral", ValueError),
    ({"K": 10, "mapping": "kmeans"}, "embeddings", ValueError),
    ({"K": 10, "mapping": "kmeans", "embeddings": torch.randn(V - 1, D)}, "embeddings", ValueError),
    ({"K": 10, "path": "fast"}, "path", ValueError),
    ({"K": 10, "codebook_init": "centroids"}, "codebook_init", ValueError),
])
def test_vq_bad_options(kwargs, match, error):
    with pytest.raises(error, match=match):
        vqbench.make_head("vq", V, D, **kwargs)


@pytest.mark.parametrize("spec,kwargs,match,error", [
    ("softmax", {"chunk": 0}, "chunk", ValueError),
    ("lowrank", {"rank": D + 1}, "rank", ValueError),
    ("lowrank", {"chunk": 0}, "chunk", ValueError),
    ("adaptive", {"cutoffs": (40, 10)}, "cutoffs", ValueError),
    ("adaptive", {"cutoffs": (10, V)}, "cutoffs", ValueError),
    ("adaptive", {"cutoffs": ()}, "cutoffs", TypeError),
    ("adaptive", {"div_value": 1.0}, "div_value", ValueError),
    ("adaptive", {"cutoffs": (10, 20, 30, 40), "div_value": 4.0}, "div_value", ValueError),
    ("hierarchical", {"tree": "binary"}, "tree", ValueError),
    ("hierarchical", {"classes": V + 1}, "classes", ValueError),
    ("hierarchical", {"tree": "huffman", "classes": 4}, "classes", ValueError),
    ("softmax", {"token_counts": torch.ones(V + 1)}, "token_counts", ValueError),
    ("softmax", {"token_counts": -torch.ones(V)}, "token_counts", ValueError),
])
def test_baseline_bad_options(spec, kwargs, match, error):
    with pytest.raises(error, match=match):
        vqbench.make_head(spec, V, D, **kwargs)


@pytest.mark.parametrize("vocab_size,d_model,match,error", [
    (1, D, "vocab_size", ValueError), (V, 0, "d_model", ValueError), (V, 16.0, "d_model", TypeError),
])
def test_bad_sizes(vocab_size, d_model, match, error):
    with pytest.raises(error, match=match):
        vqbench.make_head("softmax", vocab_size, d_model)


def test_bad_out(spec):
    head = build(spec)
    hidden, _ = inputs()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"out.*shape.*\[40, 97\]"):
            head.log_probs(hidden, out=torch.empty(N, V + 1, dtype=torch.float64))
        with pytest.raises(TypeError, match="out.*dtype"):
            head.log_probs(hidden, out=torch.empty(N, V, dtype=torch.float32))
        with pytest.raises(TypeError, match="out"):
            head.log_probs(hidden, out=[[0.0] * V] * N)
        with pytest.raises(ValueError, match="out.*share memory"):
            head.log_probs(hidden, out=torch.empty(N, 1, dtype=torch.float64).expand(N, V))
        with pytest.raises(ValueError, match="out.*strides"):
            head.log_probs(hidden.reshape(4, 10, D), out=torch.empty(10, 4, V, dtype=torch.float64).transpose(0, 1))
    with pytest.raises(RuntimeError, match="out.*no_grad"):
        head.log_probs(hidden, out=head.new_output(N))
    with pytest.raises(TypeError, match="lead"):
        head.new_output(2.0)
