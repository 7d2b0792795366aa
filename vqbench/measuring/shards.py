"""Sweeps split into shards and quality plans run as jobs, through submitit (SLURM, or its local executor).

    python -m vqbench.compare ... --shards 4 --executor slurm --partition gpu --gpus-per-task 1
    python -m vqbench.compare --from results/a.csv results/b.csv      # several results files as one
    python -m vqbench.quality run --plan configs/quality.json --executor slurm --partition gpu

A sharded sweep splits its grid's head configurations (device, dtype, V, d, spec) into N shards of about
equal expected cost (analytic FLOPs and bytes per unit at nominal rates, plus the fixed timing budget per
unit), writes the split to OUT/NAME.shards.json and measures shard i into OUT/NAME-shard{i}-of-{N}.csv,
each a results file like any other (provenance in every row, locked, resumable with --resume). Every
shard job runs ``python -m vqbench.compare <the same grid> --shards N --shard i --resume``, so a requeued
or re-submitted shard continues where it stopped. On one machine the local executor never lets shards
share cores: one at a time, or (with --threads) pinned to disjoint sets of that many cores; with CUDA,
one shard per GPU (CUDA_VISIBLE_DEVICES). submitit is imported only here, when a job is submitted.
"""

from __future__ import annotations

import argparse
import json
import importlib
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from vqbench.results import DECODE_OPS, PARAMS_OP, V_WIDE_OPS, read_rows, unit_key

# nominal rates for the expected cost of a unit: only the ratio of a call's time to the fixed timing budget
# matters for balancing, so these need to be right within a few times, not exact
NOMINAL = {"cpu": (1e11, 1e10), "cuda": (3e14, 2e12)}  # (FLOP/s, bytes/s)
UNIT_OVERHEAD_S = 0.05    # building inputs, the peak-memory call's bookkeeping, writing rows
CONFIG_OVERHEAD_S = 1.0   # building the head and measuring the ceilings before and after it
MIX_COLUMNS = ("cpu_model", "device_name", "torch_version", "vqbench_version")
GRID_FIELDS = ("heads", "vocab", "d_model", "tokens", "ops", "device", "dtype", "min_run_time",
               "seed", "ceilings", "cpu_allocator", "memory_budget_gib", "time_budget_s")


# --------------------------------------------------------------------------- flags

def add_executor_flags(p: argparse.ArgumentParser, default_executor: Optional[str], exclusive: bool) -> None:
    """The job flags shared by compare and quality (a sweep's timings need a node each, a training run not)."""
    p.add_argument("--executor", choices=["local", "slurm"], default=default_executor,
                   help="submitit executor for the jobs: local (this machine) or slurm")
    p.add_argument("--jobs-dir", metavar="DIR", default=None,
                   help="submitit's folder for job files and logs (default: beside the results)")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time-min", type=int, default=240, help="wall-clock limit of a job in minutes (default 240)")
    p.add_argument("--gpus-per-task", type=int, default=None,
                   help="GPUs per job (default: 1 for CUDA sweeps, else 0)")
    p.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=exclusive,
                   help=f"SLURM: a node to each job (default: {'yes' if exclusive else 'no'})")
    p.add_argument("--no-wait", action="store_true", help="submit, print the job ids and return")


def add_compare_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="split the grid into N shards of about equal expected cost, one results file each")
    p.add_argument("--shard", type=int, default=None, metavar="I",
                   help="measure only shard I (0-based) of --shards N here, without submitting (what each job runs)")
    add_executor_flags(p, "local", exclusive=True)
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when the machine was busy while measuring (others on the run's cores, or "
                        "ceilings that moved)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="with several --from files: render rows of different machines or versions together")


def check_executor_args(p: argparse.ArgumentParser, args, submits: bool) -> None:
    """The job flags, and submitit's presence when this command will submit jobs."""
    import importlib.util
    if submits and importlib.util.find_spec("submitit") is None:
        p.error("--executor: jobs need submitit, which is not installed (pip install -e \".[cluster]\")")
    if args.time_min < 1:
        p.error(f"--time-min: must be >= 1, got {args.time_min}")
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        p.error(f"--gpus-per-task: must be >= 0, got {args.gpus_per_task}")
    if args.executor != "slurm" and args.partition:
        p.error("--partition: only with --executor slurm")


def check_compare_args(p: argparse.ArgumentParser, args) -> None:
    """Each sharding flag checked before any work (errors name the flag)."""
    check_executor_args(p, args, submits=bool(args.shards) and args.shard is None and not args.from_file)
    if args.shards is not None and args.shards < 1:
        p.error(f"--shards: must be >= 1, got {args.shards}")
    if args.shard is not None and (args.shards is None or not 0 <= args.shard < args.shards):
        p.error(f"--shard: needs --shards N and 0 <= I < N, got {args.shard}")
    if args.shards is not None and args.from_file:
        p.error("--shards: measures; it cannot be combined with --from")
    if args.no_wait and args.shards is None:
        p.error("--no-wait: only with --shards")
    if args.allow_mixed and not (args.from_file or args.shards):
        p.error("--allow-mixed: only with --from or --shards (shards measured on different nodes)")


# --------------------------------------------------------------------------- splitting a grid

def grid_configs(grid) -> List[tuple]:
    """The grid's head configurations (device, dtype, V, d, canonical spec) in the sweep's order."""
    return list(grid.configs())


def call_seconds(head, op: str, n: int, device: str, element_size: int) -> float:
    """A nominal single call of ``op``: the larger of its analytic FLOPs and the bytes it must move
    (parameters, hidden states, the N x V output of the V-wide ops) at NOMINAL rates."""
    from vqbench.measuring.ops import analytic_flops
    try:
        flops = analytic_flops(head, "log_probs", n, None) * (3 if op == "train" else 1)
    except Exception:  # a head whose count needs real tensors: every parameter once per token
        flops = 2 * n * head.num_parameters() * (3 if op == "train" else 1)
    moved = element_size * (head.num_parameters() * (2 if op == "train" else 1) + n * head.d_model
                            + (n * head.vocab_size if op in V_WIDE_OPS else 0))
    flop_s, byte_s = NOMINAL["cuda" if device.startswith("cuda") else "cpu"]
    return max(flops / flop_s, moved / byte_s)


def config_cost(config: tuple, tokens: Sequence[int], ops: Sequence[str], min_run_time: float) -> float:
    """Expected seconds to measure one head configuration: a timed unit runs the op about seven times
    (warm-up, peak memory, five samples) or for min_run_time, whichever is longer. The head is built on
    the meta device, so no parameters are allocated."""
    import torch
    from vqbench.measuring.ops import DECODE_MAX_BATCH
    from vqbench.heads.registry import make_head
    from vqbench.measuring.sweep import DTYPES
    device, dtype, vocab, d, spec = config
    try:
        head = make_head(spec, vocab, d, device="meta", dtype=DTYPES[dtype])
    except Exception:  # an invalid combination is recorded as skipped: nothing to time
        return CONFIG_OVERHEAD_S
    size = torch.empty((), dtype=DTYPES[dtype]).element_size()
    cost = CONFIG_OVERHEAD_S
    for n in tokens:
        for op in ops:
            if op in DECODE_OPS and n > DECODE_MAX_BATCH:
                continue
            call = call_seconds(head, op, n, device, size)
            cost += UNIT_OVERHEAD_S + max(min_run_time, 5 * call) + 2 * call
    return cost


def split(configs: List[tuple], costs: List[float], shards: int) -> List[List[tuple]]:
    """Longest first, each to the shard with the least expected cost so far (ties: the lower index); each
    shard keeps the sweep's order."""
    loads, members = [0.0] * shards, [[] for _ in range(shards)]
    for index in sorted(range(len(configs)), key=lambda i: (-costs[i], i)):
        target = min(range(shards), key=lambda s: (loads[s], s))
        loads[target] += costs[index]
        members[target].append(index)
    return [[configs[i] for i in sorted(m)] for m in members]


def grid_identity(args) -> dict:
    return {key: getattr(args, key) for key in GRID_FIELDS}


def manifest_path(args) -> str:
    return os.path.join(args.out, f"{args.name or 'compare'}.shards.json")


def shard_name(name: str, index: int, shards: int) -> str:
    return f"{name}-shard{index}-of-{shards}"


def make_manifest(args, grid) -> dict:
    configs = grid_configs(grid)
    costs = [config_cost(c, grid.tokens, grid.ops, args.min_run_time) for c in configs]
    parts = split(configs, costs, args.shards)
    by_config = dict(zip(configs, costs))
    return {"grid": grid_identity(args), "shards": args.shards,
            "parts": [{"configs": [list(c) for c in part], "expected_s": round(sum(by_config[c] for c in part), 1)}
                      for part in parts]}


def load_manifest(args, grid) -> Optional[dict]:
    """The stored split of this --name; ValueError naming the flag when it splits another grid."""
    path = manifest_path(args)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"--shards: cannot read {path} ({error})") from None
    if manifest.get("grid") != json.loads(json.dumps(grid_identity(args))):
        raise ValueError(f"--shards: {path} splits another grid or other settings; measure into another --name")
    if manifest.get("shards") != args.shards:
        raise ValueError(f"--shards: {path} splits the grid into {manifest.get('shards')} shards, not {args.shards}")
    return manifest


def worker_shard(args, grid) -> Tuple[str, List[tuple]]:
    """(results file stem, configurations) of shard --shard; the split is read from OUT/NAME.shards.json,
    or made and stored when this is its first use."""
    manifest = load_manifest(args, grid)
    if manifest is None:
        manifest = make_manifest(args, grid)
        write_json(manifest_path(args), manifest)
    configs = [tuple(c) for c in manifest["parts"][args.shard]["configs"]]
    return shard_name(args.name or "compare", args.shard, args.shards), configs


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------- several files as one

def merge_rows(paths: Sequence[str], allow_mixed: bool) -> Tuple[List[dict], Dict[str, List[dict]]]:
    """(all rows, rows by file) of several results files; ValueError (one line) when two files hold one
    unit, or, unless allow_mixed, rows of different machines, devices or software versions."""
    by_file, owner = {}, {}
    for path in paths:
        try:
            by_file[path] = read_rows(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"--from: {path}: {error}") from None
        for row in by_file[path]:
            key = (*unit_key(row), row.get("metric"))
            if owner.setdefault(key, path) != path:
                raise ValueError(f"--from: {owner[key]} and {path} both hold {row['spec']} {row['op']} V={row['V']} "
                                 f"d={row['d']} N={row['N']} on {row['device']}; render them apart")
    if len(paths) > 1 and not allow_mixed:
        for column in MIX_COLUMNS:
            seen = {}
            for path, rows in by_file.items():
                for value in {r.get(column) for r in rows if r.get(column)}:
                    seen.setdefault(value, path)
            if len(seen) > 1:
                (a, pa), (b, pb) = list(seen.items())[:2]
                raise ValueError(f"--from: {column} differs ({a!r} in {pa}, {b!r} in {pb}); tables would mix "
                                 f"machines or versions: pass --allow-mixed to render them together")
    return [r for rows in by_file.values() for r in rows], by_file


def mixed_note(rows: List[dict]) -> str:
    """A line naming every machine and version in rows rendered with --allow-mixed ('' when one)."""
    parts = []
    for column in MIX_COLUMNS:
        values = sorted({r.get(column) for r in rows if r.get(column)})
        if len(values) > 1:
            parts.append(f"{column}: {' / '.join(values)}")
    return ("Mixed rows (--allow-mixed), captions name the first only: " + "; ".join(parts) + "\n") if parts else ""


# --------------------------------------------------------------------------- jobs

class ShardJob:
    """One shard's job: ``python -m vqbench.compare ARGV`` in the job's process, on ``cores`` when given.
    A requeued job (SLURM pre-emption or time limit) runs again with the same ARGV, which resumes. The job
    names the command it runs (COMMAND) rather than importing it: the commands build on this module."""

    COMMAND = "vqbench.compare"

    def __init__(self, argv: List[str], cores: Optional[List[int]] = None):
        self.argv, self.cores = list(argv), cores

    def __call__(self) -> int:
        if self.cores:
            os.sched_setaffinity(0, self.cores)
        return importlib.import_module(self.COMMAND).main(self.argv)

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class TrainJob(ShardJob):
    """One quality run's job: ``python -m vqbench.train ARGV`` (ARGV ends in --resume, so a requeued job
    continues from the run's last checkpoint); fails when training exits non-zero."""

    COMMAND = "vqbench.train"

    def __call__(self) -> int:
        distributed_environment()
        code = super().__call__()
        if code:
            raise RuntimeError(f"python -m vqbench.train exited {code}")
        return code


def distributed_environment() -> bool:
    """Inside a submitit job of several tasks (one per GPU of a node): export torch.distributed's env://
    variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) from SLURM's, which vqbench.train's DDP
    reads as it reads torchrun's. True when it did; a single task, or no submitit job, changes nothing."""
    try:
        import submitit
        environment = submitit.JobEnvironment()
        tasks = environment.num_tasks
    except (ImportError, RuntimeError, KeyError):  # not inside a submitit job
        return False
    if tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def make_executor(args, folder: str, name: str, gpus: int, threads: Optional[int], tasks: int = 1):
    """A submitit executor: SLURM with the requested partition, time, GPUs and node exclusivity, or local.
    tasks > 1: that many processes of one job on one node, one GPU each (DDP training)."""
    import submitit
    if args.executor == "slurm":
        executor = submitit.SlurmExecutor(folder=folder)
        params = {"job_name": name, "time": args.time_min, "ntasks_per_node": tasks, "partition": args.partition,
                  "gpus_per_task": gpus or None, "exclusive": True if args.exclusive else None,
                  "cpus_per_task": threads}
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=args.time_min)
    return executor


def local_slots(devices: Sequence[str], threads: Optional[int], gpus: int, wanted: int) -> List[dict]:
    """Where jobs may run at once on this machine without sharing cores: without a thread count one job at
    a time on every core; with one, disjoint sets of that many cores; with GPUs, one job per GPU."""
    cores = sorted(os.sched_getaffinity(0))
    if "cuda" in devices and gpus:
        count = max(1, min(gpus, wanted))
        threads = threads or max(1, len(cores) // count)
    if not threads:
        return [{"cores": None, "gpu": None}]
    count = max(1, min(wanted, len(cores) // threads))
    if "cuda" in devices and gpus:
        count = min(count, gpus)
    return [{"cores": cores[i * threads:(i + 1) * threads] if len(cores) >= threads else None,
             "gpu": i if "cuda" in devices and gpus else None} for i in range(count)]


def submit_local(executor, jobs: List[Tuple[str, object]], slots: List[dict], wait: bool) -> Dict[str, object]:
    """Run ``jobs`` [(label, job)] on the local executor, at most one per slot at a time; {label: result or
    the exception}. Without wait (all jobs fit the slots) it returns the submitted jobs."""
    queue, running, results = list(jobs), {}, {}
    while queue or running:
        free = [s for s in range(len(slots)) if s not in running]
        while queue and free:
            slot, (label, job) = free.pop(0), queue.pop(0)
            gpu = slots[slot]["gpu"]
            executor.update_parameters(gpus_per_node=0 if gpu is None else 1,
                                       visible_gpus=() if gpu is None else (gpu,))
            job.cores = slots[slot]["cores"]
            running[slot] = (label, executor.submit(job))
        if not wait:
            return {label: submitted for label, submitted in running.values()}
        for slot, (label, submitted) in list(running.items()):
            if submitted.done():
                results[label] = outcome(submitted)
                del running[slot]
        time.sleep(0.2)
    return results


def outcome(job):
    try:
        return job.result()
    except Exception as error:  # the job failed or was killed: its log says why
        return error


def submit_all(executor, jobs: List[Tuple[str, object]], wait: bool) -> Dict[str, object]:
    """SLURM: every job at once (one array), then their results (or the jobs without wait)."""
    with executor.batch():
        submitted = [(label, executor.submit(job)) for label, job in jobs]
    if not wait:
        return dict(submitted)
    return {label: outcome(job) for label, job in submitted}


# --------------------------------------------------------------------------- a sharded sweep

def worker_argv(args, index: int, threads: Optional[int]) -> List[str]:
    """The compare flags of shard ``index``: the same grid and settings, --shard and --resume."""
    argv = ["--heads", *args.heads, "--vocab", *map(str, args.vocab), "--d-model", *map(str, args.d_model),
            "--tokens", *map(str, args.tokens), "--ops", *args.ops,
            "--device", args.device, "--dtype", *args.dtype, "--out", os.path.abspath(args.out),
            "--name", args.name or "compare", "--format", args.format, "--ceilings", args.ceilings,
            "--min-run-time", repr(args.min_run_time), "--seed", str(args.seed), "--cpu-allocator",
            args.cpu_allocator, "--shards", str(args.shards), "--shard", str(index), "--resume", "--no-progress"]
    if getattr(args, "order_seed", None) is not None:
        argv += ["--order-seed", str(args.order_seed)]
    for module in getattr(args, "imports", []):  # a shard builds the same third-party heads
        argv += ["--import", module]
    for flag, value in (("--threads", threads), ("--memory-budget-gib", args.memory_budget_gib),
                        ("--time-budget-s", args.time_budget_s)):
        if value is not None:
            argv += [flag, repr(value)]
    return argv + (["--strict"] if args.strict else [])


def shard_paths(args) -> List[str]:
    name = args.name or "compare"
    return [os.path.join(args.out, shard_name(name, i, args.shards) + ".csv") for i in range(args.shards)]


def prepare(args, grid) -> dict:
    """The split (stored, or made and stored), after the shard files' safety: existing files are resumed
    with --resume, kept as backups with --overwrite, and otherwise the run is refused."""
    existing = [p for p in shard_paths(args) if os.path.exists(p)]
    if existing and not args.resume:
        if not args.overwrite:
            raise ValueError(f"--name: {existing[0]} exists; pass --resume to continue the shards, or --overwrite "
                             f"to start afresh (old files kept as backups); nothing was changed")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in existing:
            os.replace(path, f"{path}.bak-{stamp}")
            print(f"--overwrite: the old rows are kept in {path}.bak-{stamp}", file=sys.stderr)
    manifest = None if args.overwrite else load_manifest(args, grid)
    if manifest is None:
        os.makedirs(args.out, exist_ok=True)
        manifest = make_manifest(args, grid)
        write_json(manifest_path(args), manifest)
    return manifest


def run_sharded(args, grid) -> Tuple[int, Optional[List[str]]]:
    """Submit every shard of the sweep and wait: (exit code, shard files); with --no-wait the job ids are
    printed and no files returned. Exit code: 1 when a shard failed, 3 when one measured on a busy machine
    under --strict."""
    manifest = prepare(args, grid)
    devices = grid.devices
    gpus = args.gpus_per_task if args.gpus_per_task is not None else int("cuda" in devices)
    name = args.name or "compare"
    folder = os.path.abspath(args.jobs_dir or os.path.join(args.out, f"{name}.jobs"))
    if args.executor == "local":
        import torch
        slots = local_slots(devices, args.threads, torch.cuda.device_count() if gpus else 0, args.shards)
        threads = len(slots[0]["cores"]) if slots[0]["cores"] else args.threads
        if args.no_wait and len(slots) < args.shards:
            raise ValueError(f"--no-wait: the local executor runs {len(slots)} of the {args.shards} shards at a time "
                             f"on this machine, so it must wait (or use --executor slurm)")
    else:
        slots, threads = None, args.threads
    jobs = [(f"shard {i}", ShardJob(worker_argv(args, i, threads))) for i in range(args.shards)]
    for i, part in enumerate(manifest["parts"]):
        print(f"shard {i}: {len(part['configs'])} head configurations, about {part['expected_s']:.0f} s expected",
              file=sys.stderr)
    executor = make_executor(args, folder, f"vqbench-{name}", gpus, threads)
    results = (submit_local(executor, jobs, slots, not args.no_wait) if slots is not None
               else submit_all(executor, jobs, not args.no_wait))
    if args.no_wait:
        for label, job in results.items():
            print(f"{label}: job {job.job_id}")
        print(f"logs in {folder}; when the jobs end: python -m vqbench.compare --from "
              + " ".join(shard_paths(args)), file=sys.stderr)
        return 0, None
    return report(results, folder), shard_paths(args)


def report(results: Dict[str, object], folder: str) -> int:
    code = 0
    for label, result in results.items():
        if isinstance(result, BaseException) or result not in (0, 3):
            text = str(result).strip().splitlines()
            print(f"{label} failed ({text[-1] if text else type(result).__name__}); logs in {folder}",
                  file=sys.stderr)
            code = 1
        elif result == 3 and code == 0:
            code = 3
    return code


# --------------------------------------------------------------------------- a quality plan

def plan_jobs(plan, runs_dir: str, checkpoints: str, submitted, only) -> List[Tuple[str, TrainJob]]:
    """The plan's unfinished runs not yet submitted, as jobs, those with a checkpoint first (they resume)."""
    todo = [r for r in plan.runs(runs_dir) if r.run not in submitted and not plan.finished(runs_dir, r)
            and r.wanted(only) and r.startable(checkpoints)]
    todo.sort(key=lambda r: not os.path.exists(os.path.join(checkpoints, r.run, "checkpoint.pt")))
    return [(r.run, TrainJob(r.command(runs_dir, checkpoints, plan.common)[3:])) for r in todo]


def run_plan(plan, runs_dir: str, checkpoints: str, args) -> None:
    """quality run --executor: every unfinished run of the plan as a job (local: --lanes at a time, one core
    each; SLURM: all at once), logs and summaries in the runs folder as without jobs, submitit's files in
    --jobs-dir (default CHECKPOINTS/jobs). Runs that become decidable when others finish (the best seeds)
    are submitted then; RuntimeError naming the failed runs."""
    runs_dir, checkpoints = os.path.abspath(runs_dir), os.path.abspath(checkpoints)
    folder = os.path.abspath(args.jobs_dir or os.path.join(checkpoints, "jobs"))
    os.makedirs(checkpoints, exist_ok=True)
    gpus = args.gpus_per_task or 0
    # several GPUs: one training process per GPU, joined by DDP (NCCL) through SLURM's task environment
    executor = make_executor(args, folder, "vqbench-quality", min(gpus, 1), None, tasks=max(gpus, 1))
    cores = sorted(os.sched_getaffinity(0))
    pin = args.lanes > 1 and len(cores) >= args.lanes
    slots = [{"cores": [cores[i]] if pin else None, "gpu": None} for i in range(args.lanes)]
    submitted, failed = set(), []
    while jobs := plan_jobs(plan, runs_dir, checkpoints, submitted, args.only):
        if args.no_wait and args.executor == "local" and len(jobs) > len(slots):
            raise ValueError(f"--no-wait: the local executor runs {len(slots)} of the {len(jobs)} runs at a time "
                             f"(--lanes), so it must wait (or use --executor slurm)")
        results = (submit_local(executor, jobs, slots, not args.no_wait) if args.executor == "local"
                   else submit_all(executor, jobs, not args.no_wait))
        submitted.update(label for label, _ in jobs)
        if args.no_wait:
            for label, job in results.items():
                print(f"{label}: job {job.job_id}")
            print(f"logs in {folder}; runs that wait on these (best seeds) need another `quality run`",
                  file=sys.stderr)
            return
        failed += [label for label, result in results.items() if isinstance(result, BaseException)]
    if failed:
        raise RuntimeError(f"runs failed (see their logs under {folder}): {', '.join(failed)}")
