"""Every row records which code measured it; report --check names the files measured by other code, and a
change to one head's module stales that head's rows only."""

import csv
import os
import shutil

import pytest
import torch

from vqbench.measuring import fingerprint

from vqbench import report
from vqbench.results import ResultsFile, read_rows
from vqbench.measuring.sweep import Budget, Grid, run_sweep


def test_each_head_covers_its_own_modules_and_the_measuring_code():
    huffman = fingerprint.files_for("hierarchical:tree=huffman")
    classes = fingerprint.files_for("hierarchical")
    assert "baselines/huffman_tree.py" in huffman and "baselines/class_tree.py" not in huffman
    assert "baselines/class_tree.py" in classes and "baselines/huffman_tree.py" not in classes
    assert "vqbench/heads/vq.py" in fingerprint.files_for("vq:K=8") and "vqbench/heads/vq.py" not in huffman
    assert "baselines/chunked_cross_entropy.py" in fingerprint.files_for("softmax")
    for files in (huffman, classes):
        assert {"vqbench/measuring/measure.py", "vqbench/measuring/op_calls.py", "vqbench/measuring/ceilings.py",
                "vqbench/heads/contract.py"} <= files
        # code no timed call runs: naming, the op records and counts, floors, the schema, tables, the sweep loop
        assert not files & {"vqbench/heads/registry.py", "vqbench/measuring/ops.py", "vqbench/reporting/floors.py",
                            "vqbench/results.py", "vqbench/reporting/tables.py", "vqbench/report.py",
                            "vqbench/measuring/sweep.py"}


@pytest.fixture
def results_dir(tmp_path):
    path = tmp_path / "headline.csv"
    grid = Grid(heads=["vq:K=8", "hierarchical:tree=huffman"], vocab=[60], d_model=[8], tokens=[4], ops=["loss"])
    with ResultsFile(str(path)) as results:
        run_sweep(grid, results, Budget(min_run_time=0.002), threads=1, progress=False, ceilings="small")
    return tmp_path


def test_fresh_rows_pass_the_check(results_dir, capsys):
    rows = read_rows(str(results_dir / "headline.csv"))
    assert all(len(r["code_fingerprint"]) == 16 for r in rows)
    assert report.main(["--results", str(results_dir), "--check"]) == 0
    assert not (results_dir / "REPORT.md").exists()  # --check writes nothing


def test_a_changed_head_module_stales_that_heads_rows_only(results_dir, capsys, monkeypatch, tmp_path):
    # a copy of the project's files in which huffman_tree.py changed
    copy = tmp_path / "tree"
    for package in ("vqbench", "baselines"):
        shutil.copytree(os.path.join(fingerprint.ROOT, package), copy / package)
    with open(copy / "baselines" / "huffman_tree.py", "a") as f:
        f.write("\nCHANGED = 1\n")
    monkeypatch.setattr(fingerprint, "ROOT", str(copy))
    fingerprint._imports.cache_clear()
    assert _check(results_dir) == 1
    err = capsys.readouterr().err
    assert "headline.csv" in err and "hierarchical:tree=huffman" in err and "vq:K=8" not in err


def test_rows_without_a_fingerprint_are_stale(results_dir, capsys):
    path = results_dir / "headline.csv"
    with open(path) as f:
        rows = list(csv.DictReader(f))
    rows[0]["code_fingerprint"] = ""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert report.main(["--results", str(results_dir), "--check"]) == 1
    assert "1 of" in capsys.readouterr().err


def test_a_figure_drawn_from_a_changed_file_is_stale(results_dir, capsys):
    from vqbench import plot
    figures = results_dir / "figures"
    assert plot.main([str(results_dir / "headline.csv"), "--out", str(figures), "--d-model", "8"]) == 0
    drawn = sorted(figures.glob("*.png"))
    assert drawn and all(plot.SOURCE_KEY in report.png_text(str(p)) for p in drawn)
    assert report.main(["--results", str(results_dir), "--check"]) == 0
    with open(results_dir / "headline.csv", "a") as f:
        f.write("\n")  # any change to a source file
    assert report.main(["--results", str(results_dir), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{drawn[0]}: " in err and "has changed since it was drawn" in err


def test_a_figure_without_sources_is_stale(results_dir, capsys):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, _ = plt.subplots()
    fig.savefig(results_dir / "old.png")
    plt.close(fig)
    assert report.main(["--results", str(results_dir), "--check"]) == 1
    assert "old.png: records no source files" in capsys.readouterr().err


def test_a_report_not_rebuilt_from_the_results_is_stale(results_dir, capsys):
    assert report.main(["--results", str(results_dir)]) == 0
    assert report.main(["--results", str(results_dir), "--check"]) == 0
    with open(results_dir / "REPORT.md", "a") as f:
        f.write("a sentence no results file backs\n")
    assert report.main(["--results", str(results_dir), "--check"]) == 1
    assert "REPORT.md: not built from today's results" in capsys.readouterr().err


def _copy_of_project(tmp_path, monkeypatch):
    copy = tmp_path / "tree"
    for package in ("vqbench", "baselines"):
        shutil.copytree(os.path.join(fingerprint.ROOT, package), copy / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "ROOT", str(copy))
    fingerprint._imports.cache_clear()
    return copy


def _check(results_dir) -> int:
    """report --check's exit code against the copy of the project, its import cache cleared afterwards."""
    try:
        return report.main(["--results", str(results_dir), "--check"])
    finally:
        fingerprint._imports.cache_clear()


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("module, addition", [
    ("vqbench/heads/registry.py", "\ndef a_new_function():\n    return DEFAULT_HEADS\n"),
    ("vqbench/reporting/floors.py", "\ndef a_new_function():\n    return 1\n"),
    ("vqbench/reporting/tables.py", "\ndef a_new_function():\n    return 1\n"),
    ("vqbench/report.py", "\ndef a_new_function():\n    return 1\n"),
    ("vqbench/results.py", "\ndef a_new_function():\n    return 1\n"),
    ("vqbench/measuring/ops.py", "\ndef a_new_function():\n    return 1\n"),
    ("vqbench/measuring/sweep.py", "\ndef a_new_function():\n    return 1\n"),
])
def test_a_refactor_of_code_no_timed_call_runs_stales_no_row(results_dir, monkeypatch, tmp_path, module, addition):
    copy = _copy_of_project(tmp_path, monkeypatch)
    with open(copy / module, "a") as f:
        f.write(addition)
    assert _check(results_dir) == 0


def test_a_new_default_head_stales_no_row(results_dir, monkeypatch, tmp_path):
    copy = _copy_of_project(tmp_path, monkeypatch)
    _edit(copy / "baselines" / "lowrank.py", '    TITLE = ',
          '    COMPARED = ("lowrank", "lowrank:rank=8")\n    TITLE = ')
    assert _check(results_dir) == 0


def test_docstrings_comments_imports_and_counts_are_not_code_that_ran(results_dir, monkeypatch, tmp_path):
    """Rewording a docstring, moving an import or correcting a count leaves every row fresh."""
    copy = _copy_of_project(tmp_path, monkeypatch)
    vq = copy / "vqbench" / "heads" / "vq.py"
    text = vq.read_text()
    first_def = text.index("\nclass ")
    vq.write_text(text[:first_def] + "\n# a comment\nimport math as _unused_math\n" + text[first_def:])
    contract = copy / "vqbench" / "heads" / "contract.py"
    _edit(contract, '"""The contract every output layer follows.', '"""The head contract.')
    _edit(contract, "        return self.num_parameters()\n\n    def materialised_bytes",
          "        return 0 + self.num_parameters()\n\n    def materialised_bytes")
    assert _check(results_dir) == 0


def test_a_change_to_the_vq_computation_stales_exactly_the_vq_rows(results_dir, monkeypatch, tmp_path, capsys):
    copy = _copy_of_project(tmp_path, monkeypatch)
    _edit(copy / "vqbench" / "heads" / "vq.py", "def _loss(self, hidden, target):",
          "def _loss(self, hidden, target):\n        hidden = hidden + 0")
    assert _check(results_dir) == 1
    err = capsys.readouterr().err
    stale = [line for line in err.splitlines() if "measured by code other than" in line]
    assert len(stale) == 1 and "vq:K=8 (" in stale[0] and "huffman" not in stale[0]


def test_a_change_to_the_timing_code_stales_every_row(results_dir, monkeypatch, tmp_path, capsys):
    copy = _copy_of_project(tmp_path, monkeypatch)
    _edit(copy / "vqbench" / "measuring" / "measure.py", "    if warmup:\n", "    if warmup and True:\n")
    assert _check(results_dir) == 1
    err = capsys.readouterr().err
    assert "vq:K=8 (" in err and "hierarchical:tree=huffman (" in err


def test_a_stale_file_listed_as_waiting_passes_the_check_and_the_report_says_so(results_dir, monkeypatch,
                                                                                   tmp_path, capsys):
    import json
    copy = _copy_of_project(tmp_path, monkeypatch)
    _edit(copy / "vqbench" / "measuring" / "measure.py", "    if warmup:\n", "    if warmup and True:\n")
    (results_dir / report.PENDING_FILE).write_text(json.dumps({"headline.csv": "the timing loop changed"}))
    try:
        assert report.main(["--results", str(results_dir), "--check"]) == 0
        assert "waits for re-measurement (the timing loop changed)" in capsys.readouterr().err
        assert "the timing loop changed" in report.build_report(str(results_dir))
    finally:
        monkeypatch.undo()
        fingerprint._imports.cache_clear()
    # listed but fresh: the caveat would be false
    assert report.main(["--results", str(results_dir), "--check"]) == 1
    assert "every row is fresh" in capsys.readouterr().err


def test_every_project_file_a_timed_call_runs_is_in_its_fingerprint():
    """Trace each op of each head at a small size: the project files whose code ran inside the timed callable
    are all covered by the spec's fingerprint, and no counting method ran (they are left out of it)."""
    import sys
    from vqbench.measuring.measure import make_inputs
    from vqbench.measuring.ops import ALL_OPS, make_op
    from vqbench.heads.registry import make_head
    for spec in ("softmax", "softmax:chunk=16", "adaptive", "hierarchical", "hierarchical:tree=huffman",
                 "lowrank", "vq:K=8", "vq:K=8,path=scatter"):
        head = make_head(spec, 60, 8)
        hidden, target = make_inputs(60, 8, 4, "cpu", torch.float32)
        covered = {os.path.join(fingerprint.ROOT, f) for f in fingerprint.files_for(spec)}
        for op in ALL_OPS:
            try:
                fn = make_op(head, op, hidden, target)
            except NotImplementedError:
                continue
            ran = set()

            def trace(frame, event, arg):
                if event == "call":
                    ran.add((os.path.abspath(frame.f_code.co_filename), frame.f_code.co_name))
            sys.setprofile(trace)
            try:
                fn()
            finally:
                sys.setprofile(None)
            packages = tuple(os.path.join(fingerprint.ROOT, p) + os.sep for p in fingerprint.PACKAGES)
            project = {(f, name) for f, name in ran if f.startswith(packages)}
            assert {f for f, _ in project} <= covered, (spec, op, {f for f, _ in project} - covered)
            assert not {name for _, name in project} & fingerprint.COUNTING_METHODS, (spec, op)


def test_a_heads_description_is_not_code_that_ran(results_dir, monkeypatch, tmp_path):
    """A head's title, citations and examples feed README, the report and the tests, never a timed call."""
    copy = _copy_of_project(tmp_path, monkeypatch)
    _edit(copy / "vqbench" / "heads" / "vq.py", '    TITLE = "VQ-Logits"', '    TITLE = "VQ-Logits (renamed)"')
    assert _check(results_dir) == 0


def test_remeasure_stale_measures_again_exactly_the_units_whose_code_changed(results_dir, monkeypatch, tmp_path,
                                                                              capsys):
    """compare --resume --remeasure-stale: the VQ rows (vq.py changed) move to headline.csv.stale-TIME and are
    measured again; the Huffman rows stay as they were; afterwards every row is fresh."""
    from vqbench import compare
    path = results_dir / "headline.csv"
    before = read_rows(str(path))
    copy = _copy_of_project(tmp_path, monkeypatch)
    _edit(copy / "vqbench" / "heads" / "vq.py", "def _loss(self, hidden, target):",
          "def _loss(self, hidden, target):\n        hidden = hidden + 0")
    from vqbench.measuring import sweep
    monkeypatch.setattr(sweep, "code_fingerprint", fingerprint.current_fingerprint)  # the edited copy's code
    argv = ["--heads", "vq:K=8", "hierarchical:tree=huffman", "--vocab", "60", "--d-model", "8", "--tokens", "4",
            "--ops", "loss", "--out", str(results_dir), "--name", "headline", "--threads", "1",
            "--min-run-time", "0.002", "--ceilings", "small", "--no-progress",
            "--cpu-allocator", before[0]["cpu_allocator"]]  # as the fixture measured (a resumed file's setting)
    with pytest.raises(SystemExit):
        compare.main(argv + ["--remeasure-stale"])  # without --resume: refused
    assert "--remeasure-stale: needs --resume" in capsys.readouterr().err
    assert compare.main(argv + ["--resume", "--remeasure-stale"]) == 0
    aside = list(results_dir.glob("headline.csv.stale-*"))
    assert len(aside) == 1
    moved = read_rows(str(aside[0]))
    assert moved and {r["spec"] for r in moved} == {"vq:K=8"}
    after = read_rows(str(path))
    kept = [r for r in before if r["spec"] != "vq:K=8"]
    assert [r for r in after if r["spec"] != "vq:K=8"] == kept
    new = {r["code_fingerprint"] for r in after if r["spec"] == "vq:K=8"}
    assert len(new) == 1 and new.isdisjoint(r["code_fingerprint"] for r in moved)  # measured by the changed code
    for leftover in results_dir.glob("headline.csv.stale-*"):
        os.replace(leftover, tmp_path / leftover.name)  # not a results file: out of the checked folder
    assert _check(results_dir) == 0


def test_remeasure_measures_the_grids_units_again_side_by_side_and_keeps_the_rest(results_dir, capsys):
    """compare --resume --remeasure: every unit of the run's grid (here the VQ head's, code unchanged) moves to
    headline.csv.superseded-TIME and is measured again in this run; the file's other units (Huffman) stay as
    they were, and the moved rows are kept whole."""
    from vqbench import compare
    path = results_dir / "headline.csv"
    before = read_rows(str(path))
    argv = ["--heads", "vq:K=8", "--vocab", "60", "--d-model", "8", "--tokens", "4", "--ops", "loss",
            "--out", str(results_dir), "--name", "headline", "--threads", "1", "--min-run-time", "0.002",
            "--ceilings", "small", "--no-progress", "--cpu-allocator", before[0]["cpu_allocator"]]
    with pytest.raises(SystemExit):
        compare.main(argv + ["--remeasure"])  # without --resume: refused
    assert "--remeasure: needs --resume" in capsys.readouterr().err
    assert compare.main(argv + ["--resume"]) == 0  # plain resume: the units are complete, nothing measured
    assert read_rows(str(path)) == before and not list(results_dir.glob("headline.csv.superseded-*"))
    assert compare.main(argv + ["--resume", "--remeasure"]) == 0
    assert "--remeasure: the grid's earlier rows are kept in" in capsys.readouterr().err
    aside = list(results_dir.glob("headline.csv.superseded-*"))
    assert len(aside) == 1
    moved, after = read_rows(str(aside[0])), read_rows(str(path))
    assert moved == [r for r in before if r["spec"] == "vq:K=8"]
    assert [r for r in after if r["spec"] != "vq:K=8"] == [r for r in before if r["spec"] != "vq:K=8"]
    again = [r for r in after if r["spec"] == "vq:K=8"]
    assert {(r["op"], r["metric"]) for r in again} == {(r["op"], r["metric"]) for r in moved}
    assert min(r["timestamp"] for r in again) >= max(r["timestamp"] for r in moved)  # measured in this run
