"""The compare sweep: schema, skip-on-error, guards, resume after a kill, tables, --from."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vqbench import compare

from vqbench.measuring import ops, sweep
from vqbench.results import COLUMNS, ResultsFile, read_rows
from vqbench.measuring.sweep import Budget, Grid, run_sweep
from vqbench.reporting.tables import build_tables, render

FAST = Budget(min_run_time=0.002)
TINY = dict(vocab=[60], d_model=[16], tokens=[8])


def tiny_sweep(tmp_path, heads, ops=("log_probs", "loss", "train"), budget=FAST, **grid):
    path = str(tmp_path / "rows.csv")
    stats = run_sweep(Grid(heads=heads, ops=ops, **{**TINY, **grid}), ResultsFile(path), budget,
                      threads=1, progress=False)
    return read_rows(path), stats


def test_rows_follow_the_schema_and_counts_agree(tmp_path):
    heads = ["softmax", "softmax:chunk=3", "adaptive", "hierarchical", "hierarchical:tree=huffman",
             "lowrank", "vq:K={4,8}"]
    rows, stats = tiny_sweep(tmp_path, heads, ops=ops.ALL_OPS)
    with open(tmp_path / "rows.csv") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert stats.measured > 0 and stats.skipped == 6  # logits(_into): adaptive, class tree, huffman
    for row in rows:
        for field in ("vqbench_version", "git_commit", "torch_version", "device_name", "cpu_model",
                      "threads", "timestamp"):
            assert row[field], field
        assert row["threads"] == "1" and row["device"] == "cpu" and row["dtype"] == "float32"
    ok = [r for r in rows if r["status"] == "ok"]
    specs = {r["spec"] for r in rows}
    assert {"vq:K=4", "vq:K=8"} <= specs and "K" not in rows[0]
    times = [float(r["value"]) for r in ok if r["metric"] == "time"]
    assert times and all(t > 0 for t in times)
    assert all(float(r["spread"]) >= 0 for r in ok if r["metric"] == "time")
    assert all(int(r["value"]) > 0 for r in ok if r["metric"] == "peak_memory"
               and r["op"] not in ("predict", "logits_into", "log_probs_into"))
    by_unit = {}
    for r in ok:
        by_unit.setdefault((r["spec"], r["op"], r["N"]), {})[r["metric"]] = float(r["value"])
    for (spec, op, _), metrics in by_unit.items():
        if op == "params":
            assert metrics["param_bytes"] == 4 * metrics["params"]
            continue
        if spec == "adaptive" and op == "predict":
            continue
        if op == "decode" and spec.split(":")[0] in ("adaptive", "hierarchical"):
            continue  # a draw runs the products of the class, path or cluster drawn: analytic is the expectation
        assert metrics["flops_analytic"] == metrics["flops_counted"], (spec, op)
    # writing into the reused buffer allocates less than returning a fresh output
    for spec in ("softmax", "lowrank", "vq:K=8"):
        for op in ("logits", "log_probs"):
            assert by_unit[(spec, op + "_into", "8")]["peak_memory"] < by_unit[(spec, op, "8")]["peak_memory"]
    # train counts the backward products too: three times the forward
    assert by_unit[("softmax", "train", "8")]["flops_counted"] == 3 * by_unit[("softmax", "loss", "8")]["flops_counted"]


def test_measured_memory_tracks_the_logits(tmp_path):
    rows, _ = tiny_sweep(tmp_path, ["softmax"], ops=("log_probs",), vocab=[4000], tokens=[64])
    peak = next(int(r["value"]) for r in rows if r["metric"] == "peak_memory")
    logits = 64 * 4000 * 4
    assert logits <= peak <= 4 * logits


def test_invalid_combination_and_failing_op_are_skipped(tmp_path, monkeypatch):
    from vqbench.measuring import op_calls
    real = op_calls.build_loss

    def flaky(head, hidden, target):
        if head.name == "lowrank":
            raise torch.OutOfMemoryError("pretend: out of memory")
        return real(head, hidden, target)

    monkeypatch.setattr(op_calls, "build_loss", flaky)
    # K=1000 of the brace set fits V=2000 but not V=60: that grid point alone is skipped (a K no V fits is
    # refused up front)
    rows, stats = tiny_sweep(tmp_path, ["vq:K={8,1000}", "lowrank", "softmax"], vocab=[60, 2000])
    reasons = {(r["spec"], r["op"]): r["reason"] for r in rows if r["status"] == "skipped" and r["V"] == "60"}
    assert "K" in reasons[("vq:K=1000", "loss")] and reasons[("vq:K=1000", "loss")].startswith("build:")
    assert "out of memory" in reasons[("lowrank", "loss")]
    assert ("lowrank", "train") not in reasons
    assert any(r["spec"] == "softmax" and r["metric"] == "time" for r in rows)


def test_guards_skip_before_trying(tmp_path):
    rows, _ = tiny_sweep(tmp_path, ["softmax"], budget=Budget(memory_bytes=1000, min_run_time=0.002))
    skipped = [r for r in rows if r["op"] != "params"]
    assert skipped and all(r["status"] == "skipped" and "memory guard" in r["reason"] for r in skipped)
    rows, _ = tiny_sweep(tmp_path / "t", ["softmax"], budget=Budget(seconds_per_call=1e-12, min_run_time=0.002))
    assert all("time guard" in r["reason"] for r in rows if r["op"] != "params")


def unit_metric_keys(rows):
    return [(sweep.unit_key(r), r["metric"]) for r in rows]


def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vqbench.compare", "--heads", "softmax", "lowrank", "vq:K=8",
            "--vocab", "200", "400", "--d-model", "16", "--tokens", "4", "8", "--threads", "1",
            "--min-run-time", "0.01", "--out", str(out), "--name", "run", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "run.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(read_rows(str(path))) >= 40:
                break
        except (FileNotFoundError, ValueError):  # not created yet, or its header not yet written
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_rows(str(path))
    assert 40 <= len(partial)
    with open(path, "a") as f:
        f.write("softmax,softmax,loss,ti")        # a half-written line, as a kill can leave
    subprocess.run(args + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = read_rows(str(path))
    keys = unit_metric_keys(resumed)
    assert len(keys) == len(set(keys)), "duplicate rows after resume"
    assert set(unit_metric_keys(partial)) <= set(keys), "rows lost"
    # complete: every (spec, op, V, N) unit of the grid is there
    units = {(r["spec"], r["op"], r["V"], r["N"]) for r in resumed}
    assert len(units) == 3 * 7 * 2 * 2
    # a second resume measures nothing
    before = len(resumed)
    subprocess.run(args + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert len(read_rows(str(path))) == before


def fake_rows():
    base = {c: "" for c in COLUMNS}
    base.update(device="cpu", dtype="float32", d="64", N="32", status="ok", threads="2",
                torch_version="2.13.0", device_name="Test CPU", git_commit="abc")
    rows = []
    for spec, scale in [("softmax", 1.0), ("vq:K=16", 0.25)]:
        for v in (1000, 2000):
            rows.append({**base, "spec": spec, "head": spec.split(":")[0], "V": str(v), "op": "loss",
                         "metric": "time", "unit": "s", "value": str(scale * v * 1e-6),
                         "spread": str(0.5 * scale * v * 1e-6 if spec == "vq:K=16" else 0)})
            rows.append({**base, "spec": spec, "head": spec.split(":")[0], "V": str(v), "op": "loss",
                         "metric": "flops_analytic", "unit": "FLOP", "value": str(v * 1e6)})
            rows.append({**base, "spec": spec, "head": spec.split(":")[0], "V": str(v), "op": "loss",
                         "metric": "flops_counted", "unit": "FLOP", "value": str(v * 1e6)})
    rows.append({**base, "spec": "adaptive", "head": "adaptive", "V": "1000", "op": "loss",
                 "status": "skipped", "reason": "memory guard: needs about 9 GiB"})
    return rows


def test_tables_one_unit_ratio_spread_and_skips():
    tables = build_tables(fake_rows())
    captions = [t.caption for t in tables]
    time_table = next(t for t in tables if t.caption.startswith("Latency"))
    assert "in ms" in time_table.caption and "Test CPU" in time_table.caption
    assert "float32" in time_table.caption and "2 threads" in time_table.caption
    assert "torch 2.13.0" in time_table.caption and "N=32" in time_table.caption
    assert time_table.headers == ["head", "V=1000", "V=2000"]
    assert time_table.body[0] == ["softmax", "1.00", "2.00"]
    assert time_table.body[1][1].endswith("†") and "†" in time_table.caption
    assert time_table.body[2][1] == "skip[1]" and "memory guard" in time_table.notes[0]
    ratio = next(t for t in tables if t.caption.startswith("Speed-up"))
    assert ratio.body[1] == ["vq:K=16", "4.00x", "4.00x"]
    flops = next(t for t in tables if "FLOPs" in t.caption)
    assert flops.body[0][1] == "1.00 / 1.00" and "GFLOP" in flops.caption
    assert len(captions) == len(set(captions))


@pytest.mark.parametrize("fmt,marker", [("github", "| head"), ("latex", "\\begin{table}"),
                                        ("csv", "head,V=1000,V=2000"), ("plain", "head")])
def test_render_formats(fmt, marker):
    text = render(build_tables(fake_rows()), fmt)
    assert marker in text and "Latency" in text


def test_from_file_rerenders_without_measuring(tmp_path, capsys, monkeypatch):
    path = tmp_path / "stored.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(fake_rows())
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("measured"))
    assert compare.main(["--from", str(path), "--format", "latex"]) == 0
    printed = capsys.readouterr().out
    assert "\\begin{table}" in printed and "\\caption{Latency" in printed


def test_cli_writes_files_and_rejects_bad_arguments(tmp_path, capsys):
    assert compare.main(["--heads", "softmax", "vq:K=4", "--vocab", "50", "--d-model", "8", "--tokens", "4",
                         "--ops", "loss", "--out", str(tmp_path), "--min-run-time", "0.001",
                         "--no-progress", "--format", "csv"]) == 0
    assert (tmp_path / "compare.csv").exists() and (tmp_path / "compare.md").exists()
    assert (tmp_path / "compare.tables.csv").exists()
    text = (tmp_path / "compare.md").read_text()
    assert "Regenerate: `python -m vqbench.compare" in text
    # no machine path in a file that may be committed: tmp_path lies outside the repository, so its last folders only
    shown = f"<outside>/{tmp_path.parent.name}/{tmp_path.name}"
    assert f"--out {tmp_path}" not in text and f"`{tmp_path}" not in text and f"--out {shown} " in text
    assert f"Rows: `<outside>/{tmp_path.name}/compare.csv`" in text
    for bad in (["--heads", "nope"], ["--vocab", "0"], ["--ops", "fly"]):
        with pytest.raises(SystemExit):
            compare.main(bad)
    assert "nope" in capsys.readouterr().err


def test_from_file_selects_rows(tmp_path, capsys):
    path = tmp_path / "stored.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(fake_rows())
    assert compare.main(["--from", str(path), "--vocab", "2000", "--heads", "vq", "--out", str(tmp_path),
                         "--name", "picked"]) == 0
    printed = capsys.readouterr().out
    assert "V=2000" in printed and "V=1000" not in printed and "| softmax" not in printed
    assert "vq:K=16" in (tmp_path / "picked.md").read_text()
    assert compare.main(["--from", str(tmp_path / "missing.csv")]) == 2


def test_a_file_with_the_old_k_column_still_reads_and_resumes(tmp_path):
    """Files written while K was a column of the schema: rows read as before, and a resumed sweep appends
    under the file's own header (K empty: the canonical spec carries it)."""
    from vqbench.results import LEGACY_COLUMNS
    path = tmp_path / "old.csv"
    old = {c: "" for c in LEGACY_COLUMNS}
    old.update(head="vq", spec="vq:K=8", op="params", metric="params", unit="count", V="60", d="16", K="8", N="8",
               device="cpu", dtype="float32", value="128", status="ok")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, LEGACY_COLUMNS)
        writer.writeheader()
        writer.writerows([old, {**old, "metric": "param_bytes", "unit": "bytes", "value": "512"}])
    assert [r["K"] for r in read_rows(str(path))] == ["8", "8"]
    with ResultsFile(str(path)) as results:
        run_sweep(Grid(heads=["vq:K=8"], ops=("loss",), **TINY), results, FAST, threads=1, resume=True,
                  progress=False)
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == LEGACY_COLUMNS
    rows = read_rows(str(path))
    assert {(r["op"], r["metric"]) for r in rows if r["spec"] == "vq:K=8"} >= {("params", "params"), ("loss", "time")}
    assert len([r for r in rows if r["op"] == "params"]) == 2  # the stored unit was resumed, not measured again


def test_tf32_is_a_measured_precision_set_while_measuring_and_restored(tmp_path, monkeypatch):
    from vqbench.measuring import ceilings
    seen = []
    measure_unit, gemm_rate = sweep.measure_unit, ceilings.gemm_rate

    def spy_unit(head, base, *args, **kwargs):
        seen.append((base["dtype"], "op", torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32))
        return measure_unit(head, base, *args, **kwargs)

    def spy_gemm(device, dtype, *args):
        seen.append((str(dtype), "gemm", torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32))
        return gemm_rate(device, dtype, *args)

    monkeypatch.setattr(sweep, "measure_unit", spy_unit)
    monkeypatch.setattr(ceilings, "gemm_rate", spy_gemm)
    monkeypatch.setattr(ceilings.CeilingMeter, "AGREE", float("inf"))  # rates that agreed would be reused
    torch.set_float32_matmul_precision("medium")  # the caller's setting, to be restored
    try:
        rows, _ = tiny_sweep(tmp_path, ["softmax"], ops=("loss",), dtypes=("float32", "tf32"))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert {r["dtype"] for r in rows} == {"float32", "tf32"}
    ops_seen = {(dtype, precision, tf32) for dtype, kind, precision, tf32 in seen if kind == "op"}
    assert ops_seen == {("float32", "highest", False), ("tf32", "high", True)}
    # each precision has its own GEMM ceilings, before and after its head: none reused across precisions
    gemms = [(precision, tf32) for _, kind, precision, tf32 in seen if kind == "gemm"]
    assert sorted(gemms) == [("high", True)] * 2 + [("highest", False)] * 2
    assert "tf32" in compare.build_parser().parse_args(["--dtype", "float32", "tf32", "bfloat16"]).dtype


def test_speed_ups_divide_by_the_fastest_exact_softmax_of_the_same_precision_and_name_it():
    rows = fake_rows()
    time_row = next(r for r in rows if r["spec"] == "softmax" and r["metric"] == "time" and r["V"] == "2000")
    rows.append({**time_row, "spec": "softmax:pad=64", "value": str(1e-3)})        # 2x faster at V=2000
    rows.append({**time_row, "spec": "softmax:bias=1", "value": str(0.1e-3)})      # another model: not a baseline
    rows.append({**time_row, "spec": "softmax:pad=64", "dtype": "tf32", "value": str(0.2e-3)})  # another table
    ratio = next(t for t in build_tables(rows) if t.caption.startswith("Speed-up") and t.key.dtype == "float32")
    body = {line[0]: line[1:] for line in ratio.body}
    assert body["vq:K=16"] == ["4.00x", "2.00x"] and body["softmax"] == ["1.00x", "0.50x"]
    assert body["softmax:pad=64"] == ["", "1.00x"]
    assert "V=1000: softmax; V=2000: softmax:pad=64" in ratio.caption
