"""Where a number came from: software versions, machine, threads, commit, time."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from functools import lru_cache

import torch

from vqbench._version import __version__


OUTSIDE = "<outside>"  # stands for the folders above a path that lies outside the repository


def relative_path(path):
    """path as a committed file may record it: relative to the current folder (the repository's root, where
    every command is run from), never absolute; a path outside it (a checkpoint disk, another machine's /tmp)
    as <outside>/PARENT/NAME, since the folders above name one machine's layout and only the last two (a run
    folder and its file) say what it was."""
    if not isinstance(path, str) or not (os.path.isabs(path) or path == ".." or path.startswith("../")):
        return path
    relative = os.path.relpath(path)
    if relative != ".." and not relative.startswith("../"):
        return relative
    return "/".join([OUTSIDE, *os.path.normpath(path).split(os.sep)[-2:]])


def relative_argv(argv):
    """argv with each absolute path (a token, or the value of --flag=PATH) made relative (relative_path)."""
    out = []
    for token in argv:
        flag, eq, value = token.partition("=")
        out.append(f"{flag}={relative_path(value)}" if eq and token.startswith("-") else relative_path(token))
    return out


REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@lru_cache(maxsize=4)
def git_commit(root: str = REPOSITORY) -> str:
    """The commit of the checkout at root (default the one vqbench runs from), with '+dirty' for uncommitted
    changes to its code."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        # results/ is what a sweep writes and Markdown is prose, not the code that measures: their changes do not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results",
                                ":!*.md"],
                               cwd=root, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _cpuinfo(field: str):
    """The value of the first ``field`` line of /proc/cpuinfo, None where there is none (or no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, colon, value = line.partition(":")
                if colon and key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (avx512_bf16, amx_bf16, ...), empty where /proc/cpuinfo does not say."""
    return frozenset((_cpuinfo("flags") or "").split())


# the vector tiers that decide how fast a CPU trains, best first: bf16 autocast is native only on the first two
ISA_TIERS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


@lru_cache(maxsize=1)
def cpu_id() -> str:
    """The CPU beyond its model name, which a virtual machine may cut to the vendor's family name ("AMD EPYC"
    for a Zen 3 without AVX-512 and for a Zen 4 with AVX-512 bf16 alike): vendor, family, model and stepping,
    and its best vector tier, e.g. "AuthenticAMD family 25 model 1 stepping 1, avx2"; "" where /proc/cpuinfo
    does not say."""
    fields = (("", "vendor_id"), ("family ", "cpu family"), ("model ", "model"), ("stepping ", "stepping"))
    chip = " ".join(label + value for label, value in ((label, _cpuinfo(field)) for label, field in fields) if value)
    return ", ".join(x for x in (chip, vector_tier()) if x)


def vector_tier() -> str:
    """The CPU's best vector tier of ISA_TIERS ("avx512_bf16", "avx2", ...), "" where it has none of them."""
    return next((t for t in ISA_TIERS if t in cpu_flags()), "")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def provenance(device: str, threads: int) -> dict:
    """Fields stored with every result row."""
    return {
        "vqbench_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "threads": threads,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_allocator": cpu_allocator(),
    }


def use_cpu_allocator(name: str) -> None:
    """'thp': large CPU tensors on transparent huge pages (PyTorch reads THP_MEM_ALLOC_ENABLE at each
    large allocation); 'default': the plain allocator."""
    if name == "thp":
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    else:
        os.environ.pop("THP_MEM_ALLOC_ENABLE", None)


def cpu_allocator() -> str:
    """'thp' when PyTorch puts large CPU tensors on transparent huge pages (THP_MEM_ALLOC_ENABLE=1)."""
    return "thp" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "default"
