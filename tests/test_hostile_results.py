"""Hostile results files (issue 32): --overwrite under a running writer, --resume of files a kill, a
spreadsheet or a hand left behind, locks, planted links, Ctrl-C and a full disk. Nothing measured is lost,
nothing is followed outside --out, every refusal is one line.
"""

import csv
import fcntl
import glob
import io
import json
import os
import signal
import subprocess
import sys

import pytest

from vqbench import compare, profile, quality, results, train
from vqbench.results import COLUMNS, PARAMS_METRICS, TIMED_METRICS, ResultsFile, read_rows

from conftest import TINY, one_line_error, run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def measured(tmp_path):
    assert compare.main(TINY + ["--out", str(tmp_path), "--name", "r"]) == 0
    return tmp_path / "r.csv"


# ----------------------------------------------------------------------------- synthetic results files

def unit(spec, op="loss", metrics=None, **cells):
    """The ok rows of one unit (every metric of its op unless metrics is given)."""
    metrics = metrics if metrics is not None else (PARAMS_METRICS if op == "params" else TIMED_METRICS)
    base = dict.fromkeys(COLUMNS, "")
    base.update(head=spec.split(":")[0], spec=spec, op=op, V="50", d="8", N="4", device="cpu", dtype="float32",
                status="ok", value="1.0", threads="1", seed="0")
    return [{**base, "metric": m, **cells} for m in metrics]


def csv_text(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue()


HEADER = ",".join(COLUMNS) + "\n"


def records(path):
    """The records of a results-like file as tuples (header excluded), multi-line cells included."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [tuple(r) for r in list(csv.reader(f))[1:] if r]


def aside_records(path):
    return [r for p in glob.glob(f"{path}.incomplete-*") for r in records(p)]


# ----------------------------------------------------------------------------- --overwrite

def test_a_second_overwrite_while_the_first_writes_refuses_before_touching_the_file(measured, capsys):
    before = measured.read_bytes()
    with open(str(measured) + ".lock", "a") as held:  # the first --overwrite run, still measuring
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--overwrite"]) == 2
    one_line_error(capsys, "--name", "another vqbench process")
    assert measured.read_bytes() == before
    assert not glob.glob(str(measured) + ".bak-*")


def test_two_overwrites_in_one_second_keep_two_backups(measured, monkeypatch):
    monkeypatch.setattr(results.time, "strftime", lambda *a: "20260101-000000")
    first = measured.read_bytes()
    assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--overwrite"]) == 0
    second = measured.read_bytes()
    assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--overwrite"]) == 0
    backups = sorted(glob.glob(str(measured) + ".bak-*"))
    assert len(backups) == 2
    assert sorted(open(b, "rb").read() for b in backups) == sorted([first, second])


def test_a_backup_name_already_taken_is_never_replaced(measured, monkeypatch):
    monkeypatch.setattr(results.time, "strftime", lambda *a: "20260101-000000")
    taken = measured.parent / "r.csv.bak-20260101-000000"
    taken.write_text("an earlier backup\n")
    before = measured.read_bytes()
    assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--overwrite"]) == 0
    assert taken.read_text() == "an earlier backup\n"
    others = [b for b in glob.glob(str(measured) + ".bak-*") if b != str(taken)]
    assert [open(b, "rb").read() for b in others] == [before]


def test_the_backup_is_made_only_once_the_lock_is_held(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + csv_text(unit("vq:K=8")))
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(lock_is_held(path))
        return real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace)
    with ResultsFile(str(path), overwrite=True) as rf:
        assert rf.backup and os.path.exists(rf.backup)
    assert seen == [True]


def test_no_lock_file_is_left_behind(measured):
    assert not os.path.exists(str(measured) + ".lock")
    assert sorted(os.listdir(measured.parent)) == ["r.csv", "r.load.jsonl", "r.md"]


# ----------------------------------------------------------------------------- --resume: set-aside

def lock_is_held(path) -> bool:
    lock = str(path) + ".lock"
    if not os.path.exists(lock):
        return False
    with open(lock, "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def test_the_lock_is_held_while_incomplete_units_are_set_aside(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + csv_text(unit("vq:K=8") + unit("softmax", metrics=("time",))))
    held = []
    real = ResultsFile._set_aside

    def spy(self, *args):
        held.append(lock_is_held(path))
        return real(self, *args)

    monkeypatch.setattr(ResultsFile, "_set_aside", spy)
    ResultsFile(str(path)).close()
    assert held == [True]
    assert aside_records(path)


@pytest.mark.parametrize("op, missing", [("loss", m) for m in TIMED_METRICS] + [("params", m) for m in PARAMS_METRICS])
def test_a_unit_missing_any_one_metric_is_incomplete(tmp_path, op, missing):
    path = tmp_path / "r.csv"
    needed = PARAMS_METRICS if op == "params" else TIMED_METRICS
    partial = unit("vq:K=8", op=op, metrics=[m for m in needed if m != missing])
    whole = unit("softmax", op=op)
    path.write_text(HEADER + csv_text(partial + whole))
    with ResultsFile(str(path)) as rf:
        assert ("vq:K=8", op, "50", "8", "4", "cpu", "float32") not in rf.done
        assert ("softmax", op, "50", "8", "4", "cpu", "float32") in rf.done
    assert records(path) == records_of(whole)
    assert sorted(aside_records(path)) == sorted(records_of(partial))


def records_of(rows):
    return [tuple(r) for r in csv.reader(io.StringIO(csv_text(rows)))]


def hostile_body(kind):
    """(text, complete rows, incomplete rows): a complete unit, the hostile detail, an incomplete unit, a
    complete unit."""
    a = unit("softmax", reason="a\nspreadsheet\nline break" if kind == "multiline" else "")
    b = unit("vq:K=8", metrics=("time", "floor"))
    c = unit("adaptive")
    if kind == "blank":
        text = HEADER + csv_text(a) + "\n" + csv_text(b + c)
    elif kind == "crlf":
        text = (HEADER + csv_text(a + b + c)).replace("\n", "\r\n")
    else:
        text = HEADER + csv_text(a + b + c)
    return text, a + c, b


@pytest.mark.parametrize("kind", ["blank", "multiline", "crlf"])
def test_resume_pairs_records_not_lines(tmp_path, kind):
    path = tmp_path / "r.csv"
    text, complete, incomplete = hostile_body(kind)
    path.write_bytes(text.encode())
    with ResultsFile(str(path)) as rf:
        assert ("softmax", "loss", "50", "8", "4", "cpu", "float32") in rf.done
        assert ("adaptive", "loss", "50", "8", "4", "cpu", "float32") in rf.done
        assert ("vq:K=8", "loss", "50", "8", "4", "cpu", "float32") not in rf.done
    assert sorted(records(path)) == sorted(records_of(complete))  # no complete row set aside
    assert sorted(aside_records(path)) == sorted(records_of(incomplete))  # no row lost


def test_a_multiline_cell_survives_a_resume_unchanged(tmp_path):
    path = tmp_path / "r.csv"
    text, _, _ = hostile_body("multiline")
    path.write_text(text)
    ResultsFile(str(path)).close()
    reasons = {r["reason"] for r in read_rows(str(path))}
    assert "a\nspreadsheet\nline break" in reasons


def test_an_unterminated_quote_at_the_end_is_set_aside(tmp_path):
    path = tmp_path / "r.csv"
    whole = unit("softmax")
    path.write_text(HEADER + csv_text(whole) + 'vq,vq:K=8,loss,time,s,50,8,,4,cpu,float32,1.0,,ok,"half a reas')
    with ResultsFile(str(path)) as rf:
        assert ("softmax", "loss", "50", "8", "4", "cpu", "float32") in rf.done
    assert records(path) == records_of(whole)
    assert "half a reas" in open(glob.glob(str(path) + ".incomplete-*")[0]).read()


def test_two_resumes_in_one_second_keep_two_aside_files(tmp_path, monkeypatch):
    monkeypatch.setattr(results.time, "strftime", lambda *a: "20260101-000000")
    path = tmp_path / "r.csv"
    first, second = unit("vq:K=8", metrics=("time",)), unit("vq:K=9", metrics=("floor",))
    path.write_text(HEADER + csv_text(first))
    ResultsFile(str(path)).close()
    with open(path, "a") as f:
        f.write(csv_text(second))
    ResultsFile(str(path)).close()
    files = sorted(glob.glob(str(path) + ".incomplete-*"))
    assert len(files) == 2
    assert sorted(records(files[0]) + records(files[1])) == sorted(records_of(first + second))


def test_a_link_planted_at_the_resume_temporary_file_is_not_followed(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + csv_text(unit("softmax") + unit("vq:K=8", metrics=("time",))))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    for name in ("r.csv.tmp", ".r.csv.tmp"):
        os.symlink(victim, tmp_path / name)
    ResultsFile(str(path)).close()
    assert victim.read_text() == "keep me\n"
    assert records(path) == records_of(unit("softmax"))


def test_a_byte_order_mark_is_read_as_a_results_file(tmp_path, capsys):
    path = tmp_path / "r.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + csv_text(unit("softmax", op="params"))).encode())
    assert {r["head"] for r in read_rows(str(path))} == {"softmax"}
    with ResultsFile(str(path)) as rf:  # resumed, not refused as a foreign file
        assert ("softmax", "params", "50", "8", "4", "cpu", "float32") in rf.done


def test_a_cell_over_128_kib_is_read(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + csv_text(unit("softmax", op="params", reason="x" * (200 << 10))))
    assert len(read_rows(str(path))[0]["reason"]) == 200 << 10
    with ResultsFile(str(path)) as rf:
        assert ("softmax", "params", "50", "8", "4", "cpu", "float32") in rf.done


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_lock_path_that_cannot_be_a_lock_is_one_line(measured, capsys, kind):
    lock = str(measured) + ".lock"
    victim = measured.parent / "victim"
    if kind == "folder":
        os.mkdir(lock)
    else:
        os.symlink(victim, lock)
    before = measured.read_bytes()
    assert compare.main(TINY + ["--out", str(measured.parent), "--name", "r", "--resume"]) == 2
    one_line_error(capsys, "--name", ".lock")
    assert measured.read_bytes() == before and not victim.exists()


# ----------------------------------------------------------------------------- flags that become paths

@pytest.mark.parametrize("flags, name", [
    (["--format", "nonsense"], "--format"), (["--format", "../../x"], "--format"), (["--format", "a/b"], "--format"),
    (["--name", "n" * 300], "--name"), (["--name", "a\0b"], "--name"), (["--name", ".."], "--name"),
    (["--threads", "99999999999999999999"], "--threads"), (["--threads", "5000"], "--threads"),
])
def test_bad_path_flags_are_one_line_before_any_file(tmp_path, capsys, flags, name):
    assert run_main(compare.main, TINY + ["--out", str(tmp_path)] + flags) == 2
    one_line_error(capsys, name)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["../escape", "a/b", "x" * 300, 7, ""])
def test_a_plan_run_name_that_is_not_one_folder_name_is_one_line(tmp_path, capsys, name):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"runs": [{"name": name, "head": "softmax", "group": "reference", "seeds": [0]}]}))
    assert run_main(quality.main, ["plan", "--plan", str(plan)]) == 2
    one_line_error(capsys, "plan", "run name")


def test_a_profile_logdir_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "traces"
    blocker.write_text("x")
    monkeypatch.setattr(profile, "profile_op", lambda args: pytest.fail("profiled before checking --logdir"))
    argv = ["--head", "softmax", "--vocab", "100", "--d-model", "8", "--tokens", "4", "--logdir", str(blocker)]
    assert run_main(profile.main, argv) == 2
    one_line_error(capsys, "--logdir")
    assert blocker.read_text() == "x"


def test_a_huge_thread_count_in_train_is_one_line(tmp_path, capsys):
    argv = ["--head", "softmax", "--threads", "99999999999999999999", "--out", str(tmp_path / "run")]
    assert run_main(train.main, argv) == 2
    one_line_error(capsys, "--threads")
    assert not (tmp_path / "run").exists()


def test_a_link_planted_at_the_tables_file_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "r.tables.csv")
    os.symlink(victim, out / "r.md")
    assert compare.main(TINY + ["--out", str(out), "--name", "r", "--format", "csv"]) == 0
    assert victim.read_text() == "keep me\n"
    assert not os.path.islink(out / "r.tables.csv") and "# Table 1." in (out / "r.tables.csv").read_text()


def test_from_never_writes_over_its_input(measured, capsys):
    md = measured.parent / "t.md"
    os.symlink(measured, md)  # t.md is the input under another name
    before = measured.read_bytes()
    assert compare.main(["--from", str(measured), "--out", str(measured.parent), "--name", "t"]) == 2
    one_line_error(capsys, "--name", "input")
    assert measured.read_bytes() == before


def test_from_into_an_out_that_is_a_file_is_one_line(measured, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert compare.main(["--from", str(measured), "--out", str(blocker), "--name", "t"]) == 2
    one_line_error(capsys, "--out")


def test_from_into_an_unwritable_out_is_one_line(measured, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr(compare.os, "access", lambda path, mode: False)  # root ignores chmod: a read-only mount
    assert compare.main(["--from", str(measured), "--out", str(out), "--name", "t"]) == 2
    one_line_error(capsys, "--out", "not writable")
    assert os.listdir(out) == []


def test_from_a_fifo_is_one_line(tmp_path, capsys):
    fifo = tmp_path / "in.csv"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("blocked reading a FIFO"))
    signal.alarm(10)
    try:
        assert compare.main(["--from", str(fifo), "--out", str(tmp_path), "--name", "t"]) == 2
    finally:
        signal.alarm(0)
    one_line_error(capsys, "--from", "regular file")


def test_from_a_file_with_a_byte_order_mark_renders(tmp_path, measured):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + measured.read_bytes())
    assert compare.main(["--from", str(bom), "--heads", "vq:K=8", "--out", str(tmp_path), "--name", "t"]) == 0
    assert "vq:K=8" in (tmp_path / "t.md").read_text()


# ----------------------------------------------------------------------------- interrupts and a full disk

def test_ctrl_c_in_compare_is_one_line_and_exit_130(measured, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "run_sweep", interrupted)
    before = measured.read_bytes()
    assert run_main(compare.main, TINY + ["--out", str(measured.parent), "--name", "r", "--resume"]) == 130
    one_line_error(capsys, "interrupted", "--resume")
    assert measured.read_bytes() == before and not os.path.exists(str(measured) + ".lock")


def test_ctrl_c_in_train_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupted)
    assert run_main(train.main, ["--head", "softmax", "--out", str(tmp_path / "run")]) == 130
    one_line_error(capsys, "interrupted", "--resume")


def run_limited(code, limit_bytes, cwd):
    """Run python code under a file-size limit (ulimit -f)."""
    preamble = ("import resource; resource.setrlimit(resource.RLIMIT_FSIZE, "
                f"({limit_bytes}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n")
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-c", preamble + code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_file_size_limit_while_measuring_is_one_line(tmp_path):
    argv = TINY + ["--heads", "softmax", "vq:K=8", "--out", str(tmp_path), "--name", "r"]
    done = run_limited(f"import sys; from vqbench import compare; sys.exit(compare.main({argv!r}))", 3000, tmp_path)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    err = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "File too large" in err[-1] and "--resume" in err[-1]


def test_a_file_size_limit_during_resume_changes_nothing(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + csv_text(unit("softmax") * 4 + unit("vq:K=8", metrics=("time",))))
    before = path.read_bytes()
    argv = TINY + ["--out", str(tmp_path), "--name", "r", "--resume"]
    code = f"import sys; from vqbench import compare; sys.exit(compare.main({argv!r}))"
    done = run_limited(code, len(before) // 2, tmp_path)
    assert done.returncode in (1, 2), (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["r.csv"]


def test_a_header_only_file_left_by_a_stopped_run_does_not_block_a_rerun(tmp_path):
    (tmp_path / "r.csv").write_text(HEADER)
    assert compare.main(TINY + ["--out", str(tmp_path), "--name", "r"]) == 0
    assert {r["op"] for r in read_rows(str(tmp_path / "r.csv"))} == {"params", "loss"}


def test_a_file_with_rows_still_blocks_a_rerun(tmp_path, capsys):
    (tmp_path / "r.csv").write_text(HEADER + csv_text(unit("softmax", op="params")))
    before = (tmp_path / "r.csv").read_bytes()
    assert compare.main(TINY + ["--out", str(tmp_path), "--name", "r"]) == 2
    one_line_error(capsys, "--name", "exists")
    assert (tmp_path / "r.csv").read_bytes() == before


def test_a_second_overwrite_process_leaves_the_running_sweep_and_every_row_alone(measured, capsys):
    """The reproduction of issue 32: `compare --overwrite &` and, while it runs, another `--overwrite`."""
    import time

    original = measured.read_bytes()
    slow = [a if a != "0.002" else "0.3" for a in TINY] + ["--heads", "softmax", "vq:K=8", "vq:K=9", "vq:K=10"]
    argv = slow + ["--out", str(measured.parent), "--name", "r", "--overwrite"]
    code = f"import sys; from vqbench import compare; sys.exit(compare.main({argv!r}))"
    first = subprocess.Popen([sys.executable, "-c", code], cwd=measured.parent, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": REPO})
    try:
        deadline = time.time() + 120
        while not lock_is_held(measured) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock_is_held(measured), "the first sweep never took its lock"
        assert run_main(compare.main, TINY + ["--out", str(measured.parent), "--name", "r", "--overwrite"]) == 2
        one_line_error(capsys, "--name", "another vqbench process")
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    [backup] = glob.glob(str(measured) + ".bak-*")
    assert open(backup, "rb").read() == original
    assert {r["spec"] for r in read_rows(str(measured))} == {"softmax", "vq:K=8", "vq:K=9", "vq:K=10"}


@pytest.mark.parametrize("cell", [dict(value="fast"), dict(N="four"), dict(spread="wide")])
def test_from_a_file_with_a_non_numeric_cell_is_one_line(tmp_path, capsys, cell):
    source = tmp_path / "in.csv"
    source.write_text(HEADER + csv_text(unit("softmax", **cell) + unit("softmax", op="params")))
    assert run_main(compare.main, ["--from", str(source), "--out", str(tmp_path), "--name", "t"]) == 2
    one_line_error(capsys, "--from", "not a number")
    assert not (tmp_path / "t.md").exists()


def test_from_a_file_without_provenance_columns_renders(tmp_path):
    kept = ["head", "spec", "op", "metric", "unit", "V", "d", "K", "N", "device", "dtype", "value", "status"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, kept, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(unit("softmax") + unit("softmax", op="params"))
    (tmp_path / "in.csv").write_text(buffer.getvalue())
    assert compare.main(["--from", str(tmp_path / "in.csv"), "--out", str(tmp_path), "--name", "t"]) == 0
    assert "softmax" in (tmp_path / "t.md").read_text()
