"""vqbench.profile writes a trace that a real TensorBoard's PyTorch Profiler plugin serves."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from vqbench import profile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_profile_prints_top_operators(tmp_path, capsys):
    argv = ["--head", "softmax", "--vocab", "500", "--d-model", "32", "--tokens", "16", "--op", "loss",
            "--logdir", str(tmp_path), "--active", "2"]
    assert profile.main(argv) == 0
    out = capsys.readouterr().out
    assert "self time (ms)" in out and "aten::" in out
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and list(runs[0].glob("*.pt.trace.json"))


def test_tensorboard_plugin_lists_run_and_views(tmp_path):
    args = profile.parse_args(["--head", "vq:K=16", "--vocab", "300", "--d-model", "16", "--tokens", "8",
                               "--op", "train", "--logdir", str(tmp_path), "--active", "2"])
    profile.profile_op(args)
    run = profile.run_name(args)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler"
    try:
        deadline, runs = time.time() + 90, []
        while time.time() < deadline and run not in runs:
            try:
                runs = get_json(f"{base}/runs")["runs"]
            except OSError:
                pass
            time.sleep(0.5)
        assert run in runs
        views = get_json(f"{base}/views?run={urllib.parse.quote(run)}")
        assert {"Overview", "Operator", "Trace", "Memory"} <= set(views)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.poll() is not None


def test_profile_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        profile.parse_args(["--head", "softmax", "--vocab", "0"])
    with pytest.raises(SystemExit):
        profile.parse_args(["--head", "softmax", "--op", "fly"])
