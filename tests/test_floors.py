"""Floors: the least traffic and FLOPs of an op against the machine's measured ceilings."""

import math

import pytest
import torch

from vqbench import make_head
from vqbench.floors import Ceilings, floor_seconds, least_traffic, measure_ceilings
from vqbench.sweep import COLUMNS, ResultsFile
from vqbench.tables import build_tables, render


def test_least_traffic_counts_inputs_once_and_the_output_once():
    head = make_head("softmax", 1000, 64)
    params = head.num_parameters() * 4
    assert least_traffic(head, "logits", 32, 4) == (32 * 64 * 4 + params, 32 * 1000 * 4)
    assert least_traffic(head, "log_probs", 32, 4)[1] == 32 * 1000 * 4
    assert least_traffic(head, "predict", 32, 4)[1] == 8 * 32
    assert least_traffic(head, "loss", 32, 4) == (32 * 64 * 4 + params + 8 * 32, 4)
    assert least_traffic(head, "train", 32, 4)[1] == params + 32 * 64 * 4
    vq = make_head("vq", 1000, 64, K=10)
    assert least_traffic(vq, "logits", 32, 2)[0] == 32 * 64 * 2 + 10 * 64 * 2
    with pytest.raises(ValueError, match="op"):
        least_traffic(head, "sideways", 32, 4)


def test_floor_is_the_larger_of_compute_and_memory():
    ceilings = Ceilings(gemm_flop_s=1e11, copy_byte_s=1e10, fill_byte_s=5e9)
    assert floor_seconds(1e11, 0, 0, ceilings) == pytest.approx(1.0)
    assert floor_seconds(1e9, 1e10, 5e9, ceilings) == pytest.approx(2.0)  # 1 s reading + 1 s writing


def test_measured_ceilings_are_plausible():
    c = measure_ceilings(torch.device("cpu"), torch.float32, 1, gemm_size=256, buffer_bytes=8 << 20)
    for value in (c.gemm_flop_s, c.copy_byte_s, c.fill_byte_s):
        assert math.isfinite(value) and value > 1e8  # any CPU does more than 0.1 GFLOP/s and 0.1 GB/s
    assert set(c.as_row()) <= set(COLUMNS)


def test_results_file_from_an_older_sweep_is_refused(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("head,spec,op\n")
    with pytest.raises(ValueError, match="old.csv"):
        ResultsFile(str(path))


def test_floor_tables_divide_time_by_floor():
    base = {c: "" for c in COLUMNS}
    base.update(head="vq", spec="vq:K=8", op="logits", unit="s", V="100", d="16", K="8", N="4", device="cpu",
                dtype="float32", status="ok", threads="1", gemm_flop_s="1e11", copy_byte_s="1e10",
                fill_byte_s="5e9")
    rows = [{**base, "metric": "time", "value": "0.03", "spread": "0"},
            {**base, "metric": "floor", "value": "0.02"}]
    tables = build_tables(rows)
    floor = [t for t in tables if t["key"][-1] == "floor"]
    assert len(floor) == 1 and floor[0]["body"] == [["vq:K=8", "1.50x"]]
    assert "GEMM 100 GFLOP/s" in floor[0]["caption"] and "1.50x" in render(floor)


def test_ceilings_are_measured_before_each_head(tmp_path, monkeypatch):
    from vqbench import sweep
    calls = []
    rates = iter(range(1, 100))

    def measure(device, dtype, threads):
        calls.append(device)
        rate = float(next(rates)) * 1e9
        return Ceilings(rate, rate, rate)

    monkeypatch.setattr(sweep, "measure_ceilings", measure)
    path = str(tmp_path / "rows.csv")
    sweep.run_sweep(sweep.Grid(heads=["softmax", "vq:K=4"], vocab=[50], d_model=[8], tokens=[4], ops=("loss",)),
                    sweep.ResultsFile(path), sweep.Budget(min_run_time=0.002), threads=1, progress=False)
    rows = sweep.read_rows(path)
    assert len(calls) == 2
    assert {r["gemm_flop_s"] for r in rows if r["spec"] == "softmax"} == {"1e+09"}
    assert {r["gemm_flop_s"] for r in rows if r["spec"] == "vq:K=4"} == {"2e+09"}
