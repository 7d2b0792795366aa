"""A new user's first hour (issue 32): the test suite and the main job leave the repository as it was, and
committed files name no machine's folders (no absolute paths).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from vqbench import compare, train
from vqbench.training.data import default_corpus_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--heads", "vq:K=8", "--vocab", "50", "--d-model", "8", "--tokens", "4", "--ops", "loss",
        "--threads", "1", "--no-progress", "--ceilings", "small", "--min-run-time", "0.002"]
#: an absolute path: a slash after a separator (not inside a word, a unit such as tokens/s, or a URL) and
#: at least two components
ABSOLUTE = re.compile(r"(?:^|(?<=[\s\"'`(=\[,]))/[\w.-]+/[\w./-]*")
#: documents that name a system tool by its path (`/usr/bin/time`), not a folder of this machine
TOOLS = {"/usr/bin/time"}


def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


IN_GIT = git("rev-parse", "--git-dir").returncode == 0
needs_git = pytest.mark.skipif(not IN_GIT, reason="not a git checkout")


def absolute_paths(text):
    return sorted(set(ABSOLUTE.findall(text)) - TOOLS)


ESCAPING = re.compile(r"(?:^|(?<=[\s\"'`(=\[,]))(?:\.\./)+[\w.-][\w./-]*")


def escaping_paths(text):
    """Paths relative to the repository's root that climb out of it (../../tmp/run): a machine's folders
    as surely as an absolute path. Not for markdown, whose links are relative to their own file."""
    return sorted(p for p in set(ESCAPING.findall(text))
                  if os.path.relpath(os.path.join(REPO, p), REPO).startswith(".."))


def test_the_absolute_path_pattern():
    assert absolute_paths('"checkpoint_dir": "/work/ckpt/run-s0"') == ["/work/ckpt/run-s0"]
    assert absolute_paths("Rows: `/root/out/r.csv`.") == ["/root/out/r.csv"]
    assert absolute_paths("12 tokens/s/core, https://example.org/a/b, ../ckpt/run, N/A, `/usr/bin/time`") == []
    assert escaping_paths('"--out", "../../tmp/q/runs/r", "runs/a/../b", "<outside>/ck/r"') == ["../../tmp/q/runs/r"]


@needs_git
def test_no_committed_text_file_under_results_holds_an_absolute_path():
    found = {}
    for path in git("ls-files", "-z", "results").stdout.split("\0"):
        if not path or path.endswith((".png", ".pdf")):
            continue
        try:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                text = f.read()
            hits = absolute_paths(text) + ([] if path.endswith(".md") else escaping_paths(text))
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        if hits:
            found[path] = hits[:3]
    assert not found, found


def test_relative_path_and_argv():
    from vqbench.measuring.provenance import relative_argv, relative_path
    here = os.getcwd()
    assert relative_path(os.path.join(here, "runs", "r")) == os.path.join("runs", "r")
    assert not os.path.isabs(relative_path("/elsewhere/ckpt"))
    # outside the repository: the run folder and file only, never the folders above them
    assert relative_path("/tmp/q/runs/joint-s0/best.pt") == "<outside>/joint-s0/best.pt"
    assert relative_path("../../tmp/ck/joint-s0") == "<outside>/ck/joint-s0"
    assert relative_path(os.path.join(here, "a", "..", "runs")) == "runs"
    assert relative_path("runs/r") == "runs/r" and relative_path(None) is None and relative_path(3) == 3
    argv = relative_argv(["--out", os.path.join(here, "o"), f"--checkpoint-dir={here}/c", "--heads", "vq:K=8"])
    assert argv == ["--out", "o", "--checkpoint-dir=c", "--heads", "vq:K=8"]


def test_compare_records_no_absolute_path(tmp_path):
    assert compare.main(TINY + ["--out", str(tmp_path), "--name", "r"]) == 0
    text = (tmp_path / "r.md").read_text()
    header = text.split("**Table")[0]
    # tmp_path lies outside the repository: recorded by its last folders only, never the machine's layout above
    assert f"<outside>/{tmp_path.name}/r.csv" in header
    assert not absolute_paths(header) and not escaping_paths(header)


@pytest.mark.skipif(not os.path.isdir(default_corpus_dir()), reason="no WikiText-2")
def test_train_records_no_absolute_path(tmp_path, monkeypatch):
    out, checkpoints = tmp_path / "run", tmp_path / "ckpt"
    argv = ["--d-model", "16", "--layers", "1", "--bptt", "10", "--batch-size", "4", "--train-tokens", "2000",
            "--eval-tokens", "400", "--threads", "1", "--head", "softmax", "--steps", "2",
            "--out", str(out), "--checkpoint-dir", str(checkpoints)]
    monkeypatch.setattr(sys, "argv", ["vqbench.train", *argv])
    assert train.main(argv) == 0
    for name in ("summary.json", "log.jsonl"):
        text = (out / name).read_text()
        assert not absolute_paths(text) and not escaping_paths(text), (name, absolute_paths(text)[:3])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["checkpoint_dir"] == f"<outside>/{tmp_path.name}/ckpt"  # outside the repository


@needs_git
def test_the_default_output_is_ignored_by_git():
    out = compare.build_parser().get_default("out")
    paths = [os.path.join(out, name) for name in ("compare.csv", "compare.md", "compare.csv.bak-1")]
    assert git("check-ignore", *paths).stdout.split() == paths
    assert not git("ls-files", out).stdout.strip()


def test_the_main_job_leaves_only_its_own_files(tmp_path, monkeypatch):
    """Its rows, its tables and its machine-load record (vqbench.measuring.busy), under runs/: no lock."""
    monkeypatch.chdir(tmp_path)
    assert compare.main(TINY) == 0
    found = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files)
    assert found == [os.path.join("runs", name) for name in ("compare.csv", "compare.load.jsonl", "compare.md")]


def tracked_state():
    """git status and the modification time of every tracked file (a rewrite with the same bytes shows
    only in the time)."""
    files = [f for f in git("ls-files", "-z").stdout.split("\0") if f]
    times = {f: os.stat(os.path.join(REPO, f)).st_mtime_ns for f in files if os.path.exists(os.path.join(REPO, f))}
    return git("status", "--porcelain", "--untracked-files=all").stdout, times


#: tests that write files: the asv run (machine.json), the main job, plots and reports
SUBSET = ["tests/test_asv_benchmarks.py::test_asv_runs_one_small_combination_in_this_environment",
          "tests/test_plot_report.py", "tests/test_hostile_files.py::test_overwrite_keeps_a_backup"]


@needs_git
@pytest.mark.skipif(os.environ.get("VQBENCH_INNER_SUITE") == "1", reason="the subset itself")
def test_the_test_suite_leaves_the_repository_as_it_was():
    before = tracked_state()
    env = {**os.environ, "VQBENCH_INNER_SUITE": "1", "PYTHONPATH": REPO,  # this checkout's vqbench
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}  # finds asv
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    after = tracked_state()
    assert after[0] == before[0]
    changed = [f for f, t in after[1].items() if before[1].get(f) != t]
    assert not changed, changed[:10]


def test_the_recorded_commit_is_dirty_for_code_only(tmp_path):
    """A row's git_commit says '+dirty' when the code that measured differs from its commit; results and
    Markdown prose edited beside a running measurement do not make it so."""
    from vqbench.measuring.provenance import git_commit

    def run(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    (tmp_path / "results").mkdir()
    for name in ("code.py", "README.md", "results/rows.csv"):
        (tmp_path / name).write_text("first\n")
    run("init", "-q")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    clean = git_commit(str(tmp_path))
    assert clean and "+dirty" not in clean and clean != "unknown"
    (tmp_path / "README.md").write_text("edited\n")
    (tmp_path / "results" / "rows.csv").write_text("edited\n")
    git_commit.cache_clear()
    assert git_commit(str(tmp_path)) == clean
    (tmp_path / "code.py").write_text("edited\n")
    git_commit.cache_clear()
    assert git_commit(str(tmp_path)) == clean + "+dirty"
    git_commit.cache_clear()
