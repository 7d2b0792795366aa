"""Hostile use of the command-line tools and their files: nothing a user measured is deleted or silently
mixed, every bad flag or file is one line naming it (exit code 2, no traceback), checkpoints never run code.
"""

import csv
import fcntl
import glob
import json
import os

import pytest

from vqbench import compare, oracle, plot, profile, quality, report, train
from vqbench.training.data import default_corpus_dir

from conftest import TINY, one_line_error, run_main

HAS_CORPUS = os.path.isdir(default_corpus_dir())


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def measured(tmp_path):
    assert compare.main(TINY + ["--out", str(tmp_path), "--name", "r"]) == 0
    return tmp_path / "r.csv"


# ----------------------------------------------------------------------------- compare: the user's files

def test_a_rerun_without_resume_refuses_and_keeps_every_row(measured, capsys):
    before = measured.read_bytes()
    assert compare.main(TINY + ["--heads", "vq:K=8", "--out", str(measured.parent), "--name", "r"]) == 2
    one_line_error(capsys, "--name", "exists", "--resume")
    assert measured.read_bytes() == before


def test_overwrite_keeps_a_backup(measured, capsys):
    before = measured.read_bytes()
    assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--overwrite"]) == 0
    backups = glob.glob(str(measured) + ".bak-*")
    assert len(backups) == 1 and open(backups[0], "rb").read() == before


def test_a_file_being_written_is_locked(measured, capsys):
    with open(str(measured) + ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = measured.read_bytes()
        assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--resume"]) == 2
        one_line_error(capsys, "--name", "another vqbench process")
        assert measured.read_bytes() == before


def test_an_incomplete_unit_is_measured_again_and_its_lines_kept_aside(measured, capsys):
    lines = measured.read_text().splitlines(keepends=True)
    loss_rows = [i for i, line in enumerate(lines) if ",loss,time," in line]
    assert loss_rows
    cut = lines[:loss_rows[0] + 1]  # the time row of the loss unit survives, its other metrics are lost
    measured.write_text("".join(cut))
    assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--resume"]) == 0
    metrics = [r["metric"] for r in rows(measured) if r["op"] == "loss"]
    from vqbench.results import TIMED_METRICS
    assert sorted(metrics) == sorted(TIMED_METRICS)
    aside = glob.glob(str(measured) + ".incomplete-*")
    assert len(aside) == 1 and ",loss,time," in open(aside[0]).read()


def test_a_torn_last_line_is_kept_aside_not_read(measured):
    with open(measured, "a") as f:
        f.write("vq,vq:K=8,loss,time,s,50,8")
    assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--resume"]) == 0
    assert all(r["status"] in ("ok", "skipped") for r in rows(measured))
    assert any("vq,vq:K=8,loss,time,s,50,8" in open(p).read() for p in glob.glob(str(measured) + ".incomplete-*"))


@pytest.mark.parametrize("flag, value", [("--threads", "2"), ("--cpu-allocator", "default"), ("--seed", "3")])
def test_resume_refuses_rows_of_other_settings(measured, capsys, flag, value):
    argv = [a for a in TINY if a not in ("--threads", "1")] if flag == "--threads" else list(TINY)
    before = measured.read_bytes()
    assert compare.main(argv + [flag, value, "--out", str(measured.parent), "--name", "r", "--resume"]) == 2
    one_line_error(capsys, "--resume", flag.lstrip("-").replace("-", "_"))
    assert measured.read_bytes() == before


def test_a_foreign_file_is_never_resumed_into(tmp_path, capsys):
    path = tmp_path / "r.csv"
    path.write_text("name,score\nalice,3\n")
    assert compare.main(TINY + ["--out", str(tmp_path), "--name", "r", "--resume"]) == 2
    one_line_error(capsys, "--name", "columns")
    assert path.read_text() == "name,score\nalice,3\n"


@pytest.mark.parametrize("flags, name", [
    (["--name", "../escape"], "--name"), (["--name", "/tmp/abs"], "--name"), (["--name", ".hidden"], "--name"),
    (["--name", ""], "--name"), (["--min-run-time", "0"], "--min-run-time"), (["--min-run-time", "-1"], "--min-run-time"),
    (["--min-run-time", "nan"], "--min-run-time"), (["--time-budget-s", "0"], "--time-budget-s"),
    (["--time-budget-s", "inf"], "--time-budget-s"), (["--memory-budget-gib", "-2"], "--memory-budget-gib"),
    (["--seed", "-1"], "--seed"), (["--threads", "0"], "--threads"), (["--vocab", "0"], "--vocab"),
    (["--tokens", "-3"], "--tokens"), (["--heads", "vq:K=abc"], "--heads"), (["--heads", "nope"], "--heads"),
    (["--resume", "--overwrite"], "--overwrite"), (["--ops", "fly"], "--ops"), (["--dtype", "int8"], "--dtype"),
    (["--device", "tpu"], "--device"),
])
def test_bad_compare_flags_are_one_line(tmp_path, capsys, flags, name):
    assert run_main(compare.main, TINY + ["--out", str(tmp_path)] + flags) == 2
    one_line_error(capsys, name)
    assert not glob.glob(str(tmp_path / "*.csv"))


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert compare.main(TINY + ["--out", str(blocker / "sub")]) == 2
    one_line_error(capsys, "--out")


def not_a_results_file(tmp_path, content):
    """tmp_path/in.csv as a folder ("dir"), bytes, text, or absent ("missing")."""
    path = tmp_path / "in.csv"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content != "missing":
        path.write_text(content)
    return path


@pytest.mark.parametrize("content", ["a,b\n1,2\n", b"\x00\x81\xff" * 50, "", "dir"])
def test_from_refuses_what_is_not_a_results_file(tmp_path, capsys, content):
    path = not_a_results_file(tmp_path, content)
    assert compare.main(["--from", str(path), "--out", str(tmp_path), "--name", "t"]) == 2
    one_line_error(capsys, "--from")
    assert not (tmp_path / "t.md").exists()


def test_from_with_a_selection_that_matches_nothing_writes_nothing(measured, capsys):
    assert compare.main(["--from", str(measured), "--vocab", "12345", "--out", str(measured.parent),
                         "--name", "sel"]) == 2
    one_line_error(capsys, "--from", "no rows")
    assert not (measured.parent / "sel.md").exists()


# ----------------------------------------------------------------------------- plot, report, profile

@pytest.mark.parametrize("extra, name", [(["--d-model", "999"], "--d-model"), (["--vocab", "7"], "--vocab"),
                                         (["--device", "cuda"], "--device")])
def test_plot_on_values_absent_from_the_file(measured, tmp_path, capsys, extra, name):
    assert run_main(plot.main, [str(measured), "--out", str(tmp_path / "fig")] + extra) == 2
    one_line_error(capsys, name)


@pytest.mark.parametrize("content", ["a,b\n1,2\n", b"\x00\xff" * 40, "missing", "dir"])
def test_plot_refuses_what_is_not_a_results_file(tmp_path, capsys, content):
    path = not_a_results_file(tmp_path, content)
    assert run_main(plot.main, [str(path), "--out", str(tmp_path / "fig")]) == 2
    one_line_error(capsys)
    assert not (tmp_path / "fig").exists() or not os.listdir(tmp_path / "fig")


def test_report_on_a_missing_folder(capsys):
    assert run_main(report.main, ["--results", "/nonexistent/results"]) == 2
    one_line_error(capsys, "--results")


@pytest.mark.parametrize("flags, name", [
    (["--head", "nope"], "--head"), (["--head", "vq:K=999"], "--head"), (["--head", "softmax", "--vocab", "0"], "--vocab"),
    (["--head", "softmax", "--active", "0"], "--active"), (["--head", "softmax", "--wait", "-1"], "--wait"),
    (["--head", "softmax", "--device", "cuda"], "--device"), (["--head", "adaptive", "--op", "logits"], "--op"),
])
def test_bad_profile_flags_are_one_line(tmp_path, capsys, flags, name):
    argv = ["--vocab", "100", "--d-model", "8", "--tokens", "4", "--logdir", str(tmp_path)] + flags
    assert run_main(profile.main, argv) == 2
    one_line_error(capsys, name)


# ----------------------------------------------------------------------------- train and quality

TRAIN = ["--d-model", "16", "--layers", "1", "--bptt", "10", "--batch-size", "4", "--train-tokens", "2000",
         "--eval-tokens", "400", "--threads", "1", "--head", "vq:K=16"]


@pytest.mark.parametrize("flags, name", [
    (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--clip", "0"], "--clip"),
    (["--dropout", "1"], "--dropout"), (["--dropout", "-0.1"], "--dropout"), (["--lr-decay", "0.5"], "--lr-decay"),
    (["--plateau", "1"], "--plateau"), (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--bptt", "0"], "--bptt"), (["--layers", "0"], "--layers"), (["--patience", "0"], "--patience"),
    (["--threads", "0"], "--threads"), (["--optimizer", "lion"], "--optimizer"), (["--protocol", "x"], "--protocol"),
    (["--steps", "-1"], "--steps"), (["--seed", "-2"], "--seed"), (["--log-every", "0"], "--log-every"),
    (["--body-from", "/nonexistent.pt", "--protocol", "frozen"], "--body-from"),
    (["--protocol", "frozen"], "--body-from"),
])
def test_bad_train_flags_are_refused_before_any_work(tmp_path, capsys, flags, name):
    out = tmp_path / "run"
    assert run_main(train.main, TRAIN + ["--out", str(out)] + flags) == 2
    one_line_error(capsys, name)
    assert not out.exists()


def test_a_missing_corpus_is_one_line(tmp_path, capsys):
    assert train.main(TRAIN + ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "corpus")


@pytest.mark.skipif(not HAS_CORPUS, reason="no WikiText-2")
@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"\x80\x04K\x01."])
def test_a_corrupt_checkpoint_is_one_line_and_left_alone(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    assert train.main(TRAIN + ["--steps", "2", "--out", str(out), "--resume"]) == 2
    one_line_error(capsys, "resume", "checkpoint")
    assert (out / "checkpoint.pt").read_bytes() == content


@pytest.mark.skipif(not HAS_CORPUS, reason="no WikiText-2")
def test_a_corrupt_body_checkpoint_is_one_line(tmp_path, capsys):
    body = tmp_path / "body.pt"
    body.write_bytes(b"garbage")
    assert train.main(TRAIN + ["--protocol", "frozen", "--body-from", str(body), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "body_from")


def test_quality_with_a_missing_plan(tmp_path, capsys):
    assert quality.main(["plan", "--plan", str(tmp_path / "none.json")]) == 2
    one_line_error(capsys, "plan")


def test_quality_table_with_a_damaged_summary(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"runs": [{"name": "softmax", "head": "softmax", "group": "reference", "seeds": [0]}]}))
    run = tmp_path / "results" / "runs" / "joint-softmax-s0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{ half")
    assert quality.main(["table", "--plan", str(plan), "--results", str(tmp_path / "results")]) == 2
    one_line_error(capsys, "summary.json")


def test_oracle_never_overwrites_its_output(tmp_path, capsys):
    out = tmp_path / "oracle.csv"
    out.write_text("measured before\n")
    assert oracle.main(["--model", str(tmp_path / "m.pt"), "--out", str(out)]) == 2
    one_line_error(capsys, "out", "exists")
    assert out.read_text() == "measured before\n"


@pytest.mark.parametrize("flags", [["--K", "0"], ["--chunk", "0"], ["--search", "0"], ["--sweeps", "0"]])
def test_bad_oracle_flags(tmp_path, capsys, flags):
    assert run_main(oracle.main, ["--model", "m.pt", "--out", str(tmp_path / "o.csv")] + flags) == 2
    one_line_error(capsys, flags[0] + ": must be >= 1")
