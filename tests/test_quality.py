"""The quality plan covers the issue's runs; best-two selection and the table read the run summaries."""

import csv
import json
import os

import pytest

from vqbench import quality


def fake_summary(run, valid, test, params=1000, steps=quality.STEPS, **extra):
    os.makedirs(run.out, exist_ok=True)
    with open(os.path.join(run.out, "summary.json"), "w") as f:
        json.dump({"output_params": params, "valid_ppl": valid, "test_ppl": test, "tokens_per_s": 100.0,
                   "config": {"steps": steps}, **extra}, f)


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "QUALITY_DIR", str(tmp_path))
    monkeypatch.setattr(quality, "RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path


def test_plan_covers_five_heads_and_every_ablation():
    joint = {r.head.split(":")[0] for r in quality.JOINT}
    assert joint == {"softmax", "adaptive", "hierarchical", "lowrank", "vq"}
    assert any("tree=huffman" in r.head for r in quality.JOINT)
    heads = " ".join(r.head for r in quality.FROZEN)
    for part in ("K=256", "K=1024", "K=4096", "mapping=random", "mapping=contiguous", "mapping=kmeans",
                 "codebook_init=random", "bias=1"):
        assert part in heads
    assert any("--reassign-every" in r.flags for r in quality.FROZEN)
    assert all("--body-from" in r.flags for r in quality.FROZEN)
    for run in quality.JOINT + quality.FROZEN:
        command = run.command()
        assert command[:3] == ["python", "-m", "vqbench.train"] and "--steps" in command


def test_best_two_are_the_lowest_frozen_validation_perplexities(tmp_results):
    with pytest.raises(RuntimeError, match="frozen"):
        quality.best_joint()
    for i, run in enumerate(quality.FROZEN):
        fake_summary(run, valid=500 - i, test=400)
    best = quality.best_joint()
    assert [r.name for r in best] == [r.name.replace("frozen-", "joint-") for r in quality.FROZEN[::-1][:2]]
    assert all(r.protocol == "joint" and "--body-from" not in r.flags for r in best)
    assert "--reassign-every" in best[1].flags  # the last two frozen runs: bias, then kmeans-learned


def test_table_has_ratios_to_softmax_and_each_runs_budget(tmp_results):
    fake_summary(quality.JOINT[0], valid=240.0, test=200.0, params=8_000_000)
    fake_summary(quality.JOINT[-1], valid=300.0, test=250.0, params=262_144, within_code_ppl_factor=1.5)
    fake_summary(quality.JOINT[1], valid=230.0, test=210.0, steps=quality.STEPS // 2)  # an unfinished budget shows
    path = quality.write_table()
    with open(os.path.join(tmp_results, "quality.csv")) as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"joint-softmax", "joint-vq-K1024", "joint-adaptive"}
    assert float(rows["joint-vq-K1024"]["test_ppl_ratio"]) == pytest.approx(1.25)
    assert int(rows["joint-adaptive"]["steps"]) == quality.STEPS // 2
    text = open(path).read()
    assert "1.250" in text and "262,144" in text and "python -m vqbench.train --head vq:K=1024" in text
    assert os.path.getsize(os.path.join(tmp_results, "pareto.png")) > 1000


def test_report_states_the_perplexity_claim_from_the_table(tmp_path, monkeypatch):
    from vqbench.report import build_report

    monkeypatch.setattr(quality, "QUALITY_DIR", str(tmp_path / "quality"))
    monkeypatch.setattr(quality, "RUNS_DIR", str(tmp_path / "quality" / "runs"))
    fake_summary(quality.JOINT[0], valid=240.0, test=200.0, params=8_000_000)
    fake_summary(quality.JOINT[-1], valid=300.0, test=250.0, params=262_144)
    quality.write_table()
    report = build_report(str(tmp_path))
    claim = next(line for line in report.splitlines() if line.startswith("| perplexity"))
    assert "+25%" in claim and "262,144" in claim and "not measured" not in report
    assert "## Quality on WikiText-2" in report
