"""scripts/run-cuda-quality.sh on the CPU with --dry-run: the transformer plan's runs train at tiny sizes
and their tables are written, so that a flag or plan error cannot waste the minutes of a lent GPU."""

import csv
import json
import os
import subprocess
import sys

import pytest

from vqbench.training.data import default_corpus_dir

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "run-cuda-quality.sh")


@pytest.mark.skipif(not os.path.isdir(default_corpus_dir()), reason=f"no WikiText-2 at {default_corpus_dir()}")
def test_dry_run_trains_the_transformer_plans_runs_and_writes_their_tables(tmp_path):
    pytest.importorskip("tiktoken")
    env = {**os.environ, "PYTHON": sys.executable, "ONLY": "softmax-tied vq-K5013-learned"}
    done = subprocess.run(["bash", SCRIPT, str(tmp_path), "--dry-run"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "quality-run.log").read_text()
    with open(tmp_path / "quality" / "quality.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"softmax-tied", "vq-K5013-learned"}
    assert all((r["body"], r["vocabulary"]) == ("gpt-1x64", "cl100k_base-100277") for r in rows.values())
    assert rows["softmax-tied"]["shared_params"] == str(100_277 * 64)
    with open(tmp_path / "quality" / "runs" / "joint-gpt-vq-K5013-learned-s0" / "log.jsonl") as f:
        assert any('"reassigned_share"' in line for line in f)
    assert not os.path.exists(tmp_path / "quality" / "runs" / "joint-gpt-softmax-s0")
    with open(tmp_path / "quality" / "lr-sweep.csv") as f:  # each variant's rate was swept, then chosen
        sweep = list(csv.DictReader(f))
    from vqbench.quality import TRANSFORMER_PLAN
    with open(TRANSFORMER_PLAN) as f:
        rates = [str(rate) for rate in json.load(f)["lr_sweep"]["rates"]]
    for name in ("softmax-tied", "vq-K5013-learned"):  # the plan's rates, and one step beyond an edge at most
        swept = {r["lr"] for r in sweep if r["name"] == name}
        assert set(rates) <= swept <= set(rates) | {"9e-05", "0.03"}, (name, swept)
    assert sorted(r["name"] for r in sweep if r["chosen"] == "yes") == ["softmax-tied", "vq-K5013-learned"]


def test_usage_errors_exit_2(tmp_path):
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
    done = subprocess.run(["bash", SCRIPT, str(tmp_path), "--wet-run"], capture_output=True, text=True)
    assert done.returncode == 2
