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


def dense(grad):
    """A gradient as a dense tensor (sparse_grad options return sparse ones); None stays None."""
    return grad.to_dense() if grad is not None and grad.is_sparse else grad


def inputs(dtype=torch.float64, n=N, vocab_size=V, d_model=D, seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d_model, generator=g).to(dtype)
    target = torch.randint(0, vocab_size, (n,), generator=g)
    return hidden, target


@pytest.fixture(params=SPECS)
def spec(request):
    return request.param


@pytest.fixture(autouse=True, scope="session")
def corpus_cache(tmp_path_factory):
    """Tokenised corpora are kept in one folder of this test session, never in the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VQBENCH_CACHE", str(tmp_path_factory.mktemp("corpus-cache")))
        yield


@pytest.fixture(autouse=True)
def small_ceilings(monkeypatch):
    """Sweeps in tests measure the machine's ceilings on small operands: the full-size measurement
    (tested in test_floors) takes seconds and a sweep repeats it for every head."""
    from vqbench.measuring import sweep

    monkeypatch.setitem(sweep.CEILING_SIZES, "full", {"gemm_size": 256, "buffer_bytes": 1 << 20})


# ---------------------------------------------------------------- shared by the hostile-input tests

#: a tiny compare run: one head, one op, small ceilings
TINY = ["--heads", "vq:K=8", "--vocab", "50", "--d-model", "8", "--tokens", "4", "--ops", "loss",
        "--threads", "1", "--no-progress", "--ceilings", "small", "--min-run-time", "0.002"]


def one_line_error(capsys, *names):
    """The one line a CLI printed last on stderr, checked to hold every name and no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert "Traceback" not in "\n".join(err)
    for name in names:
        assert name in err[-1], err[-1]
    return err[-1]


def run_main(main, argv):
    """A CLI's exit code, argparse's p.error included; a Ctrl-C that escapes as an exception fails the test."""
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's p.error
        return stop.code
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a traceback")


def largest_saved_for_backward(step) -> int:
    """Elements of the largest tensor autograd saves for backward while step() runs (0 when none is saved)."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return max(saved, default=0)

