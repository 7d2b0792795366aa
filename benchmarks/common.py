"""The asv grid and set-up, built through vqbench's own factories."""

import os

import torch

from vqbench import make_head
from vqbench.ops import make_op
from vqbench.registry import DEFAULT_HEADS, expand_codebook
from vqbench.sweep import footprint_bytes, make_inputs, memory_budget

FULL = os.environ.get("VQBENCH_FULL") == "1"

HEADS = [*DEFAULT_HEADS, "vq:path=scatter"]
if FULL:
    VOCAB, D_MODEL, CODEBOOK, TOKENS = [10000, 32000, 50257, 128000], [512, 1024], [256, 1024, 4096], [64, 2048]
else:  # keeps `asv run --quick` within minutes on 2 cores
    VOCAB, D_MODEL, CODEBOOK, TOKENS = [8192, 50257], [512], [1024], [256]

PARAMS = [HEADS, VOCAB, D_MODEL, CODEBOOK, TOKENS]
PARAM_NAMES = ["head", "V", "d", "K", "N"]
DECODE_BATCHES = [1, 64]   # generation: one token for each of a few sequences
# the GPU suite at one LM-sized configuration per head (each combination costs a process even when skipped)
CUDA_PARAMS = [HEADS, [50257], [1024], [1024], [2048]]


def full_spec(head, K):
    """vq specs take K from the K parameter; other heads run at the first K only."""
    if not head.startswith("vq") and K != CODEBOOK[0]:
        raise NotImplementedError("K applies to vq only")
    return expand_codebook(head, K)


def build(head, V, d, K, N, device="cpu", ops=("log_probs", "loss", "train")):
    """(head module, {op: fn}) or NotImplementedError (asv's skip) for invalid combinations."""
    if device == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device")
    spec = full_spec(head, K)
    if spec.startswith("vq") and K > V:
        raise NotImplementedError(f"K={K} > V={V}")
    footprint = max(footprint_bytes(N * V, V * d + V, op, 4) for op in ops)  # a bound for every head
    if footprint > memory_budget([device]):
        raise NotImplementedError(f"about {footprint / 2**30:.1f} GiB exceeds the memory budget")
    torch.manual_seed(0)
    module = make_head(spec, V, d, device=device)
    hidden, target = make_inputs(V, d, N, device, torch.float32)
    return module, {op: make_op(module, op, hidden, target) for op in ops}
