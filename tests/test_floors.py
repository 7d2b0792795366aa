"""Floors: the least traffic and FLOPs of an op (vqbench.measuring.ops) against the machine's measured ceilings
(vqbench.measuring.ceilings), derived when tables are built (vqbench.reporting.floors)."""

import math

import pytest
import torch

from vqbench import make_head
from vqbench.measuring import ceilings as ceilings_module
from vqbench.measuring.ceilings import Ceilings, measure_ceilings
from vqbench.reporting.floors import derive_floor_rows, floor_seconds, with_floors
from vqbench.measuring.ops import least_traffic
from vqbench.results import COLUMNS, ResultsFile, read_rows
from vqbench.reporting.tables import build_tables, render


def test_least_traffic_counts_inputs_once_and_the_output_once():
    head = make_head("softmax", 1000, 64)
    params = head.num_parameters() * 4
    assert least_traffic(head, "logits", 32, 4) == (32 * 64 * 4 + params, 32 * 1000 * 4)
    assert least_traffic(head, "log_probs", 32, 4)[1] == 32 * 1000 * 4
    assert least_traffic(head, "predict", 32, 4)[1] == 8 * 32
    assert least_traffic(head, "loss", 32, 4) == (32 * 64 * 4 + params + 8 * 32, 4)
    assert least_traffic(head, "train", 32, 4)[1] == params + 32 * 64 * 4
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
    floor = [t for t in tables if t.kind == "floor"]
    assert len(floor) == 1 and floor[0].body == [["vq:K=8", "1.50x"]]
    assert "GEMM 100 GFLOP/s" in floor[0].caption and "1.50x" in render(floor)


def test_ceilings_are_measured_before_and_after_each_head_and_the_floor_takes_the_better(tmp_path, monkeypatch):
    from vqbench.measuring import sweep
    calls = []
    rates = iter([1, 2, 10, 10, 30, 40])  # softmax: 1 then 2 (drift 50%); vq: 10 then 10 (agree)

    def measure(self, buffer_bytes):
        calls.append(buffer_bytes)
        rate = float(next(rates)) * 1e9
        return Ceilings(rate, rate, rate)

    monkeypatch.setattr(ceilings_module.CeilingMeter, "_measure", measure)
    path = str(tmp_path / "rows.csv")
    grid = sweep.Grid(heads=["softmax", "vq:K=4", "vq:K=5"], vocab=[50], d_model=[8], tokens=[4], ops=("loss",))
    sweep.run_sweep(grid, ResultsFile(path), sweep.Budget(min_run_time=0.002), threads=1, progress=False)
    floors_by_spec = {r["spec"]: r for r in read_rows(path) if r["metric"] == "ceilings"}
    assert floors_by_spec["softmax"]["gemm_flop_s"] == "2e+09" and floors_by_spec["softmax"]["ceiling_drift"] == "0.500"
    assert floors_by_spec["vq:K=4"]["gemm_flop_s"] == "1e+10" and floors_by_spec["vq:K=4"]["ceiling_drift"] == "0.000"
    # vq:K=5 reuses the agreed rates as its "before" and measures only "after"
    assert len(calls) == 5 and floors_by_spec["vq:K=5"]["gemm_flop_s"] == "3e+10"


def test_working_sets_pick_buffer_sizes():
    meter = ceilings_module.CeilingMeter(threads=1)
    assert meter.bucket(10) == 64 << 10
    assert meter.bucket(3 << 20) == 2 << 20
    assert meter.bucket(10 << 30) == 256 << 20


SPECS_FOR_FLOORS = ["softmax", "softmax:chunk=16", "adaptive", "hierarchical", "hierarchical:tree=huffman",
                    "lowrank", "vq:K=32", "vq:K=32,bias=1"]


def test_no_op_beats_its_floor(tmp_path, monkeypatch):
    """With the real ceilings, every head x op at a small size: no median time falls below half its floor.
    A floor model that overcharges, as one charging every parameter to a tree's loss did, gives 0.06x;
    ceilings measured while another process shares the cores can err by up to 2x, so the margin is wide."""
    from vqbench.measuring import sweep
    monkeypatch.setitem(sweep.CEILING_SIZES, "full", {})
    path = str(tmp_path / "rows.csv")
    grid = sweep.Grid(heads=SPECS_FOR_FLOORS, vocab=[3000], d_model=[64], tokens=[64],
                      ops=("logits", "log_probs", "log_probs_into", "predict", "loss", "train", "decode"))
    sweep.run_sweep(grid, ResultsFile(path), sweep.Budget(min_run_time=0.01), threads=1, progress=False)
    rows = with_floors(read_rows(path))
    times = {(r["spec"], r["op"]): float(r["value"]) for r in rows if r["metric"] == "time"}
    floors_ = {(r["spec"], r["op"]): float(r["value"]) for r in rows if r["metric"] == "floor"}
    assert set(times) == set(floors_) and len(times) > 40
    for unit, floor in floors_.items():
        assert times[unit] >= 0.5 * floor, (unit, floor, times[unit])
    for spec in ("hierarchical", "hierarchical:tree=huffman"):  # the loss reads only the targets' rows
        loss = next(r for r in rows if r["spec"] == spec and r["op"] == "loss" and r["metric"] == "floor")
        assert float(loss["value"]) < floors_[(spec, "log_probs")]


@pytest.mark.parametrize("spec", SPECS_FOR_FLOORS)
def test_a_sample_reads_at_least_the_rows_of_its_cheapest_token(spec):
    """head.sample draws one token per row: it reads at least what the loss of some single token reads, and a
    draw may land on the cheapest token for every row. So the decode floor's parameters are the minimum over
    tokens of touched_parameters([token]); a floor charging every parameter put a tree's decode at 0.03x."""
    head = make_head(spec, 300, 16)
    cheapest = min(head.touched_parameters(torch.tensor([t])) for t in range(300))
    assert head.least_sampled_parameters() == cheapest
    read, _ = least_traffic(head, "decode", 4, 4)
    assert read == 4 * 16 * 4 + 4 * cheapest


def test_floors_whose_ceilings_drifted_are_flagged():
    base = {c: "" for c in COLUMNS}
    base.update(head="vq", op="loss", unit="s", V="100", d="16", K="8", N="4", device="cpu", dtype="float32",
                status="ok", threads="1", gemm_flop_s="1e11", copy_byte_s="1e10", fill_byte_s="5e9")
    rows = []
    for spec, drift in (("vq:K=8", "0.400"), ("vq:K=9", "0.100")):
        rows += [{**base, "spec": spec, "metric": "time", "value": "0.03", "spread": "0"},
                 {**base, "spec": spec, "metric": "floor", "value": "0.02", "ceiling_drift": drift}]
    floor = next(t for t in build_tables(rows) if t.kind == "floor")
    assert floor.body == [["vq:K=8", "1.50x ‡"], ["vq:K=9", "1.50x"]]
    assert "before and after each head" in floor.caption and "more than 25%" in floor.caption


def _unit_rows(**counts):
    base = {c: "" for c in COLUMNS}
    base.update(head="softmax", spec="softmax", op="loss", V="100", d="16", N="4", device="cpu", dtype="float32",
                status="ok", threads="1")
    rows = [{**base, "metric": "time", "unit": "s", "value": "3.0", "spread": "0"},
            {**base, "metric": "ceilings", "unit": "FLOP/s", "value": "1e11", "gemm_flop_s": "1e11",
             "copy_byte_s": "1e10", "fill_byte_s": "5e9", "ceiling_drift": "0.010"}]
    return rows + [{**base, "metric": m, "value": str(v)} for m, v in counts.items()]


def test_a_floor_is_derived_from_the_stored_counts_and_ceilings():
    rows = _unit_rows(flops_analytic=1e11, flops_counted=0, bytes_read=1e10, bytes_written=5e9)
    (floor,) = derive_floor_rows(rows)
    assert float(floor["value"]) == pytest.approx(2.0) and floor["floor_source"] == "derived"
    assert floor["ceiling_drift"] == "0.010" and floor["op"] == "loss"
    # fewer counted FLOPs than the analytic worst case: the counted ones bound the call
    (floor,) = derive_floor_rows(_unit_rows(flops_analytic=1e12, flops_counted=1e11, bytes_read=0, bytes_written=0))
    assert float(floor["value"]) == pytest.approx(1.0)
    table = next(t for t in build_tables(rows) if t.kind == "floor")
    assert table.body == [["softmax", "1.50x"]]


def test_an_older_file_keeps_its_stored_floor_until_its_counts_are_known():
    rows = _unit_rows(flops_analytic=1e11)
    rows[1] = {**rows[1], "metric": "floor", "unit": "s", "value": "1.5"}
    (floor,) = derive_floor_rows(rows)
    assert floor["floor_source"] == "stored" and floor["value"] == "1.5"
    rows += [{**rows[0], "metric": "bytes_read", "value": "1e10"}, {**rows[0], "metric": "bytes_written",
                                                                      "value": "5e9"}]
    (floor,) = derive_floor_rows(rows)
    assert floor["floor_source"] == "derived" and float(floor["value"]) == pytest.approx(2.0)


def test_adaptive_predict_reads_only_the_head_which_torch_predict_may_stop_after():
    head = make_head("adaptive", 5000, 32)
    cutoff = head.cutoffs[0]
    read, written = least_traffic(head, "predict", 8, 4)
    assert read == 8 * 32 * 4 + 4 * 32 * (cutoff + len(head.cutoffs)) and written == 8 * 8
    assert head.least_predicted_parameters() < head.num_parameters()
    softmax = make_head("softmax", 5000, 32)
    assert least_traffic(softmax, "predict", 8, 4)[0] == 8 * 32 * 4 + 4 * softmax.num_parameters()


def test_a_v_wide_op_reads_the_heads_index_buffers_too():
    vq = make_head("vq", 1000, 64, K=10)
    buffers = sum(b.numel() * b.element_size() for b in vq.buffers())
    assert buffers >= 1000 * 8  # the token -> code map, int64
    assert least_traffic(vq, "logits", 32, 2)[0] == 32 * 64 * 2 + 10 * 64 * 2 + buffers
    assert least_traffic(vq, "loss", 32, 2)[0] == 32 * 64 * 2 + 10 * 64 * 2 + 8 * 32


def test_the_paper_scatter_path_pays_its_n_by_v_logits_and_the_collapsed_path_does_not():
    """vq:path=scatter materialises the N x V logits: its loss writes them once (summing their exponentials as
    it writes them, it need not read them back), its training step also reads them once for the gradient; the
    floor counts them, the collapsed path's does not."""
    scatter, collapsed = make_head("vq:K=10,path=scatter", 1000, 64), make_head("vq:K=10", 1000, 64)
    target = torch.randint(0, 1000, (32,))
    logits = 32 * 1000 * 4
    for op, reads in (("loss", 0), ("train", 1)):
        s_read, s_written = least_traffic(scatter, op, 32, 4, target)
        c_read, c_written = least_traffic(collapsed, op, 32, 4, target)
        assert (s_read - c_read, s_written - c_written) == (reads * logits, logits), op
    assert least_traffic(scatter, "log_probs", 32, 4) == least_traffic(collapsed, "log_probs", 32, 4)
