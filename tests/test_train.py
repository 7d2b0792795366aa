"""Training each head on a slice of WikiText-2: the loss falls, perplexity is finite, resume
continues exactly and refuses other settings, the schedule decays and stops, summaries carry their
provenance, frozen training works, and 2-process DDP matches one process."""

import datetime
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import HEAD_CLASSES
from vqbench import train
from vqbench.measuring.provenance import cpu_id
from vqbench.training.data import default_corpus_dir

pytestmark = pytest.mark.skipif(not os.path.isdir(default_corpus_dir()),
                                reason=f"no WikiText-2 at {default_corpus_dir()}")

SMALL = ["--d-model", "32", "--layers", "1", "--bptt", "20", "--batch-size", "8", "--train-tokens", "40000",
         "--eval-tokens", "4000", "--optimizer", "adam", "--lr", "0.005", "--threads", "1"]


def records(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(folder):
    return [r["loss"] for r in records(folder) if "loss" in r]


@pytest.mark.parametrize("head", [spec for name, cls in HEAD_CLASSES.items() for spec in (cls.COMPARED or (name,))])
def test_every_head_learns(tmp_path, head):
    out = str(tmp_path / "run")
    summary = train.train(train.parse_args(SMALL + ["--head", head, "--steps", "200", "--log-every", "20",
                                                     "--out", out]))
    curve = losses(out)
    assert len(curve) == 10
    assert sum(curve[-3:]) / 3 < sum(curve[:2]) / 2 - 0.3, curve
    assert math.isfinite(summary["valid_ppl"]) and math.isfinite(summary["test_ppl"])
    assert summary["valid_ppl"] < 33278
    assert 0 < summary["output_share"] <= 1.5 and summary["tokens_per_s"] > 0
    assert os.path.exists(os.path.join(out, "summary.json")) and os.path.exists(os.path.join(out, "checkpoint.pt"))
    assert summary["stop"].startswith("steps") and summary["evaluated"] == "last"


@pytest.mark.parametrize("learned", [False, True], ids=["fixed-mapping", "learned-mapping"])
def test_resume_continues_exactly(tmp_path, learned):
    common = SMALL + ["--head", "vq:K=64", "--log-every", "5", "--checkpoint-every", "10"]
    if learned:
        common += ["--reassign-every", "4"]
    straight = str(tmp_path / "straight")
    train.train(train.parse_args(common + ["--steps", "20", "--out", straight]))
    halves = str(tmp_path / "halves")
    train.train(train.parse_args(common + ["--steps", "10", "--out", halves]))
    train.train(train.parse_args(common + ["--steps", "20", "--out", halves, "--resume"]))
    assert losses(halves)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-6)
    steps = [r["step"] for r in records(halves) if "loss" in r]
    assert steps == sorted(set(steps))  # no step logged twice
    if learned:
        with open(os.path.join(straight, "log.jsonl")) as f:
            moves = [r["reassigned_tokens"] for r in map(json.loads, f) if "reassigned_tokens" in r]
        assert len(moves) == 5 and moves[0] > 0


def test_frozen_protocol_trains_the_head_on_a_trained_body(tmp_path):
    body = str(tmp_path / "body")
    train.train(train.parse_args(SMALL + ["--head", "softmax", "--epochs", "1", "--train-tokens", "4000",
                                          "--out", body]))
    out = str(tmp_path / "frozen")
    summary = train.train(train.parse_args(SMALL + [
        "--head", "vq:K=128,mapping=kmeans", "--protocol", "frozen", "--body-from", f"{body}/best.pt",
        "--embeddings-from", f"{body}/best.pt", "--steps", "60", "--log-every", "10",
        "--frozen-batch", "256", "--out", out]))
    curve = losses(out)
    assert curve[-1] < curve[0]
    assert math.isfinite(summary["valid_ppl"]) and summary["protocol"] == "frozen"
    cached = [name for name in os.listdir(body) if ".hidden-" in name]
    assert sorted(name.split("-")[1] for name in cached) == ["test", "train", "valid"]

    learned = str(tmp_path / "learned")  # same hidden states from the cache, learned mapping
    again = train.train(train.parse_args(SMALL + [
        "--head", "vq:K=128", "--protocol", "frozen", "--body-from", f"{body}/best.pt",
        "--steps", "60", "--log-every", "10", "--frozen-batch", "256", "--reassign-every", "20", "--out", learned]))
    assert math.isfinite(again["valid_ppl"])
    with open(os.path.join(learned, "log.jsonl")) as f:
        assert sum("reassigned_tokens" in r for r in map(json.loads, f)) == 3


def test_two_runs_on_one_body_may_write_its_cache_at_once(tmp_path, monkeypatch):
    """Two lanes training heads on one frozen body both compute its hidden states: the other lane's whole write
    of the same cache, landing between this run's save and its rename, must not take this run's file away."""
    body = str(tmp_path / "body")
    train.train(train.parse_args(SMALL + ["--head", "softmax", "--epochs", "1", "--train-tokens", "4000",
                                          "--out", body]))
    cached_states, real_save = train.FrozenTask.cached_states, torch.save
    calls, other_lane_wrote = [], []

    def recording(self, split, ids, batch_size):
        calls.append((self, split, ids, batch_size))
        return cached_states(self, split, ids, batch_size)

    def save_then_other_lane(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if isinstance(f, str) and ".hidden-" in f and not other_lane_wrote:
            other_lane_wrote.append(f)
            cached_states(*calls[-1])

    monkeypatch.setattr(train.FrozenTask, "cached_states", recording)
    monkeypatch.setattr(torch, "save", save_then_other_lane)
    summary = train.train(train.parse_args(SMALL + [
        "--head", "vq:K=64", "--protocol", "frozen", "--body-from", f"{body}/best.pt", "--steps", "10",
        "--log-every", "5", "--frozen-batch", "256", "--out", str(tmp_path / "frozen")]))
    assert other_lane_wrote and math.isfinite(summary["valid_ppl"])
    names = os.listdir(body)
    assert not [name for name in names if name.endswith(".tmp")], names
    assert sorted(name.split("-")[1] for name in names if ".hidden-" in name) == ["test", "train", "valid"]


def test_frozen_protocol_trains_a_vq_head_on_a_trained_gpt_body(tmp_path):
    """The premise runs of the transformer track: a VQ head trained alone on a GPT softmax run's body, the
    body rebuilt from that run's best.pt (its config), the summary naming the GPT body."""
    gpt = ["--body", "gpt", "--heads", "2", "--layers", "1", "--d-model", "16"]
    body = str(tmp_path / "body")
    train.train(train.parse_args(SMALL + gpt + ["--head", "softmax", "--epochs", "1", "--train-tokens", "4000",
                                                "--out", body]))
    out = str(tmp_path / "frozen")
    summary = train.train(train.parse_args(SMALL + gpt + [
        "--head", "vq:K=64", "--protocol", "frozen", "--body-from", f"{body}/best.pt", "--steps", "40",
        "--log-every", "10", "--frozen-batch", "256", "--out", out]))
    curve = losses(out)
    assert curve[-1] < curve[0] and math.isfinite(summary["test_ppl"])
    assert summary["protocol"] == "frozen" and summary["body"] == "gpt-1x16"


def test_bad_arguments():
    with pytest.raises(SystemExit):
        train.parse_args(["--protocol", "sideways"])
    with pytest.raises(SystemExit):
        train.parse_args(SMALL + ["--protocol", "frozen", "--steps", "1", "--out", "/tmp/x"])
    with pytest.raises(ValueError, match="body_from"):
        train.train(train.TrainConfig(protocol="frozen", steps=1, out="/tmp/x"))


TINY = SMALL + ["--head", "vq:K=32", "--train-tokens", "3200", "--log-every", "5", "--checkpoint-every", "5"]


@pytest.mark.parametrize("change", [["--head", "softmax"], ["--lr", "0.01"], ["--optimizer", "sgd"],
                                    ["--seed", "1"], ["--d-model", "16"], ["--dropout", "0.1"],
                                    ["--reassign-every", "3"], ["--plateau", "0.05"], ["--bptt", "10"]])
def test_resume_refuses_other_settings(tmp_path, change):
    out = str(tmp_path / "run")
    train.train(train.parse_args(TINY + ["--steps", "10", "--out", out]))
    before = open(os.path.join(out, "log.jsonl")).read()
    flag = change[0].lstrip("-").replace("-", "_")
    with pytest.raises(ValueError, match=rf"resume: .*{flag}="):
        train.train(train.parse_args(TINY + ["--steps", "20", "--out", out, "--resume"] + change))
    assert open(os.path.join(out, "log.jsonl")).read() == before  # nothing written


def test_an_existing_run_is_never_overwritten(tmp_path):
    out = str(tmp_path / "run")
    train.train(train.parse_args(TINY + ["--steps", "5", "--out", out]))
    before = open(os.path.join(out, "log.jsonl")).read()
    with pytest.raises(ValueError, match="out: .*already holds a run"):
        train.train(train.parse_args(TINY + ["--steps", "5", "--out", out]))
    assert open(os.path.join(out, "log.jsonl")).read() == before


def test_summary_records_provenance_and_every_invocation(tmp_path):
    out = str(tmp_path / "run")
    train.train(train.parse_args(TINY + ["--steps", "10", "--out", out]))
    summary = train.train(train.parse_args(TINY + ["--steps", "15", "--out", out, "--resume"]))
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert summary["git_commit"] and summary["config"]["steps"] == 15 and summary["config"]["head"] == "vq:K=32"
    ranges = [(i["from_step"], i["to_step"]) for i in summary["invocations"]]
    assert ranges == [(0, 10), (10, 15)]
    assert all(i["git_commit"] and i["cpu_model"] and "argv" in i for i in summary["invocations"])
    # a masked model name ("AMD EPYC") covers CPUs of different speed: family, model and vector tier tell them apart
    assert summary["cpu_id"] == cpu_id() and all(i["cpu_id"] == cpu_id() for i in summary["invocations"])
    for key in ("seed", "epochs", "best_epoch", "stop", "history", "precision", "cpu_model", "corpus"):
        assert key in summary


def test_a_killed_run_logs_each_step_once_after_resume(tmp_path):
    out = str(tmp_path / "run")
    train.train(train.parse_args(TINY + ["--steps", "12", "--checkpoint-every", "10", "--out", out]))
    # as if killed after step 12 with the last checkpoint at step 10 (the final save overwrote it: redo it)
    straight = str(tmp_path / "straight")
    train.train(train.parse_args(TINY + ["--steps", "10", "--checkpoint-every", "10", "--out", straight]))
    os.replace(os.path.join(straight, "checkpoint.pt"), os.path.join(out, "checkpoint.pt"))
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write('{"step": 13, "loss": 1.0')  # a torn line
    train.train(train.parse_args(TINY + ["--steps", "15", "--checkpoint-every", "10", "--out", out, "--resume"]))
    steps = [r["step"] for r in records(out) if "loss" in r]
    assert steps == [5, 10, 15]
    with open(os.path.join(out, "log.superseded.jsonl")) as f:
        assert len(f.readlines()) >= 2  # step 12's records and the torn line, kept aside, not deleted


def test_a_run_whose_checkpoint_was_lost_starts_over_with_its_old_log_set_aside(tmp_path):
    out, store = str(tmp_path / "run"), str(tmp_path / "store")
    train.train(train.parse_args(TINY + ["--steps", "10", "--out", out, "--checkpoint-dir", store]))
    before = records(out)
    os.remove(os.path.join(store, "checkpoint.pt"))  # as on a new machine: the run folder is all that is left
    summary = train.train(train.parse_args(TINY + ["--steps", "10", "--out", out, "--checkpoint-dir", store,
                                                    "--resume"]))
    after = records(out)
    assert [r["step"] for r in after if "invocation" in r] == [0]  # only the new start's invocation
    assert [r["step"] for r in after if "loss" in r] == [5, 10]
    assert [(i["from_step"], i["to_step"]) for i in summary["invocations"]] == [(0, 10)]
    with open(os.path.join(out, "log.superseded.jsonl")) as f:
        assert [json.loads(line) for line in f] == before  # the lost run's records, kept aside, not deleted


def test_schedule_decays_on_plateau_and_stops_after_patience():
    cfg = train.TrainConfig(lr=20.0, lr_decay=4.0, plateau=0.01, patience=2)
    schedule = train.Schedule(cfg.lr)
    assert schedule.end_epoch(1, 10, 300.0, cfg) and schedule.lr == 20.0
    assert schedule.end_epoch(2, 20, 200.0, cfg) and schedule.lr == 20.0
    assert schedule.end_epoch(3, 30, 199.5, cfg) and schedule.lr == 5.0  # 0.25% better: decay
    assert not schedule.stopped(cfg)
    assert not schedule.end_epoch(4, 40, 201.0, cfg) and schedule.lr == 1.25  # worse: decay again
    assert schedule.stopped(cfg) and schedule.best_epoch == 3 and schedule.best_valid == 199.5
    assert [h["epoch"] for h in schedule.history] == [1, 2, 3, 4]


def test_full_schedule_evaluates_the_best_model_and_seeds_change_the_run(tmp_path):
    runs = {}
    for seed in (0, 1):
        out = str(tmp_path / f"s{seed}")
        runs[seed] = train.train(train.parse_args(TINY + ["--epochs", "3", "--seed", str(seed), "--out", out]))
    s0 = runs[0]
    assert s0["evaluated"] == "best" and s0["stop"].startswith("epochs") and s0["epochs"] == 3
    assert s0["valid_ppl"] == pytest.approx(min(h["valid_ppl"] for h in s0["history"]))
    assert os.path.exists(tmp_path / "s0" / "best.pt")
    assert runs[0]["test_ppl"] != runs[1]["test_ppl"]


def test_the_best_models_validation_perplexity_is_the_one_measured_when_it_was_saved(tmp_path, monkeypatch):
    """Validation is evaluated once per epoch, not again for the summary: the best model's number was measured
    when best.pt was saved, and evaluating best.pt's weights afresh gives it again."""
    calls = []
    evaluate = train.JointTask.evaluate
    monkeypatch.setattr(train.JointTask, "evaluate", lambda self, split: calls.append(split) or evaluate(self, split))
    out = str(tmp_path / "run")
    summary = train.train(train.parse_args(TINY + ["--epochs", "2", "--out", out]))
    assert calls == ["validation", "validation", "test"] and summary["evaluated"] == "best"
    trainer = train.Trainer(train.parse_args(TINY + ["--epochs", "2", "--out", out, "--resume"]))
    assert trainer.evaluated_model() == "best"
    assert trainer.task.evaluate("validation") == summary["valid_ppl"]


def test_a_run_resumed_only_to_evaluate_reports_the_speed_it_trained_at(tmp_path):
    """A run stopped after its last epoch's checkpoint (before its summary) and resumed trains nothing: its
    summary takes tokens/s and the output share from its last training log line, never 0 tokens/s."""
    out = str(tmp_path / "run")
    first = train.train(train.parse_args(TINY + ["--epochs", "1", "--out", out]))
    os.remove(os.path.join(out, "summary.json"))
    again = train.train(train.parse_args(TINY + ["--epochs", "1", "--out", out, "--resume"]))
    logged = [r for r in records(out) if "tokens_per_s" in r]
    assert again["steps"] == first["steps"] and again["tokens_per_s"] > 0
    assert again["tokens_per_s"] == logged[-1]["tokens_per_s"] and again["output_share"] == logged[-1]["output_share"]


def test_checkpoints_are_loaded_without_running_code(tmp_path):
    import pickle
    out = tmp_path / "run"
    out.mkdir()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    with open(out / "checkpoint.pt", "wb") as f:
        pickle.dump({"format": 2, "x": Payload()}, f)
    with pytest.raises(ValueError, match="resume: .*not a readable vqbench checkpoint"):
        train.train(train.parse_args(TINY + ["--steps", "5", "--out", str(out), "--resume"]))
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("body", [[], ["--body", "gpt", "--heads", "2", "--optimizer", "adamw", "--warmup", "2"]],
                         ids=["lstm", "gpt"])
def test_two_process_ddp_matches_one_process(tmp_path, body):
    # gloo on the CPU; a GPT's windows are shuffled per epoch by a generator every process shares
    common = SMALL + ["--head", "softmax", "--steps", "6", "--log-every", "1", "--dropout", "0",
                      "--eval-every", "1000", "--batch-size", "4", "--threads", "1"] + body
    single = str(tmp_path / "single")
    train.train(train.parse_args(common + ["--out", single]))
    ddp = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                    "-m", "vqbench.train", *common, "--out", ddp], check=True, env=env, timeout=300,
                   capture_output=True)
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-4)


def test_frozen_runs_checkpoint_and_resume_exactly(tmp_path):
    body = str(tmp_path / "body")
    train.train(train.parse_args(SMALL + ["--head", "softmax", "--epochs", "1", "--train-tokens", "4000",
                                          "--out", body]))
    common = SMALL + ["--head", "vq:K=32", "--protocol", "frozen", "--body-from", f"{body}/best.pt",
                      "--frozen-batch", "128", "--log-every", "4", "--checkpoint-every", "6"]
    straight = str(tmp_path / "straight")
    a = train.train(train.parse_args(common + ["--steps", "12", "--out", straight]))
    halves = str(tmp_path / "halves")
    train.train(train.parse_args(common + ["--steps", "6", "--out", halves]))
    b = train.train(train.parse_args(common + ["--steps", "12", "--out", halves, "--resume"]))
    assert losses(halves) == pytest.approx(losses(straight), rel=1e-6)
    assert b["valid_ppl"] == pytest.approx(a["valid_ppl"], rel=1e-9)
    with pytest.raises(ValueError, match="resume: .*frozen_batch"):
        train.train(train.parse_args(common[:-6] + ["--frozen-batch", "64", "--log-every", "4", "--steps", "14",
                                                    "--out", halves, "--resume"]))


def test_each_epoch_records_the_training_seconds_so_far_across_resumes(tmp_path):
    common = SMALL + ["--head", "vq:K=64", "--train-tokens", "3000", "--eval-tokens", "500", "--log-every", "5"]
    out = str(tmp_path / "run")
    start = time.perf_counter()
    first = train.train(train.parse_args(common + ["--epochs", "1", "--out", out]))
    resumed = train.train(train.parse_args(common + ["--epochs", "2", "--out", out, "--resume"]))
    wall = time.perf_counter() - start
    one, two = (h["train_seconds"] for h in resumed["history"])
    assert first["history"][0]["train_seconds"] == one > 0
    assert two > one  # the resumed invocation adds its own steps' seconds, it does not start from zero
    assert two < wall  # evaluation, checkpoints and start-up are not training time


def test_a_run_past_its_stop_time_stops_at_a_checkpoint_and_resumes_exactly(tmp_path):
    """--stop-at in the past: the run stops at its first checkpoint (step 5), writes no summary, logs the stop;
    --resume without it continues to the same losses as a run never stopped."""
    straight = str(tmp_path / "straight")
    train.train(train.parse_args(TINY + ["--steps", "15", "--out", straight]))
    out = str(tmp_path / "run")
    assert train.train(train.parse_args(TINY + ["--steps", "15", "--out", out, "--stop-at", "2000-01-01T00:00"])) == {}
    assert not os.path.exists(os.path.join(out, "summary.json"))
    assert [r["step"] for r in records(out) if "loss" in r] == [5]
    assert any(r.get("stopped_at") == "2000-01-01T00:00" for r in records(out))
    summary = train.train(train.parse_args(TINY + ["--steps", "15", "--out", out, "--resume",
                                                   "--stop-at", "2999-01-01T00:00+00:00"]))
    assert losses(out) == pytest.approx(losses(straight), rel=1e-6)
    assert [(i["from_step"], i["to_step"]) for i in summary["invocations"]] == [(0, 5), (5, 15)]


def test_each_invocation_records_its_wall_seconds_from_before_its_setup(tmp_path, monkeypatch):
    """An invocation stopped by --stop-at records the wall seconds to its last checkpoint, and every invocation's
    seconds count from before the corpus and the task are built (a frozen body's feature pass is part of a run's
    cost), with `started` stamped at that same moment."""
    build = train.TASKS["joint"]

    def slow_setup(*args, **kwargs):
        time.sleep(1.0)
        return build(*args, **kwargs)

    monkeypatch.setitem(train.TASKS, "joint", slow_setup)
    out = str(tmp_path / "run")
    before = time.time()
    train.train(train.parse_args(TINY + ["--steps", "10", "--out", out, "--stop-at", "2000-01-01T00:00"]))
    summary = train.train(train.parse_args(TINY + ["--steps", "10", "--out", out, "--resume"]))
    first, second = summary["invocations"]
    assert (first["from_step"], first["to_step"]) == (0, 5)
    assert first["seconds"] >= 1.0 and second["seconds"] >= 1.0
    started = datetime.datetime.strptime(first["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert int(before) <= started < before + 1.0  # stamped before the setup's second, not after it


def test_a_stop_time_that_is_no_time_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(TINY + ["--out", "x", "--stop-at", "tomorrow"])
    assert "--stop-at: expected an ISO 8601 time" in capsys.readouterr().err


@pytest.mark.parametrize("hidden_grad", [True, False])
def test_the_head_probe_differentiates_the_hidden_states_only_when_a_step_does(hidden_grad):
    import torch
    from vqbench.heads.registry import make_head
    head = make_head("vq:K=8", vocab_size=40, d_model=6)
    hidden, targets = torch.randn(10, 6), torch.randint(0, 40, (10,))
    assert train.time_head(head, hidden, targets, hidden_grad=hidden_grad) > 0
    assert (hidden.grad is not None) is hidden_grad  # a frozen body's step never computes it
    assert all(p.grad is None for p in head.parameters())  # the probe leaves the step's gradients as they were
