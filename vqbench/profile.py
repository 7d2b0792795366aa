"""python -m vqbench.profile: a torch.profiler trace of one head and op, for TensorBoard.

    python -m vqbench.profile --head vq:K=1024 --vocab 50257 --d-model 1024 --op train
    tensorboard --logdir results/traces      # the PyTorch Profiler tab (torch-tb-profiler)

The trace is written with tensorboard_trace_handler into --logdir (git-ignored), under a run
named after the head, sizes and op; the top operators are printed with tabulate.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import torch
from tabulate import tabulate
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from vqbench.measuring.ops import ALL_OPS, make_op
from vqbench.measuring.provenance import use_cpu_allocator
from vqbench.measuring.measure import matmul_precision
from vqbench.heads.registry import import_modules, make_head
from vqbench.measuring.sweep import DTYPES, make_inputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m vqbench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--head", required=True, metavar="SPEC", help="head spec, e.g. vq:K=1024 or softmax:chunk=256")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that the heads it registers can be named (repeatable)")
    p.add_argument("--vocab", type=int, default=50257, metavar="V", help="vocabulary size (default 50257)")
    p.add_argument("--d-model", type=int, default=1024, metavar="D", help="hidden width (default 1024)")
    p.add_argument("--tokens", type=int, default=2048, metavar="N", help="tokens per call (default 2048)")
    p.add_argument("--op", default="train", choices=ALL_OPS, help="op to profile (default train)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--logdir", default="results/traces", help="TensorBoard log folder (default results/traces)")
    p.add_argument("--wait", type=int, default=1, help="profiler schedule: steps skipped first")
    p.add_argument("--warmup", type=int, default=1, help="profiler schedule: warm-up steps")
    p.add_argument("--active", type=int, default=3, help="profiler schedule: recorded steps")
    p.add_argument("--top", type=int, default=15, help="operators to print")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--cpu-allocator", choices=["thp", "default"], default="thp",
                   help="as in vqbench.compare: thp (default) puts large CPU tensors on transparent huge pages")
    args = p.parse_args(argv)
    try:
        import_modules(args.imports)
    except ValueError as error:
        p.error(str(error))
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda requested but torch sees no CUDA device")
    for flag in ("vocab", "d_model", "tokens", "active"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: must be >= 1")
    for flag in ("wait", "warmup"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag}: must be >= 0")
    if args.top < 1 or (args.threads is not None and args.threads < 1):
        p.error("--top, --threads: must be >= 1")
    try:  # the head is built here so that a bad spec or option is one line, before any work
        make_head(args.head, args.vocab, args.d_model, device="meta")
    except (ValueError, TypeError) as error:
        p.error(f"--head: {error}")
    if os.path.exists(args.logdir) and not os.path.isdir(args.logdir):  # before the profiling, not after
        p.error(f"--logdir: {args.logdir!r} is a file, not a folder")
    return args


def run_name(args) -> str:
    raw = f"{args.head}_V{args.vocab}_d{args.d_model}_N{args.tokens}_{args.op}_{args.device}_{args.dtype}"
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", raw)


def profile_op(args):
    """Run the op under torch.profiler's schedule; return the profiler (its trace written)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cpu_allocator(args.cpu_allocator)
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    head = make_head(args.head, args.vocab, args.d_model, device=args.device, dtype=dtype)
    hidden, target = make_inputs(args.vocab, args.d_model, args.tokens, args.device, dtype)
    fn = make_op(head, args.op, hidden, target)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    steps = args.wait + args.warmup + args.active
    with profile(activities=activities,
                 schedule=schedule(wait=args.wait, warmup=args.warmup, active=args.active, repeat=1),
                 on_trace_ready=tensorboard_trace_handler(f"{args.logdir}/{run_name(args)}"),
                 record_shapes=True, profile_memory=True, with_flops=True) as prof:
        for _ in range(steps):
            fn()
            if args.device == "cuda":
                torch.cuda.synchronize()
            prof.step()
    return prof


def top_operators(prof, top: int, device: str):
    """Rows: operator, calls, self time, total time (ms per recorded step), GFLOP, memory (MiB)."""
    averages = prof.key_averages()
    time_key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(averages, key=lambda e: getattr(e, time_key, 0), reverse=True)[:top]
    rows = []
    for e in events:
        total = e.device_time_total if device == "cuda" else e.cpu_time_total
        memory = (e.self_device_memory_usage if device == "cuda" else e.self_cpu_memory_usage) / 2**20
        rows.append([e.key, e.count, getattr(e, time_key) / 1e3, total / 1e3, (e.flops or 0) / 1e9, memory])
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        with matmul_precision(args.dtype):
            prof = profile_op(args)
    except NotImplementedError as error:
        print(f"python -m vqbench.profile: error: --op: {args.op} does not apply to {args.head}: {error}",
              file=sys.stderr)
        return 2
    except OSError as error:
        print(f"python -m vqbench.profile: error: --logdir: {error}", file=sys.stderr)
        return 2
    rows = top_operators(prof, args.top, args.device)
    headers = ["operator", "calls", "self time (ms)", "total time (ms)", "GFLOP", "self memory (MiB)"]
    print(f"{args.head} {args.op}: V={args.vocab}, d={args.d_model}, N={args.tokens}, {args.device}, "
          f"{args.dtype}, {torch.get_num_threads()} threads, {args.cpu_allocator} allocator; "
          f"{args.active} recorded steps, totals over them")
    print(tabulate(rows, headers, tablefmt="github", floatfmt=".2f"))
    print(f"trace: {args.logdir}/{run_name(args)} (tensorboard --logdir {args.logdir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
