"""scripts/run-cuda.sh on the CPU with --dry-run: every step, head, dtype and op runs, so that a
syntax or flag error cannot waste the minutes of a lent GPU; a second run resumes instead of redoing."""

import csv
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "run-cuda.sh")


def run(out):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", SCRIPT, str(out), "--dry-run"], capture_output=True, text=True, env=env,
                          timeout=600)


def test_dry_run_covers_every_head_dtype_and_op_and_resumes(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith((".csv", ".md"))) == \
        ["cuda-headline.csv", "cuda-headline.md", "cuda-sweep.csv", "cuda-sweep.md"]
    assert len(os.listdir(tmp_path)) <= 8  # what a lent machine sends back
    with open(tmp_path / "cuda-headline.csv") as f:
        rows = list(csv.DictReader(f))
    heads = {r["spec"] for r in rows}
    assert {"softmax", "softmax:chunk=256", "adaptive", "hierarchical", "hierarchical:tree=huffman", "lowrank",
            "vq:K=16", "vq:K=16,bias=1"} <= heads
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    timed = {(r["spec"], r["op"], r["dtype"]) for r in rows if r["metric"] == "time"}
    for spec in ("softmax", "vq:K=16"):
        for op in ("logits", "log_probs", "loss", "train", "decode"):
            for dtype in ("float32", "bfloat16"):
                assert (spec, op, dtype) in timed
    failed = [r for r in rows if r["status"] == "skipped" and not r["reason"].startswith("not applicable")]
    assert failed == []
    again = run(tmp_path)
    assert again.returncode == 0 and "measured 0" in again.stdout, again.stdout


def test_usage_errors_exit_2(tmp_path):
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
    done = subprocess.run(["bash", SCRIPT, str(tmp_path), "--wet-run"], capture_output=True, text=True)
    assert done.returncode == 2
