"""Every row records which code measured it; report --check names the files measured by other code, and a
change to one head's module stales that head's rows only."""

import csv
import os
import shutil

import pytest

from vqbench import fingerprint, report
from vqbench.results import ResultsFile, read_rows
from vqbench.sweep import Budget, Grid, run_sweep


def test_each_head_covers_its_own_modules_and_the_measuring_code():
    huffman = fingerprint.files_for("hierarchical:tree=huffman")
    classes = fingerprint.files_for("hierarchical")
    assert "baselines/huffman_tree.py" in huffman and "baselines/class_tree.py" not in huffman
    assert "baselines/class_tree.py" in classes and "baselines/huffman_tree.py" not in classes
    assert "vqbench/vq.py" in fingerprint.files_for("vq:K=8") and "vqbench/vq.py" not in huffman
    assert "baselines/chunked_cross_entropy.py" in fingerprint.files_for("softmax")
    for files in (huffman, classes):
        assert {"vqbench/sweep.py", "vqbench/measure.py", "vqbench/ops.py", "vqbench/floors.py",
                "vqbench/head.py"} <= files


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
        f.write("\n# a change\n")
    monkeypatch.setattr(fingerprint, "ROOT", str(copy))
    fingerprint._imports.cache_clear()
    try:
        assert report.main(["--results", str(results_dir), "--check"]) == 1
    finally:
        fingerprint._imports.cache_clear()
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
