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
                          timeout=1500)  # minutes on a shared 2-core machine


def test_dry_run_covers_every_stage_head_dtype_and_op_and_resumes(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(tmp_path)) == ["cuda-headline.csv", "cuda-headline.load.jsonl", "cuda-headline.md",
                                            "cuda-selfcheck.json", "cuda-selfcheck.md", "cuda-sweep.csv",
                                            "cuda-sweep.load.jsonl", "cuda-sweep.md"]  # at most 8: what a lent machine sends back
    assert "self-check:" in done.stdout and "peers ran: " in done.stdout
    # bf16 first, then tf32, then fp32, in both stages
    order = [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("cuda-")]
    assert order == [f"{name} {dtype}" for name in ("cuda-headline", "cuda-sweep")
                     for dtype in ("bfloat16", "tf32", "float32")], done.stdout
    with open(tmp_path / "cuda-headline.csv") as f:
        rows = list(csv.DictReader(f))
    heads = {r["spec"] for r in rows}
    assert {"softmax", "softmax:pad=64", "softmax:chunk=256", "softmax:chunk=256,pad=64", "adaptive", "hierarchical",
            "hierarchical:tree=huffman", "lowrank", "lowrank:pad=64", "vq:K=16", "vq:K=16,bias=1",
            "peer:impl=compile,pad=64", "peer:impl=cce", "peer:impl=liger"} <= heads
    assert {r["dtype"] for r in rows} == {"float32", "tf32", "bfloat16"}
    timed = {(r["spec"], r["op"], r["dtype"]) for r in rows if r["metric"] == "time"}
    for spec in ("softmax", "softmax:pad=64", "vq:K=16"):
        for op in ("logits", "log_probs", "loss", "train", "decode"):
            for dtype in ("float32", "tf32", "bfloat16"):
                assert (spec, op, dtype) in timed
    assert ("peer:impl=compile,pad=64", "train", "tf32") in timed
    failed = [r for r in rows if r["status"] == "skipped" and not r["reason"].startswith("not applicable")]
    assert failed == []
    for name in ("cuda-headline.md", "cuda-sweep.md", "cuda-selfcheck.md"):  # paths relative to the repository
        text = (tmp_path / name).read_text()
        assert f"--out {tmp_path}" not in text and f"`{tmp_path}" not in text, name
    again = run(tmp_path)
    assert again.returncode == 0 and again.stdout.count("measured 0,") == 6, again.stdout


def test_usage_errors_exit_2(tmp_path):
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
    done = subprocess.run(["bash", SCRIPT, str(tmp_path), "--wet-run"], capture_output=True, text=True)
    assert done.returncode == 2
