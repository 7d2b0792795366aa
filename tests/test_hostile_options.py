"""Hostile option values and sizes: every bad option of every head is refused by name before anything is
built or measured (make_head, run_sweep, the compare command), and the memory guard runs before a head is
allocated."""

import pytest
import torch

import vqbench
from conftest import D, SPECS, V, build
from vqbench import compare
from vqbench.measuring import sweep
from vqbench.heads.registry import check_spec, estimate_parameters, parse_spec
from vqbench.results import ResultsFile, read_rows
from vqbench.measuring.sweep import Budget, Grid, run_sweep

# (spec, the option the error names) at V=50, d=8
BAD = [
    ("vq:K=100", "K"), ("vq:K=8,mapping=frequncy", "mapping"), ("vq:K=8,path=scater", "path"),
    ("vq:K=8,bias_init=unigram", "bias_init"), ("vq:K=8,codebook_init=centroids", "codebook_init"),
    ("vq:K=8,mapping=kmeans", "embeddings"), ("softmax:chunk=0", "chunk"), ("softmax:chunk=-3,bias=1", "chunk"),
    ("adaptive:cutoffs=10/60", "cutoffs"), ("adaptive:cutoffs=30/20", "cutoffs"), ("adaptive:cutoffs=0/20", "cutoffs"),
    ("adaptive:div_value=1", "div_value"), ("adaptive:div_value=inf", "div_value"),
    ("adaptive:cutoffs=5/10/20/40,div_value=4", "div_value"), ("lowrank:rank=9", "rank"), ("lowrank:rank=0", "rank"),
    ("hierarchical:classes=51", "classes"), ("hierarchical:classes=0", "classes"),
    ("hierarchical:tree=huffman,classes=3", "classes"), ("hierarchical:tree=binary", "tree"),
]
TINY = ["--vocab", "50", "--d-model", "8", "--tokens", "4", "--ops", "loss", "--threads", "1", "--no-progress",
        "--ceilings", "small", "--min-run-time", "0.002"]


@pytest.mark.parametrize("spec, option", BAD)
def test_check_spec_names_the_option_as_make_head_does(spec, option):
    with pytest.raises((ValueError, TypeError), match=f"^{option}: ") as checked:
        check_spec(spec, 50, 8)
    with pytest.raises(type(checked.value)) as built:
        vqbench.make_head(spec, 50, 8)
    assert str(built.value) == str(checked.value)


@pytest.mark.parametrize("spec, option", BAD)
def test_compare_refuses_a_bad_option_before_measuring(spec, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        compare.main(["--heads", "softmax", spec, *TINY, "--out", str(tmp_path)])
    assert stop.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # a value the option's declared choices refuse is named without a grid point (it is wrong at every one)
    assert f"--heads: {spec} at V=50, d=8: {option}: " in last or f"--heads: {option}: unknown value" in last
    assert not list(tmp_path.iterdir())  # no results file, no lock: nothing was started


def test_run_sweep_refuses_before_writing_a_row(tmp_path):
    path = str(tmp_path / "rows.csv")
    with pytest.raises(ValueError, match=r"^softmax:chunk=0 at V=50, d=8: chunk: must be >= 1"):
        run_sweep(Grid(heads=["vq:K=8", "softmax:chunk=0"], vocab=[50], d_model=[8], tokens=[4], ops=["loss"]),
                  ResultsFile(path), Budget(min_run_time=0.002), threads=1, progress=False)
    assert not read_rows(path)


def test_every_grid_point_is_checked(tmp_path):
    # valid at V=50 and refused for the second vocabulary of the grid
    with pytest.raises(ValueError, match=r"^vq:K=40 at V=30, d=8: K: must be <= 30"):
        sweep.check_grid(Grid(heads=["vq:K=40"], vocab=[50, 30], d_model=[8]))
    with pytest.raises(ValueError, match=r"^lowrank:rank=6 at V=50, d=4: rank"):
        sweep.check_grid(Grid(heads=["lowrank:rank=6"], vocab=[50], d_model=[8, 4]))


def test_a_value_of_a_brace_set_is_refused_only_where_no_vocabulary_fits():
    sweep.check_grid(Grid(heads=["vq:K={8,1000}"], vocab=[50, 2000], d_model=[8]))  # K=1000 fits V=2000
    with pytest.raises(ValueError, match=r"^vq:K=1000 at V=50, d=8: K: must be <= 50"):
        sweep.check_grid(Grid(heads=["vq:K={8,1000}"], vocab=[50, 60], d_model=[8]))


@pytest.mark.parametrize("spec", SPECS + ["hierarchical:tree=huffman", "softmax:bias=1",
                                          "adaptive:cutoffs=3/9/30,div_value=2"])
def test_estimated_parameters_match_the_built_head(spec):
    options = {"embeddings": torch.randn(V, D)} if "kmeans" in spec else {}
    assert estimate_parameters(spec, V, D, **options) == build(spec).num_parameters()


def test_the_memory_guard_runs_before_the_head_is_built(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the head was built")

    monkeypatch.setattr(sweep, "make_head", refuse)
    path = str(tmp_path / "rows.csv")
    vocab, d = 4_000_000, 64  # 1 GB of float32 parameters, a 0.5 GiB budget
    run_sweep(Grid(heads=["softmax"], vocab=[vocab], d_model=[d], tokens=[4], ops=["loss", "log_probs"]),
              ResultsFile(path), Budget(memory_bytes=0.5 * 2**30, min_run_time=0.002), threads=1, progress=False,
              ceilings="small")
    rows = read_rows(path)
    params = {r["metric"]: int(r["value"]) for r in rows if r["op"] == "params"}
    assert params == {"params": vocab * d, "param_bytes": 4 * vocab * d}
    ops = [r for r in rows if r["op"] in ("loss", "log_probs")]
    assert len(ops) == 2 and all(r["status"] == "skipped" and "memory guard" in r["reason"]
                                 and "not built" in r["reason"] for r in ops)


def test_a_head_that_fits_is_still_built_and_measured(tmp_path):
    path = str(tmp_path / "rows.csv")
    run_sweep(Grid(heads=["vq:K=8"], vocab=[50], d_model=[8], tokens=[4], ops=["loss"]), ResultsFile(path),
              Budget(memory_bytes=2**30, min_run_time=0.002), threads=1, progress=False, ceilings="small")
    assert any(r["metric"] == "time" and r["status"] == "ok" for r in read_rows(path))
