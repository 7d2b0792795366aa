"""The asv suite: discovery (`asv check`) and one small parameter combination of every method."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.bench_heads import DecodeCPU, HeadsCPU, HeadsCUDA, IntoCPU, SampleCPU
from benchmarks.common import HEADS, PARAM_NAMES, MissingOp, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cpu_method_runs_on_one_small_combination():
    suite = HeadsCPU()
    args = ("vq:K=1024", 2048, 64, 32)
    suite.setup(*args)
    for name in dir(suite):
        if name.startswith(("time_", "peakmem_")):
            getattr(suite, name)(*args)
    assert suite.track_params(*args) == 1024 * 64
    assert suite.track_flops_loss(*args) == 2 * 32 * 64 * 1024
    assert suite.track_params.unit == "parameters" and suite.track_flops_loss.unit == "FLOP"
    assert suite.version and suite.timeout
    into = IntoCPU()
    into.setup(*args)
    into.time_log_probs_into(*args)
    decode = DecodeCPU()
    decode.setup("vq:K=1024", 2048, 64, 8)
    assert decode.dense.__name__ == "decode_dense"   # today's op for the dense way
    decode.time_decode()
    sample = SampleCPU()
    sample.setup("vq:K=1024", 2048, 64, 8)
    sample.time_sample()


def test_an_op_the_commit_lacks_is_a_skip():
    with pytest.raises(MissingOp, match="no_such_op: not in this commit"):
        build("softmax", 512, 32, 8, ops=("no_such_op",))
    assert issubclass(MissingOp, NotImplementedError)   # asv's skip


# what every commit since the suite began (c1f7c12) has, at its place before or after the measuring subpackage
# (the suite tries the new place first): asv runs today's suite against old commits
STABLE_API = {("vqbench", "make_head"), ("vqbench.ops", "make_op"), ("vqbench.sweep", "make_inputs"),
              ("vqbench.measuring.ops", "make_op"), ("vqbench.measuring.measure", "make_inputs")}


def test_the_suite_uses_only_the_api_every_measured_commit_has():
    import ast
    project = ("vqbench", "baselines")
    used = set()
    for name in os.listdir(os.path.join(ROOT, "benchmarks")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "benchmarks", name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in project:
                    used.update((node.module, alias.name) for alias in node.names)
                elif isinstance(node, ast.Import):
                    assert not any(a.name.split(".")[0] in project for a in node.names), name
    assert used and used <= STABLE_API, used - STABLE_API


@pytest.mark.parametrize("args,reason", [
    (("vq:K=1024", 256, 64, 32), "vq:K=1024 at V=256, d=64: K: must be <= 256"),
    (("softmax", 10**7, 4096, 10**5), "memory budget"),
])
def test_invalid_combinations_skip_with_a_reason(args, reason):
    with pytest.raises(NotImplementedError, match=reason):
        HeadsCPU().setup(*args)


def test_cuda_suite_skips_without_cuda():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(NotImplementedError, match="CUDA"):
        HeadsCUDA().setup("softmax", 2048, 64, 32)


def test_specs_are_full_spec_strings_with_no_k_parameter():
    assert PARAM_NAMES == ["head", "V", "d", "N"]
    assert {"vq:K=1024", "vq:K=1024,path=scatter"} <= set(HEADS)
    head, ops = build("vq:K=256,path=scatter", 512, 32, 8)
    assert head.K == 256 and head.path == "scatter" and set(ops) == {"log_probs", "loss", "train"}


def temporary_config(tmp_path) -> str:
    """A copy of asv.conf.json whose folders asv writes (results, html, environments) lie under tmp_path:
    `asv run`, even with --dry-run, rewrites RESULTS/MACHINE/machine.json, and results/asv is committed."""
    from asv.util import load_json
    conf = load_json(os.path.join(ROOT, "asv.conf.json"), js_comments=True)
    conf.update(repo=ROOT, benchmark_dir=os.path.join(ROOT, "benchmarks"), results_dir=str(tmp_path / "results"),
                html_dir=str(tmp_path / "html"), env_dir=str(tmp_path / "env"))
    path = tmp_path / "asv.conf.json"
    path.write_text(json.dumps(conf))
    return str(path)


@pytest.mark.skipif(shutil.which("asv") is None, reason="asv is not installed (pip install -e '.[bench]')")
def test_asv_check_discovers_the_suite(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same",
                             "--config", temporary_config(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("asv") is None, reason="asv is not installed (pip install -e '.[bench]')")
def test_asv_runs_one_small_combination_in_this_environment(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}  # asv machine --yes writes ~/.asv-machine.json
    config = temporary_config(tmp_path)
    subprocess.run([sys.executable, "-m", "asv", "machine", "--yes", "--config", config], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    combination = r"\('vq:K=1024', 8192, 512, 256\)"
    result = subprocess.run(
        [sys.executable, "-m", "asv", "run", "--python=same", "--quick", "--dry-run", "--show-stderr",
         "--config", config, "-b", rf"HeadsCPU\.(time_loss|track_params|track_flops_loss){combination}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "failed" not in output.lower(), output
    assert str(1024 * 512) in output                 # track_params: K * d
    assert str(2 * 256 * 512 * 1024) in output       # track_flops_loss: 2 N d K
    assert os.listdir(tmp_path / "results")          # asv's machine.json went to the temporary folder
