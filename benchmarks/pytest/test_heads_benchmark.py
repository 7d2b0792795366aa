"""pytest-benchmark: every head x op at one small size, for quick commit-to-commit comparisons.

Outside the default test run (this folder is not a package, so asv skips it too):

    pytest benchmarks/pytest --benchmark-only --benchmark-autosave
    pytest benchmarks/pytest --benchmark-only --benchmark-compare   # against the last saved run
"""

import pytest
import torch

from vqbench import make_head
from vqbench.measuring.ops import ALL_OPS, make_op
from vqbench.heads.registry import default_specs
from vqbench.measuring.sweep import make_inputs

V, D, N = 8192, 256, 256
# the specs compare measures by default (each head's COMPARED, found without a list; a head imported or
# installed as a plugin joins), with vq's K written out
SPECS = ["vq:K=1024" if spec == "vq" else spec for spec in default_specs()]


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(V, D, N, "cpu", torch.float32)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("spec", SPECS)
def test_head_op(benchmark, spec, op, inputs):
    torch.manual_seed(0)
    head = make_head(spec, V, D)
    hidden, target = inputs
    try:
        fn = make_op(head, op, hidden, target)
    except NotImplementedError as error:
        pytest.skip(str(error))
    benchmark.group = op
    benchmark.extra_info.update(spec=spec, V=V, d=D, N=N, threads=torch.get_num_threads())
    benchmark(fn)
