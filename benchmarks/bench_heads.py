"""asv benchmarks: every head's time, memory, FLOPs and parameters over head x V x d x K x N.

Invalid, over-memory or no-CUDA combinations are skipped by raising NotImplementedError in
setup. VQBENCH_FULL=1 selects the full grid.
"""

import torch

from .common import CODEBOOK, CUDA_PARAMS, D_MODEL, DECODE_BATCHES, HEADS, PARAM_NAMES, PARAMS, VOCAB, build


class HeadsCPU:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600
    version = "1"   # bump when what these benchmarks measure changes

    def setup(self, head, V, d, K, N):
        torch.set_num_threads(torch.get_num_threads())
        self.head, self.ops = build(head, V, d, K, N)

    def time_log_probs(self, *args):
        self.ops["log_probs"]()

    def time_loss(self, *args):
        self.ops["loss"]()

    def time_train_step(self, *args):
        self.ops["train"]()

    def peakmem_log_probs(self, *args):
        self.ops["log_probs"]()

    def peakmem_train_step(self, *args):
        self.ops["train"]()

    def track_params(self, *args):
        return self.head.num_parameters()
    track_params.unit = "parameters"

    def track_flops_loss(self, head, V, d, K, N):
        return self.head.flops(N, "loss")
    track_flops_loss.unit = "FLOP"

    def track_flops_log_probs(self, head, V, d, K, N):
        return self.head.flops(N, "log_probs")
    track_flops_log_probs.unit = "FLOP"


class DecodeCPU:
    """A generation step: log-probabilities and one sample for each of N sequences."""
    params = [HEADS, VOCAB, D_MODEL, CODEBOOK, DECODE_BATCHES]
    param_names = PARAM_NAMES
    timeout = 300
    version = "1"

    def setup(self, head, V, d, K, N):
        self.head, self.ops = build(head, V, d, K, N, ops=("decode",))

    def time_decode(self, *args):
        self.ops["decode"]()


class HeadsCUDA:
    params = CUDA_PARAMS
    param_names = PARAM_NAMES
    timeout = 600
    version = "1"

    def setup(self, head, V, d, K, N):
        self.head, self.ops = build(head, V, d, K, N, device="cuda")
        for fn in self.ops.values():   # warm up kernels and the caching allocator
            fn()
        torch.cuda.synchronize()

    def _timed(self, op):
        self.ops[op]()
        torch.cuda.synchronize()

    def time_loss(self, *args):
        self._timed("loss")

    def time_train_step(self, *args):
        self._timed("train")

    def time_log_probs(self, *args):
        self._timed("log_probs")

    def track_cuda_peak_mib(self, *args):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        self.ops["train"]()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    track_cuda_peak_mib.unit = "MiB"



