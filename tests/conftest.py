import pytest
import torch

import vqbench
from vqbench.heads.registry import registered_heads

V, D, N = 97, 16, 40

# every head and option combination the suite checks: each head's SMALL_EXAMPLES, for the heads that implement
# the whole contract (a new head file is picked up with no edit here)
HEAD_CLASSES = {name: cls for name, cls in registered_heads().items() if "loss_only" not in cls.CAPABILITIES}
SPECS = [spec for cls in HEAD_CLASSES.values() for spec in cls.SMALL_EXAMPLES]


def heads_with(capability):
    """Names of the heads that declare ``capability`` (vqbench.heads.contract.CAPABILITIES)."""
    return tuple(name for name, cls in HEAD_CLASSES.items() if capability in cls.CAPABILITIES)


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
    from vqbench.measuring import sweep

    monkeypatch.setitem(sweep.CEILING_SIZES, "full", {"gemm_size": 256, "buffer_bytes": 1 << 20})
