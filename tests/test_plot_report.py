"""Figures and the report, from stored result rows (no measuring)."""

import csv
import os

from vqbench import plot, report
from vqbench.results import COLUMNS, ResultsFile
from vqbench.measuring.sweep import Budget, Grid, run_sweep


def sweep_file(path):
    grid = Grid(heads=["softmax", "vq:K=8", "adaptive"], vocab=[64, 256], d_model=[16], tokens=[4, 16],
                ops=("logits", "loss", "train", "log_probs"))
    run_sweep(grid, ResultsFile(str(path)), Budget(min_run_time=0.002), threads=1, progress=False)
    return path


def test_plot_writes_legible_figures(tmp_path, capsys):
    rows = sweep_file(tmp_path / "rows.csv")
    out = tmp_path / "figures"
    assert plot.main([str(rows), "--out", str(out), "--vocab", "256"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "latency_train_d16.png" in names and "params_d16.png" in names
    assert "memory_train_V256_d16.png" in names
    assert all((out / n).stat().st_size > 10_000 for n in names)
    assert str(out / "params_d16.png") in capsys.readouterr().out


def test_colours_are_fixed_per_spec():
    a = plot.colours(["vq:K=8", "softmax", "adaptive"])
    b = plot.colours(["adaptive", "vq:K=8", "softmax", "adaptive"])
    assert a == b and a["softmax"][0] == plot.PALETTE[0]


def test_report_from_stored_results(tmp_path):
    sweep_file(tmp_path / "cpu-sweep.csv")
    headline = tmp_path / "headline.csv"
    with open(tmp_path / "cpu-sweep.csv") as src, open(headline, "w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, COLUMNS)
        writer.writeheader()
        for row in reader:
            if row["V"] == "256" and row["N"] == "16":
                writer.writerow({**row, "spec": row["spec"].replace("vq:K=8", "vq:K=1024")})
    (tmp_path / "figures").mkdir()
    assert report.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "REPORT.md").read_text()
    for heading in ("## Environment", "## Methods", "## Paper claims vs measured", "## Headline configuration"):
        assert heading in text
    assert "VQ-Logits" in text and "6x faster" in text and "not measured yet" in text
    bib = (tmp_path / "REFERENCES.bib").read_text()
    for key in ("shao2025vqlogits", "grave2017efficient", "mikolov2011extensions", "sainath2013lowrank"):
        assert key in bib and key in text


def test_the_pareto_frontier_keeps_only_points_nothing_beats():
    points = [(6_000_000, 1.0), (1_000_000, 0.98), (200_000, 1.5), (240_000, 1.45), (250_000, 1.6),
              (6_600_000, 1.2), (200_000, 1.7)]
    assert plot.pareto_frontier(points) == [(200_000, 1.5), (240_000, 1.45), (1_000_000, 0.98)]
    assert plot.pareto_frontier([]) == []


def test_gpu_ratios_carry_the_unpadded_softmax_caveat_until_measured_again():
    from vqbench.results import read_rows
    rows = read_rows(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                                  "archive", "cuda-headline.csv"))
    gpu = [line for line in report.claims_table([], [], [], cuda=rows).splitlines() if ", GPU |" in line]
    assert len(gpu) == 8 and all("caveat: softmax ran unpadded at V=50257, without TF32, at 12% of its measured "
                                 "bfloat16 ceiling" in line for line in gpu)
    padded = [{**r, "spec": "softmax:pad=64"} for r in rows if r["spec"] == "softmax"]
    tf32 = [{**r, "dtype": "tf32"} for r in rows if r["spec"] == "softmax"]
    for remeasured in (rows + padded, rows + tf32):
        assert report.gpu_softmax_caveat(remeasured) == ""
        assert "caveat" not in report.claims_table([], [], [], cuda=remeasured)


def test_gpu_speed_ups_are_against_the_fastest_exact_softmax_and_name_it():
    from vqbench.results import read_rows
    rows = read_rows(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                                  "archive", "cuda-headline.csv"))
    vq = next(r for r in rows if r["spec"] == "vq:K=1024" and r["op"] == "logits" and r["metric"] == "time"
              and r["dtype"] == "bfloat16")
    faster = [{**vq, "spec": "softmax:pad=64", "head": "softmax", "value": str(2 * float(vq["value"]))},
              {**vq, "spec": "softmax:bias=1", "head": "softmax", "value": str(float(vq["value"]))}]  # another model
    lines = report.claims_table([], [], [], cuda=rows + faster).splitlines()
    logits = next(line for line in lines if line.startswith("| logit computation, GPU") and "bfloat16" in line)
    assert "| 2.0x (" in logits and "vq:K=1024 vs softmax:pad=64, the fastest exact softmax" in logits
    train = next(line for line in lines if line.startswith("| training step") and "float32" in line)
    assert "vs peer:impl=compile, the fastest exact softmax" in train  # 14.24 ms, softmax's 14.43 ms


def test_a_speed_up_is_the_median_of_its_runs_in_shuffled_order_with_their_range():
    from vqbench import report
    base = {"status": "ok", "metric": "time", "dtype": "float32", "cpu_allocator": "default", "op": "loss"}

    def run(soft, vq):
        return [{**base, "spec": "softmax", "value": str(soft)}, {**base, "spec": "vq:K=8", "value": str(vq)}]
    one = report.speed_cell([run(2.0, 1.0)], "loss", "vq:K=8", "float32")
    assert one == "2.0x (one run: its spread over runs is not measured)"
    three = report.speed_cell([run(2.0, 1.0)], "loss", "vq:K=8", "float32", runs=[run(3.0, 1.0), run(2.5, 1.0)])
    assert three == "2.5x (median of 3 runs in shuffled head order, 2.0-3.0x)"


def test_order_seed_shuffles_the_measuring_order_and_keeps_every_unit(tmp_path):
    from vqbench.measuring.sweep import Budget, Grid, run_sweep
    from vqbench.results import ResultsFile, read_rows
    grid = Grid(heads=["softmax", "lowrank", "vq:K={4,8}", "adaptive"], vocab=[60], d_model=[8], tokens=[4],
                ops=("loss",))
    orders = []
    for seed in (None, 3):
        path = str(tmp_path / f"r{seed}.csv")
        with ResultsFile(path) as results:
            run_sweep(grid, results, Budget(min_run_time=0.002), threads=1, progress=False, ceilings="small",
                      order_seed=seed)
        rows = read_rows(path)
        orders.append(list(dict.fromkeys(r["spec"] for r in rows)))
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_gpu_claims_cite_the_archived_rows_and_say_so_until_a_gpu_measures_again(tmp_path):
    import shutil
    archived = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "archive",
                            "cuda-headline.csv")
    (tmp_path / "archive").mkdir()
    shutil.copy(archived, tmp_path / "archive" / "cuda-headline.csv")
    gpu = [line for line in report.build_report(str(tmp_path)).splitlines() if ", GPU |" in line]
    assert len(gpu) == 8 and all(line.endswith("| results/archive/cuda-headline.csv |") for line in gpu)
    assert all("archived: measured at fe70938 by code that has changed since" in line for line in gpu)
    shutil.copy(archived, tmp_path / "cuda-headline.csv")  # measured again: the fresh file, no archive note
    gpu = [line for line in report.build_report(str(tmp_path)).splitlines() if ", GPU |" in line]
    assert len(gpu) == 8 and all(line.endswith("| results/cuda-headline.csv |") and "archived" not in line
                                 for line in gpu)


def test_a_speed_up_over_rows_measured_in_two_sessions_says_so():
    """Unchanged ops move between sessions (other machine, page state): a ratio whose two rows come from
    different commits, CPU models or hours apart names both, and one from a single session says nothing."""
    from vqbench import report
    base = {"status": "ok", "metric": "time", "dtype": "float32", "cpu_allocator": "default", "op": "loss",
            "git_commit": "aaaaaaa1111", "cpu_model": "AMD EPYC", "timestamp": "2026-12-02T14:00:00+00:00"}
    soft = {**base, "spec": "softmax", "value": "2.0"}
    same = [soft, {**base, "spec": "vq:K=8", "value": "1.0", "timestamp": "2026-12-02T15:30:00+00:00"}]
    assert report.speed_cell([same], "loss", "vq:K=8", "float32") == \
        "2.0x (one run: its spread over runs is not measured)"
    for moved in ({"git_commit": "bbbbbbb2222"}, {"cpu_model": "Intel Xeon"},
                  {"timestamp": "2026-12-02T18:00:01+00:00"}):
        apart = [soft, {**base, "spec": "vq:K=8", "value": "1.0", **moved}]
        cell = report.speed_cell([apart], "loss", "vq:K=8", "float32", runs=[same])
        assert cell.startswith("2.0x (median of 2 runs") and "rows measured apart: softmax at aaaaaaa, " \
            "2026-12-02T14:00; vq:K=8 at " in cell, cell
    decode = [{**soft, "op": "decode", "N": "1"}, {**base, "spec": "vq:K=8", "op": "decode", "N": "1", "value": "0.5",
                                                    "git_commit": "bbbbbbb2222"}]
    line, = report._decode_claims(decode, "vq:K=8")
    assert "4.0x faster" in line and "rows measured apart" in line
    assert "apart" not in report._decode_claims([{**r, "git_commit": "c"} for r in decode], "vq:K=8")[0]
