"""asv benchmarks: every head's time, memory, FLOPs and parameters over head spec x V x d x N.

Invalid, over-memory or no-CUDA combinations are skipped by raising NotImplementedError in
setup. VQBENCH_FULL=1 selects the full grid.
"""

import torch

from .common import CUDA_PARAMS, D_MODEL, DECODE_BATCHES, HEADS, PARAM_NAMES, PARAMS, VOCAB, MissingOp, build


class Timing:
    """asv's sampling for every suite: at least 3 timed samples after a warm-up, in one process, so a
    full (not --quick) run of one commit takes minutes on 2 cores."""
    processes = 1
    repeat = (3, 10, 4.0)   # min samples, max samples, seconds
    warmup_time = 0.5


class HeadsCPU(Timing):
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600
    version = "2"   # bump when what these benchmarks measure changes (2: K left the parameters)

    def setup(self, head, V, d, N):
        torch.set_num_threads(torch.get_num_threads())
        self.head, self.ops = build(head, V, d, N)

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

    def track_flops_loss(self, head, V, d, N):
        return self.head.flops(N, "loss")
    track_flops_loss.unit = "FLOP"

    def track_flops_log_probs(self, head, V, d, N):
        return self.head.flops(N, "log_probs")
    track_flops_log_probs.unit = "FLOP"


class IntoCPU(Timing):
    """log_probs written into a reused output buffer (``out=``; commits before it skip)."""
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600
    version = "2"

    def setup(self, head, V, d, N):
        self.head, self.ops = build(head, V, d, N, ops=("log_probs_into",))

    def time_log_probs_into(self, *args):
        self.ops["log_probs_into"]()


class DecodeCPU(Timing):
    """A generation step the dense way: V log-probabilities and one multinomial draw for each of N
    sequences (the op ``decode`` before head.sample existed, ``decode_dense`` since)."""
    params = [HEADS, VOCAB, D_MODEL, DECODE_BATCHES]
    param_names = PARAM_NAMES
    timeout = 300
    version = "2"

    def setup(self, head, V, d, N):
        try:
            self.head, ops = build(head, V, d, N, ops=("decode_dense",))
        except MissingOp:   # before head.sample, the op decode was the dense way
            self.head, ops = build(head, V, d, N, ops=("decode",))
        self.dense = next(iter(ops.values()))

    def time_decode(self, *args):
        self.dense()


class SampleCPU(Timing):
    """A generation step by ``head.sample``: one token for each of N sequences without V log-probabilities
    where the head allows (commits before head.sample skip)."""
    params = [HEADS, VOCAB, D_MODEL, DECODE_BATCHES]
    param_names = PARAM_NAMES
    timeout = 300
    version = "2"

    def setup(self, head, V, d, N):
        self.head, self.ops = build(head, V, d, N, ops=("decode",))
        if not hasattr(self.head, "sample"):
            raise NotImplementedError("head.sample: not in this commit's vqbench")

    def time_sample(self, *args):
        self.ops["decode"]()


class HeadsCUDA(Timing):
    params = CUDA_PARAMS
    param_names = PARAM_NAMES
    timeout = 600
    version = "2"

    def setup(self, head, V, d, N):
        self.head, self.ops = build(head, V, d, N, device="cuda")
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



