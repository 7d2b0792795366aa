"""Sharded sweeps and quality plans through submitit: shards hold exactly a single run's units, a killed shard
resumes, a plan's runs become jobs whose summaries `quality table` reads, several files render as one only
from one machine, the SLURM script holds what was asked, and a busy machine is said and fails --strict."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("submitit")

from vqbench.measuring import busy, shards  # noqa: E402

from vqbench import compare, quality
from vqbench.results import COLUMNS, read_rows, unit_key  # noqa: E402

GRID = ["--heads", "softmax", "lowrank", "vq:K=8", "--vocab", "50", "90", "--d-model", "8", "--tokens", "4",
        "--ops", "loss", "predict", "--min-run-time", "0.05", "--ceilings", "small", "--threads", "1",
        "--no-progress"]


def metric_keys(paths):
    keys = []
    for path in paths:
        keys += [(*unit_key(r), r["metric"]) for r in read_rows(str(path))]
    return keys


def shard_files(out, name="run", n=2):
    return [out / f"{name}-shard{i}-of-{n}.csv" for i in range(n)]


def test_two_local_shards_hold_exactly_the_units_of_one_process(tmp_path, capsys):
    assert compare.main(GRID + ["--out", str(tmp_path / "one"), "--name", "run"]) == 0
    single = metric_keys([tmp_path / "one" / "run.csv"])
    out = tmp_path / "sharded"
    assert compare.main(GRID + ["--out", str(out), "--name", "run", "--shards", "2", "--executor", "local"]) == 0
    merged = metric_keys(shard_files(out))
    assert len(merged) == len(set(merged)), "a unit measured twice"
    assert set(merged) == set(single) and len(merged) == len(single)
    parts = json.loads((out / "run.shards.json").read_text())["parts"]
    assert all(part["configs"] for part in parts)  # both shards measured something
    for path in shard_files(out):  # full provenance and a load record in every shard
        rows = read_rows(str(path))
        assert all(r["cpu_model"] and r["git_commit"] and r["torch_version"] for r in rows)
        assert len(busy.records_for(str(path), rows)) == 1
    text = (out / "run.md").read_text()
    assert "Machine load" in text and "run-shard0-of-2.csv" in text and "Latency" in text
    capsys.readouterr()
    assert compare.main(GRID + ["--out", str(out), "--name", "run", "--shards", "2"]) == 2  # files exist
    assert "--resume" in capsys.readouterr().err


def test_a_shard_killed_half_way_resumes_to_the_same_units(tmp_path):
    out = tmp_path / "out"
    grid = GRID + ["--out", str(out), "--name", "run", "--shards", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "vqbench.compare", *grid, "--shard", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = shard_files(out)[0]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(read_rows(str(path))) >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = metric_keys([path])
    assert 8 <= len(partial)
    assert compare.main(grid + ["--resume", "--executor", "local"]) == 0
    merged = metric_keys(shard_files(out))
    assert len(merged) == len(set(merged)), "a unit measured twice after the resume"
    assert set(partial) <= set(merged), "rows measured before the kill were lost"
    assert len({k[:-1] for k in partial}) < len({k[:-1] for k in metric_keys([path])}), "the shard was not cut short"
    assert len({key[:-1] for key in merged}) == 3 * 2 * 3  # every (spec, V) with params, loss and predict


def tiny_corpus(folder):
    folder.mkdir()
    words = [f"w{i}" for i in range(30)]
    for name, lines in (("train.txt", 120), ("valid.txt", 20), ("test.txt", 20)):
        (folder / name).write_text("".join(" ".join(words[(i * 7 + j * 3) % (5 + i % 25)] for j in range(8)) + "\n"
                                           for i in range(lines)))
    return ["--threads", "1", "--data", str(folder), "--d-model", "8", "--layers", "1", "--bptt", "5",
            "--batch-size", "4", "--optimizer", "adam", "--lr", "0.01"]


def test_a_two_run_plan_through_the_local_executor_feeds_quality_table(tmp_path):
    plan = {"protocol": "joint", "epochs": 1, "common_flags": tiny_corpus(tmp_path / "corpus"),
            "runs": [{"name": "softmax", "head": "softmax", "group": "reference", "seeds": [0]},
                     {"name": "vq", "head": "vq:K=8", "group": "paper", "seeds": [0]}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    common = ["--plan", str(tmp_path / "plan.json"), "--results", str(tmp_path / "results")]
    assert quality.main(["run", *common, "--executor", "local"]) == 0
    assert quality.main(["table", *common]) == 0
    with open(tmp_path / "results" / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["joint-softmax-s0", "joint-vq-s0"]
    assert all(r["stop"].startswith("epochs") and float(r["test_ppl"]) > 0 for r in rows)


def test_a_requeued_training_job_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = tiny_corpus(tmp_path / "corpus") + ["--head", "softmax", "--steps", "400", "--checkpoint-every", "5",
                                                "--out", str(out), "--resume"]
    args = type("Args", (), {"executor": "local", "time_min": 10})()
    job = shards.make_executor(args, str(tmp_path / "jobs"), "t", 0, None).submit(shards.TrainJob(argv))
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    controller = job._process.pid  # submitit's local controller; the job's task is its child
    (task,) = open(f"/proc/{controller}/task/{controller}/children").read().split()
    os.kill(int(task), signal.SIGUSR2)  # what SLURM sends before pre-empting: submitit checkpoints, requeues
    assert job.result() == 0
    invocations = [json.loads(line)["invocation"] for line in open(out / "log.jsonl") if '"invocation"' in line]
    assert len(invocations) == 2 and invocations[1]["from_step"] > 0
    assert json.loads((out / "summary.json").read_text())["stop"].startswith("steps")


def write_rows(path, cpu, spec="softmax", torch_version="2.13.0"):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for metric, value in (("time", "0.001"), ("flops_analytic", "1000"), ("flops_counted", "1000")):
            writer.writerow({**{c: "" for c in COLUMNS}, "head": spec, "spec": spec, "op": "loss", "metric": metric,
                             "V": "100", "d": "8", "N": "4", "device": "cpu", "dtype": "float32", "value": value,
                             "status": "ok", "threads": "1", "torch_version": torch_version, "device_name": cpu,
                             "cpu_model": cpu, "vqbench_version": "0.1", "timestamp": "2026-01-01T00:00:00+00:00"})


def test_from_two_machines_refuses_without_allow_mixed(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_rows(a, "CPU One")
    write_rows(b, "CPU Two", spec="lowrank")
    assert compare.main(["--from", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allow-mixed" in err and "CPU One" in err and "CPU Two" in err
    assert compare.main(["--from", str(a), str(b), "--allow-mixed"]) == 0
    printed = capsys.readouterr().out
    assert "| softmax" in printed and "| lowrank" in printed and "CPU One / CPU Two" in printed
    write_rows(b, "CPU One", spec="lowrank", torch_version="2.9.0")  # one machine, another torch
    assert compare.main(["--from", str(a), str(b)]) == 2
    assert "torch_version" in capsys.readouterr().err
    write_rows(b, "CPU One")  # the same unit twice
    assert compare.main(["--from", str(a), str(b), "--allow-mixed"]) == 2
    assert "both hold softmax loss" in capsys.readouterr().err


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """srun and sbatch stand-ins: sbatch keeps a copy of each script it is given and answers with a job id."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    kept.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {kept}/\necho Submitted batch job 4242\n")
    for tool in ("srun", "sbatch"):
        os.chmod(bin_dir / tool, 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


def test_the_slurm_script_holds_the_partition_time_and_gpus(tmp_path, capsys, fake_slurm):
    out = tmp_path / "out"
    assert compare.main(GRID + ["--out", str(out), "--name", "run", "--shards", "2", "--executor", "slurm",
                                "--partition", "h200", "--time-min", "90", "--gpus-per-task", "1", "--no-wait"]) == 0
    assert "shard 0: job 4242_0" in capsys.readouterr().out
    (script,) = [p.read_text() for p in fake_slurm.iterdir()]
    for line in ("#SBATCH --partition=h200", "#SBATCH --time=90", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --exclusive", "#SBATCH --array=0-1%2", "#SBATCH --ntasks-per-node=1"):
        assert line in script.splitlines(), line
    assert "submitit.core._submit" in script
    plan = {"runs": [{"name": "softmax", "head": "softmax", "group": "reference", "seeds": [0, 1]}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert quality.main(["run", "--plan", str(tmp_path / "plan.json"), "--results", str(tmp_path / "q"),
                         "--executor", "slurm", "--partition", "cpu", "--time-min", "600",
                         "--no-wait"]) == 0
    scripts = [p.read_text() for p in fake_slurm.iterdir() if p.read_text() != script]
    assert "#SBATCH --partition=cpu" in scripts[0] and "#SBATCH --time=600" in scripts[0]
    assert "--exclusive" not in scripts[0] and "#SBATCH --array=0-1%2" in scripts[0]


def test_bad_sharding_flags_are_refused_with_one_line(tmp_path, capsys):
    for bad, flag in ((["--shards", "0"], "--shards"), (["--shards", "2", "--shard", "2"], "--shard"),
                      (["--no-wait"], "--no-wait"), (["--partition", "x"], "--partition"),
                      (["--from", "a.csv", "--shards", "2"], "--shards")):
        with pytest.raises(SystemExit):
            compare.main(bad)
        assert flag in capsys.readouterr().err.splitlines()[-1]


def test_jobs_without_submitit_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    with pytest.raises(SystemExit):
        compare.main(GRID + ["--out", str(tmp_path), "--shards", "2"])
    assert "pip install" in capsys.readouterr().err and not os.listdir(tmp_path)
    with pytest.raises(SystemExit):
        quality.main(["run", "--executor", "local", "--plan", str(tmp_path / "none.json")])
    assert "submitit" in capsys.readouterr().err


def test_the_split_balances_expected_cost_and_keeps_the_sweep_order():
    configs = [("cpu", "float32", v, 8, "softmax") for v in (10, 20, 30, 40, 50)]
    parts = shards.split(configs, [5.0, 4.0, 3.0, 3.0, 1.0], 2)
    assert sorted(sum(parts, [])) == configs and all(p == sorted(p) for p in parts)  # each once, in order
    loads = sorted(sum({c: w for c, w in zip(configs, [5.0, 4.0, 3.0, 3.0, 1.0])}[c] for c in p) for p in parts)
    assert loads == [8.0, 8.0]
    small = shards.config_cost(("cpu", "float32", 100, 64, "softmax"), [4096], ["train"], 0.001)
    large = shards.config_cost(("cpu", "float32", 50000, 64, "softmax"), [4096], ["train"], 0.001)
    fixed = shards.CONFIG_OVERHEAD_S + shards.UNIT_OVERHEAD_S
    assert large - fixed > 10 * (small - fixed)  # the op's expected time grows with V


def test_a_busy_machine_is_said_and_fails_strict(tmp_path, capsys, monkeypatch):
    spent = {"t": 0.0}

    def others_everywhere(cores=None):  # every core fully busy the whole time
        spent["t"] += 1000.0
        return spent["t"]

    monkeypatch.setattr(busy, "busy_seconds", others_everywhere)
    argv = GRID[:-3] + ["--threads", "1", "--no-progress", "--heads", "softmax", "--vocab", "50",
                        "--out", str(tmp_path), "--name", "run"]
    assert compare.main(argv + ["--strict"]) == 3
    assert "BUSY while measuring" in capsys.readouterr().err
    assert "BUSY while measuring" in (tmp_path / "run.md").read_text()
    (record,) = [json.loads(line) for line in open(tmp_path / "run.load.jsonl")]
    assert record["busy"] and record["others_on_cores"] > 1


def test_a_quiet_run_and_a_drifting_one(monkeypatch):
    monkeypatch.setattr(busy, "busy_seconds", lambda cores=None: 0.0)
    meter = busy.LoadMeter(threads=len(os.sched_getaffinity(0))).start()
    late = "9999-01-01T00:00:00+00:00"
    quiet = meter.stop([{"metric": "floor", "ceiling_drift": "0.1", "timestamp": late}])
    assert not quiet["busy"] and busy.sentence(quiet).startswith("quiet")
    drifted = meter.stop([{"metric": "floor", "ceiling_drift": "0.4", "timestamp": late},
                          {"metric": "floor", "ceiling_drift": "0.9", "timestamp": "2000-01-01T00:00:00+00:00"}])
    assert drifted["busy"] and "40%" in drifted["why"]  # rows from before the run do not count


def test_local_shards_never_share_cores_and_take_one_gpu_each(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert shards.local_slots(["cpu"], None, 0, 4) == [{"cores": None, "gpu": None}]  # one at a time, all cores
    pinned = shards.local_slots(["cpu"], 4, 0, 8)
    assert [s["cores"] for s in pinned] == [list(range(i, i + 4)) for i in (0, 4, 8, 12)]
    gpus = shards.local_slots(["cuda"], None, 2, 4)
    assert [(s["gpu"], s["cores"]) for s in gpus] == [(0, list(range(8))), (1, list(range(8, 16)))]
    assert len(shards.local_slots(["cuda"], 2, 8, 3)) == 3  # no more slots than shards


def test_a_quality_job_on_several_gpus_is_one_ddp_process_per_gpu(tmp_path, fake_slurm, monkeypatch):
    """--gpus-per-task G for a plan: G tasks of one GPU each on one node, and inside each task the job exports
    torch.distributed's env:// variables from SLURM's, which vqbench.train's DDP reads (as under torchrun)."""
    plan = {"runs": [{"name": "softmax", "head": "softmax", "group": "reference", "seeds": [0]}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert quality.main(["run", "--plan", str(tmp_path / "plan.json"), "--results", str(tmp_path / "q"),
                         "--executor", "slurm", "--gpus-per-task", "2", "--no-wait"]) == 0
    (script,) = [p.read_text() for p in fake_slurm.iterdir()]
    assert "#SBATCH --ntasks-per-node=2" in script.splitlines() and "#SBATCH --gpus-per-task=1" in script.splitlines()
    from vqbench.measuring.shards import distributed_environment
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # set, then deleted: monkeypatch then removes what the job exports below (a leaked WORLD_SIZE=2 would
        # make every later training test wait for a second process)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    assert not distributed_environment()  # outside a job: nothing changes
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_NAME": "vqbench-quality"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert distributed_environment()
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == \
        ("1", "1", "2", "node1")
