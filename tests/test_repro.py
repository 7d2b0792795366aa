"""python -m vqbench.repro: per-unit ratio of two runs' medians and their summary."""

import csv

import pytest

from vqbench import repro
from vqbench.results import COLUMNS


def write(path, times):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for (spec, op), value in times.items():
            row = {c: "" for c in COLUMNS}
            row.update(head=spec.split(":")[0], spec=spec, op=op, metric="time", unit="s", V="100", d="8", N="4",
                       device="cpu", dtype="float32", value=str(value), status="ok")
            writer.writerow(row)


def test_ratios_and_summary(tmp_path, capsys):
    write(tmp_path / "a.csv", {("softmax", "loss"): 0.010, ("vq:K=8", "loss"): 0.002, ("vq:K=8", "train"): 0.004})
    write(tmp_path / "b.csv", {("softmax", "loss"): 0.011, ("vq:K=8", "loss"): 0.002, ("lowrank", "loss"): 0.5})
    out = tmp_path / "repro.md"
    assert repro.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "2 units timed in both" in text and "largest move 1.100" in text and "median 1.050" in text
    with pytest.raises(SystemExit):
        repro.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(out)])  # never overwritten
    assert "2 units" in out.read_text()


def test_files_with_nothing_in_common_are_refused(tmp_path):
    write(tmp_path / "a.csv", {("softmax", "loss"): 0.01})
    write(tmp_path / "b.csv", {("vq:K=8", "loss"): 0.01})
    with pytest.raises(SystemExit):
        repro.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
