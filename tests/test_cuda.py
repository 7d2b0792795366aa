"""The contract on a CUDA device, fp32 and bf16 (skipped cleanly without one)."""

import pytest
import torch

from conftest import SPECS, V, build, inputs
from vqbench.measuring.measure import peak_memory_and_flops
from vqbench.measuring.ops import make_op

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS)
def test_contract_on_cuda(spec, dtype):
    head = build(spec, torch.float32).to(device="cuda", dtype=dtype)
    hidden, target = inputs(torch.float32)
    hidden, target = hidden.to("cuda", dtype), target.to("cuda")
    log_probs = head.log_probs(hidden).float()
    assert torch.logsumexp(log_probs, 1).abs().max() < TOL[dtype] * 10
    loss = head.loss(hidden, target).float()
    assert torch.allclose(loss, -log_probs.gather(1, target[:, None]).mean(), atol=TOL[dtype] * 10)
    hidden.requires_grad_(True)
    head.loss(hidden, target).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_cuda_memory_is_measured_by_the_allocator():
    head = build("softmax", torch.float32).to("cuda")
    hidden, target = inputs(torch.float32, n=256)
    fn = make_op(head, "log_probs", hidden.to("cuda"), target.to("cuda"))
    peak, flops = peak_memory_and_flops(fn, torch.device("cuda"))
    assert peak >= 256 * V * 4 and flops == head.flops(256, "log_probs")
