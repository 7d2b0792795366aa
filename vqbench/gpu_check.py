"""python -m vqbench.gpu_check: why a softmax's logits GEMM runs below the machine's peak, measured.

Times the logits product hidden [N, d] x W^T [d, V] at an odd width (GPT-2's V=50257) and at the same width
padded to a multiple of 64 (50304), in bfloat16 and in float32 with TF32 off and on, next to the GEMM ceiling
of each precision (a square product), and writes OUT/NAME.md (a table) and OUT/NAME.json (the numbers).
Finishes in seconds on a GPU; --dry-run measures tiny sizes on the CPU, to test the code path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from vqbench.measuring.provenance import relative_path
from vqbench.measuring.ceilings import fastest_call
from vqbench.heads.padding import padded_width
from vqbench.measuring.provenance import provenance
from vqbench.measuring.sweep import DTYPES, matmul_precision

PRECISIONS = ("bfloat16", "float32", "tf32")
FULL = dict(tokens=2048, d_model=1024, vocab=50257, square=8192)
DRY = dict(tokens=16, d_model=32, vocab=301, square=128)


def measure(device: str, tokens: int, d_model: int, vocab: int, square: int, samples: int = 10) -> list:
    """One record per (precision, width): seconds of the fastest call, its FLOP rate and the ceiling's."""
    records = []
    for name in PRECISIONS:
        dtype = DTYPES[name]
        with matmul_precision(name):
            a = torch.randn(square, square, device=device).to(dtype)
            ceiling = 2 * square ** 3 / fastest_call(lambda: torch.mm(a, a), 1, samples)
            hidden = torch.randn(tokens, d_model, device=device).to(dtype)
            for width in (vocab, padded_width(vocab, 64)):
                weight = torch.randn(width, d_model, device=device).to(dtype)
                seconds = fastest_call(lambda: torch.mm(hidden, weight.T), 1, samples)
                rate = 2 * tokens * d_model * width / seconds
                records.append({"precision": name, "N": tokens, "d": d_model, "V": width, "seconds": seconds,
                                "flop_s": rate, "ceiling_flop_s": ceiling, "share_of_ceiling": rate / ceiling})
    return records


def markdown(records: list, where: dict, command: str) -> str:
    lines = ["# GPU self-check: the logits GEMM at an odd and a padded width", "",
             f"Regenerate: `{command}`", "",
             f"{where['device_name']} ({where['device']}), torch {where['torch_version']}. hidden [N, d] x W^T [d, V], "
             "the fastest of 10 calls; the ceiling is a square product in the same precision (tf32: float32 with "
             "TF32 matrix products).", "",
             "| precision | N | d | V | time (ms) | TFLOP/s | ceiling TFLOP/s | share of ceiling |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['precision']} | {r['N']} | {r['d']} | {r['V']} | {r['seconds'] * 1e3:.4g} | "
                     f"{r['flop_s'] / 1e12:.4g} | {r['ceiling_flop_s'] / 1e12:.4g} | {100 * r['share_of_ceiling']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, metavar="DIR", help="folder for NAME.md and NAME.json")
    p.add_argument("--name", default="cuda-selfcheck", help="stem of the files (default cuda-selfcheck)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: tests the code path only")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        p.error("--dry-run: not given, and torch sees no CUDA device")
    if not args.name or os.sep in args.name or args.name.startswith("."):
        p.error(f"--name: a file stem inside --out, got {args.name!r}")
    device = "cpu" if args.dry_run else "cuda"
    records = measure(device, **(DRY if args.dry_run else FULL))
    where = {**provenance(device, torch.get_num_threads()), "device": device}
    command = (f"python -m vqbench.gpu_check --out {relative_path(os.path.abspath(args.out))}"
               + (f" --name {args.name}" if args.name != "cuda-selfcheck" else "") + (" --dry-run" if args.dry_run else ""))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump({"command": command, "device_name": where["device_name"], "torch_version": where["torch_version"],
                   "git_commit": where["git_commit"], "timestamp": where["timestamp"],
                   "records": records}, f, indent=1)
    text = markdown(records, where, command)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
