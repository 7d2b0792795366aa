"""The asv grid and set-up, built through vqbench's own factories.

asv runs today's benchmark files against every commit it measures, so this module leans only on the
API every commit since the suite began has (``make_head``, ``vqbench.measuring.ops.make_op``,
``vqbench.measuring.sweep.make_inputs``) and keeps its grid as its own data: a later change to the project's
default heads or memory guard must not change what an old commit's history point measures.
"""

import os

import torch

from vqbench import make_head

try:  # the layout with the measuring subpackage
    from vqbench.measuring.measure import make_inputs
    from vqbench.measuring.ops import make_op
except ImportError:  # the commits before it, which asv also measures
    from vqbench.ops import make_op
    from vqbench.sweep import make_inputs

FULL = os.environ.get("VQBENCH_FULL") == "1"

# full spec strings, as every measured commit's make_head reads them: an option is swept by listing its specs
# (written out here, not by brace sets, which older commits do not read)
BASE_HEADS = ["softmax", "softmax:chunk=256", "adaptive", "hierarchical", "hierarchical:tree=huffman", "lowrank"]
if FULL:
    HEADS = BASE_HEADS + [f"vq:K={k}{extra}" for extra in ("", ",path=scatter") for k in (256, 1024, 4096)]
    VOCAB, D_MODEL, TOKENS = [10000, 32000, 50257, 128000], [512, 1024], [64, 2048]
else:  # keeps a full (not --quick) run of one commit within about ten minutes on 2 cores
    HEADS = BASE_HEADS + ["vq:K=1024", "vq:K=1024,path=scatter"]
    VOCAB, D_MODEL, TOKENS = [8192, 50257], [512], [256]

PARAMS = [HEADS, VOCAB, D_MODEL, TOKENS]
PARAM_NAMES = ["head", "V", "d", "N"]
DECODE_BATCHES = [1, 64]   # generation: one token for each of a few sequences
# the GPU suite at one LM-sized configuration per head (each combination costs a process even when skipped)
CUDA_PARAMS = [BASE_HEADS + ["vq:K=1024", "vq:K=1024,path=scatter"], [50257], [1024], [2048]]
MEMORY_SHARE = 0.5   # of physical memory (CPU) or of the device's memory (CUDA)


def memory_budget(device):
    if device == "cuda":
        return MEMORY_SHARE * torch.cuda.get_device_properties(0).total_memory
    return MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class MissingOp(NotImplementedError):
    """An op the measured commit's vqbench does not have (asv skips the benchmark)."""


def build(spec, V, d, N, device="cpu", ops=("log_probs", "loss", "train")):
    """(head module, {op: fn}) or NotImplementedError (asv's skip) for invalid combinations."""
    if device == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device")
    footprint = 4 * (3 * N * V + 2 * V * d)   # fp32 output, its gradient and a temporary; weights and grads
    if footprint > memory_budget(device):
        raise NotImplementedError(f"about {footprint / 2**30:.1f} GiB exceeds the memory budget")
    torch.manual_seed(0)
    try:
        module = make_head(spec, V, d, device=device)
    except ValueError as error:   # an option this V or d does not allow (vq's K > V)
        raise NotImplementedError(f"{spec} at V={V}, d={d}: {error}") from None
    hidden, target = make_inputs(V, d, N, device, torch.float32)
    built = {}
    for op in ops:
        try:
            built[op] = make_op(module, op, hidden, target)
        except ValueError as error:   # an op this commit does not have
            raise MissingOp(f"{op}: not in this commit's vqbench ({error})") from None
    return module, built
