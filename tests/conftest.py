import pytest
import torch

import vqbench

V, D, N = 97, 16, 40

# every head and option combination the suite checks
SPECS = [
    "softmax", "softmax:bias=1", "softmax:chunk=7", "softmax:chunk=7,bias=1",
    "adaptive", "adaptive:cutoffs=10/40,div_value=2",
    "hierarchical", "hierarchical:classes=5", "hierarchical:tree=huffman",
    "lowrank", "lowrank:rank=3,bias=1", "lowrank:rank=3,bias=1,chunk=7",
    "vq:K=10", "vq:K=10,path=scatter", "vq:K=10,bias=1", "vq:K=10,bias=1,path=scatter",
    "vq:K=10,mapping=random", "vq:K=10,mapping=contiguous", "vq:K=10,mapping=kmeans",
    "vq:K=10,mapping=kmeans,codebook_init=random",
]


def build(spec, dtype=torch.float64, vocab_size=V, d_model=D, **options):
    torch.manual_seed(0)
    if "kmeans" in spec and "embeddings" not in options:
        options["embeddings"] = torch.randn(vocab_size, d_model)
    return vqbench.make_head(spec, vocab_size, d_model, dtype=dtype, **options)


def inputs(dtype=torch.float64, n=N, vocab_size=V, d_model=D, seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d_model, generator=g).to(dtype)
    target = torch.randint(0, vocab_size, (n,), generator=g)
    return hidden, target


@pytest.fixture(params=SPECS)
def spec(request):
    return request.param


@pytest.fixture(autouse=True)
def small_ceilings(monkeypatch):
    """Sweeps in tests measure the machine's ceilings on small operands: the full-size measurement
    (tested in test_floors) takes seconds and a sweep repeats it for every head."""
    from vqbench import sweep

    monkeypatch.setitem(sweep.CEILING_SIZES, "full", {"gemm_size": 256, "buffer_bytes": 1 << 20})
