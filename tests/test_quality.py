"""The quality plan file, the queue order and best-seed selection, and the tables read from run summaries."""

import csv
import json
import os
import sys

import pytest

from vqbench import quality

PLAN = {
    "protocol": "joint", "common_flags": ["--threads", "1"],
    "best_seeds": {"seeds": [1, 2], "groups": ["vq", "other"]},
    "runs": [
        {"name": "softmax", "head": "softmax", "group": "reference", "seeds": [0, 1, 2], "varies": "reference"},
        {"name": "vq-K1024", "head": "vq:K=1024", "group": "paper", "seeds": [0, 1, 2]},
        {"name": "adaptive", "head": "adaptive", "group": "other", "seeds": [0]},
        {"name": "lowrank", "head": "lowrank", "group": "other", "seeds": [0]},
        {"name": "vq-bias", "head": "vq:K=1024,bias=1", "group": "vq", "seeds": [0]},
        {"name": "vq-learned", "head": "vq:K=1024", "group": "vq", "seeds": [0], "flags": ["--reassign-every", "500"]},
    ],
}


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(PLAN))
    return quality.Plan(str(path))


def fake_summary(runs_dir, run, valid, test, params=1000, stop="plateau: 2 epochs", seed=0, **extra):
    folder = os.path.join(runs_dir, run)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "summary.json.tmp"), "w") as f:  # whole or absent, as vqbench.train writes it
        json.dump({"output_params": params, "valid_ppl": valid, "test_ppl": test, "tokens_per_s": 100.0,
                   "epochs": 8, "best_epoch": 7, "stop": stop, "last_epoch_gain": 0.004, "precision": "float32",
                   "cpu_model": "test CPU", "git_commit": "abc", "seed": seed, **extra}, f)
    os.replace(os.path.join(folder, "summary.json.tmp"), os.path.join(folder, "summary.json"))


def test_the_committed_plan_covers_every_head_three_seeds_and_the_paper_form():
    plan = quality.Plan(quality.DEFAULT_PLAN)
    heads = {e["head"].split(":")[0] for e in plan.entries}
    assert heads == {"softmax", "adaptive", "hierarchical", "lowrank", "vq"}
    assert any("tree=huffman" in e["head"] for e in plan.entries)
    by_group = {e["group"]: e for e in plan.entries}
    assert by_group["reference"]["head"] == "softmax" and by_group["reference"]["seeds"] == [0, 1, 2]
    assert by_group["paper"]["head"] == "vq:K=1024" and by_group["paper"]["seeds"] == [0, 1, 2]
    assert plan.best_seeds == (1, 2) and set(plan.best_groups) == {"vq", "other"}


def test_the_committed_vq_group_holds_only_variants_with_95_percent_fewer_output_parameters():
    # The vq group's best entry gets extra seeds as "the best VQ variant" of the paper's target, so every
    # member must meet that target: K*d (+ V for a per-token bias) <= 5% of softmax's V*d at WikiText-2's V.
    from vqbench.heads.registry import parse_spec
    vocab, d_model = 33278, 200
    plan = quality.Plan(quality.DEFAULT_PLAN)
    vq_entries = [e for e in plan.entries if e["head"].startswith("vq")]
    for entry in vq_entries:
        _, options = parse_spec(entry["head"])
        params = int(options["K"]) * d_model + (vocab if options.get("bias") == "1" else 0)
        meets_target = params <= 0.05 * vocab * d_model
        assert meets_target == (entry["group"] in ("vq", "paper")), entry["name"]
    assert {e["group"] for e in vq_entries} >= {"vq", "paper", "vq-dense"}


def test_queue_runs_seed_zero_first_and_adds_best_seeds_once_decidable(plan, tmp_path):
    runs_dir = str(tmp_path / "runs")
    names = [r.run for r in plan.runs(runs_dir)]
    assert names[:6] == ["joint-softmax-s0", "joint-vq-K1024-s0", "joint-adaptive-s0", "joint-lowrank-s0",
                         "joint-vq-bias-s0", "joint-vq-learned-s0"]
    assert names[6:] == ["joint-softmax-s1", "joint-vq-K1024-s1", "joint-softmax-s2", "joint-vq-K1024-s2"]
    fake_summary(runs_dir, "joint-vq-bias-s0", valid=150, test=140)
    fake_summary(runs_dir, "joint-vq-learned-s0", valid=140, test=150)  # lower valid wins, not lower test
    fake_summary(runs_dir, "joint-adaptive-s0", valid=120, test=110)
    fake_summary(runs_dir, "joint-lowrank-s0", valid=130, test=120, stop="steps: the cap of 10 steps")
    names = [r.run for r in plan.runs(runs_dir)]
    assert names[10:] == ["joint-vq-learned-s1", "joint-vq-learned-s2"]  # "other" waits for lowrank
    learned = [r for r in plan.runs(runs_dir) if r.run == "joint-vq-learned-s1"][0]
    command = learned.command(runs_dir, "/ck", plan.common)
    assert command[:3] == ["python", "-m", "vqbench.train"] and "--reassign-every" in command
    assert command[command.index("--seed") + 1] == "1" and command[-1] == "--resume"
    assert command[command.index("--checkpoint-dir") + 1] == "/ck/joint-vq-learned-s1"


def test_table_gives_mean_std_and_seed_paired_ratios(plan, tmp_path):
    runs_dir = str(tmp_path / "results" / "runs")
    for seed, (soft, vq) in enumerate([(100.0, 120.0), (110.0, 121.0), (105.0, 126.0)]):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=soft + 5, test=soft, params=6_000_000, seed=seed)
        fake_summary(runs_dir, f"joint-vq-K1024-s{seed}", valid=vq + 5, test=vq, params=200_000, seed=seed,
                     within_code_ppl_factor=3.0)
    fake_summary(runs_dir, "joint-adaptive-s0", valid=110, test=99.0, params=1_000_000)
    fake_summary(runs_dir, "joint-lowrank-s0", valid=110, test=99.0, stop="steps: the cap of 5 steps")
    path = quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")
    with open(tmp_path / "results" / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == {f"joint-{n}-s{s}" for n in ("softmax", "vq-K1024") for s in range(3)} | \
        {"joint-adaptive-s0"}  # the capped lowrank run is not finished
    for column in ("run", "head", "protocol", "seed", "epochs", "valid_ppl", "test_ppl", "output_params",
                   "git_commit"):
        assert column in rows[0]
    summary = {v["name"]: v for v in quality.aggregate([quality.typed_quality_row(r) for r in rows], "softmax")}
    ratios = [1.2, 1.1, 1.2]
    assert summary["vq-K1024"]["ratio_mean"] == pytest.approx(sum(ratios) / 3)
    assert summary["vq-K1024"]["ratio_std"] == pytest.approx(0.0577350, rel=1e-4)
    assert summary["softmax"]["test_mean"] == pytest.approx(105.0) and summary["softmax"]["test_std"] == pytest.approx(5.0)
    assert summary["adaptive"]["ratio_mean"] == pytest.approx(0.99) and summary["adaptive"]["seeds"] == 1
    text = open(path).read()
    assert "1.167 ± 0.058 (95% CI 1.023-1.310)" in text and "105.0 ± 5.0" in text and "1 (single seed)" in text
    assert "| 0.990 (single seed) " in text  # adaptive's one ratio has no interval, and says why
    assert "joint-lowrank-s0" in text.split("Runs not finished yet")[1]
    assert os.path.getsize(tmp_path / "results" / "pareto.png") > 1000


def test_report_states_the_perplexity_claim_from_the_table(plan, tmp_path):
    from vqbench.report import build_report

    runs_dir = str(tmp_path / "quality" / "runs")
    fake_summary(runs_dir, "joint-softmax-s0", valid=240.0, test=200.0, params=8_000_000)
    fake_summary(runs_dir, "joint-vq-K1024-s0", valid=300.0, test=250.0, params=262_144)
    quality.write_tables(plan, runs_dir, str(tmp_path / "quality"), "plan.json")
    report = build_report(str(tmp_path))
    claim = next(line for line in report.splitlines() if line.startswith("| perplexity"))
    assert "1.250" in claim and "+25.0%" in claim and "262,144" in claim and "not measured" not in report
    assert "## Quality on WikiText-2" in report
    # a summary without body and vocabulary predates them: the LSTM track, named in every perplexity row
    assert claim.split("| ")[3].startswith("2-layer LSTM, word-level WikiText-2 V=33,278; VQ-Logits in the paper's form")


@pytest.mark.parametrize("df, quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)])
def test_t_quantiles_match_the_printed_tables(df, quantile):
    assert quality.t_quantile(0.975, df) == pytest.approx(quantile, abs=5e-4)


def test_t_intervals_need_two_values_and_widen_with_the_spread():
    assert all(map(__import__("math").isnan, quality.t_interval([1.1])))
    low, high = quality.t_interval([1.0, 1.1, 1.2])  # mean 1.1, std 0.1: half-width 4.303 x 0.1 / sqrt(3)
    assert (low, high) == pytest.approx((1.1 - 0.248414, 1.1 + 0.248414), abs=1e-5)


def test_a_setting_names_body_vocabulary_and_corpus():
    assert quality.setting({}) == "2-layer LSTM, word-level WikiText-2 V=33,278"
    assert quality.setting({"body": "gpt-4x256", "vocabulary": "cl100k_base-100277"}) == \
        "4-layer GPT, d=256, cl100k_base WikiText-2 V=100,277"


def test_report_names_the_planned_runs_without_a_row_until_they_finish(tmp_path):
    from vqbench.report import build_report

    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**PLAN, "best_seeds": {}, "runs": PLAN["runs"][:1] + PLAN["runs"][3:4]}))
    small = quality.Plan(str(path))
    runs_dir = str(tmp_path / "quality" / "runs")
    for seed in range(3):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=120.0, test=110.0, seed=seed)
    os.makedirs(os.path.join(runs_dir, "joint-lowrank-s0"))
    with open(os.path.join(runs_dir, "joint-lowrank-s0", "log.jsonl"), "w") as f:
        f.write(json.dumps({"step": 2984, "epoch": 1, "valid_ppl": 432.9}) + "\n")
    quality.write_tables(small, runs_dir, str(tmp_path / "quality"), "plan.json")
    line = next(l for l in build_report(str(tmp_path)).splitlines() if l.startswith(quality.UNFINISHED))
    assert "joint-lowrank-s0 (step 2,984, validation ppl after each epoch: 432.9)" in line
    fake_summary(runs_dir, "joint-lowrank-s0", valid=130.0, test=120.0)
    quality.write_tables(small, runs_dir, str(tmp_path / "quality"), "plan.json")
    report = build_report(str(tmp_path))
    assert quality.UNFINISHED not in report and "| lowrank " in report


def test_report_says_when_quality_is_not_measured(plan, tmp_path):
    from vqbench.report import build_report
    report = build_report(str(tmp_path))
    assert "not measured yet: no finished quality runs" in report
    runs_dir = str(tmp_path / "quality" / "runs")
    fake_summary(runs_dir, "joint-vq-K1024-s0", valid=300.0, test=250.0, params=262_144)
    quality.write_tables(plan, runs_dir, str(tmp_path / "quality"), "plan.json")
    assert "not measured yet: no finished softmax run to take ratios against" in build_report(str(tmp_path))


@pytest.mark.parametrize("content, match", [("{", "not a quality plan"), ('{"runs": [{"name": "a"}]}', "needs name"),
                                            ('{"runs": []}', "reference")])
def test_bad_plans_are_refused_with_one_line(tmp_path, capsys, content, match):
    path = tmp_path / "plan.json"
    path.write_text(content)
    assert quality.main(["plan", "--plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_the_epoch_budget_ends_a_run_and_a_larger_budget_reopens_it(plan, tmp_path):
    runs_dir = str(tmp_path / "runs")
    assert plan.epochs == quality.TrainConfig.epochs
    fake_summary(runs_dir, "joint-adaptive-s0", valid=120, test=110, stop="epochs: the budget of 12 epochs", epochs=12)
    fake_summary(runs_dir, "joint-lowrank-s0", valid=130, test=120, stop="plateau: 2 epochs in a row", epochs=9)
    assert not quality.finished(quality.summary_of(runs_dir, "joint-adaptive-s0"), 20)
    assert quality.finished(quality.summary_of(runs_dir, "joint-adaptive-s0"), 12)
    assert quality.finished(quality.summary_of(runs_dir, "joint-lowrank-s0"), 20)  # the plateau ended it
    assert not quality.finished(None, 20)
    command = plan.runs(runs_dir)[0].command(runs_dir, "/ck", plan.common)
    assert command[command.index("--epochs") + 1] == str(plan.epochs)


def test_first_variants_queue_every_seed_and_started_runs_resume_first(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**PLAN, "epochs": 20, "first": ["softmax"]}))
    plan = quality.Plan(str(path))
    runs_dir, checkpoints = str(tmp_path / "runs"), str(tmp_path / "ck")
    names = [r.run for r in plan.runs(runs_dir)]
    assert names[:4] == ["joint-softmax-s0", "joint-softmax-s1", "joint-softmax-s2", "joint-vq-K1024-s0"]
    assert quality.pick_next(plan, runs_dir, checkpoints).run == "joint-softmax-s0"
    os.makedirs(os.path.join(checkpoints, "joint-adaptive-s0"))
    open(os.path.join(checkpoints, "joint-adaptive-s0", "checkpoint.pt"), "w").close()
    assert quality.pick_next(plan, runs_dir, checkpoints).run == "joint-adaptive-s0"
    assert quality.pick_next(plan, runs_dir, checkpoints, taken={"joint-adaptive-s0"}).run == "joint-softmax-s0"
    fake_summary(runs_dir, "joint-adaptive-s0", valid=120, test=110, stop="epochs: the budget of 20 epochs", epochs=20)
    assert quality.pick_next(plan, runs_dir, checkpoints).run == "joint-softmax-s0"
    assert quality.pick_next(plan, runs_dir, checkpoints, only=["vq-K1024"]).run == "joint-vq-K1024-s0"


def test_plan_prints_only_the_runs_that_only_selects_and_refuses_a_name_that_selects_none(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(PLAN))
    results = str(tmp_path / "results")
    assert quality.main(["plan", "--plan", str(path), "--results", results, "--only", "vq-K1024"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed and all("joint-vq-K1024-s" in line for line in printed)
    assert len(printed) == len([r for r in quality.Plan(str(path)).runs(results) if r.name == "vq-K1024"])
    for action in ("plan", "run"):
        assert quality.main([action, "--plan", str(path), "--results", results, "--only", "vq-K1O24"]) == 2
        err = capsys.readouterr().err
        assert "--only: 'vq-K1O24' names no variant or run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, match", [({"epochs": 0}, "epochs must be an integer >= 1"),
                                           ({"epochs": "20"}, "epochs must be an integer"),
                                           ({"common_flags": ["--epochs", "5"]}, "give the epoch budget as"),
                                           ({"first": ["softmax", "nope"]}, "first names no run 'nope'")])
def test_bad_budgets_and_first_lists_are_refused_with_one_line(tmp_path, capsys, change, match):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**PLAN, **change}))
    assert quality.main(["plan", "--plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_unfinished_runs_show_their_progress_from_the_log(tmp_path):
    runs_dir = tmp_path / "runs"
    (runs_dir / "joint-softmax-s0").mkdir(parents=True)
    (runs_dir / "joint-softmax-s0" / "log.jsonl").write_text(
        '{"step": 50, "epoch": 1, "loss": 7.0}\n{"epoch": 1, "step": 2984, "valid_ppl": 262.84}\n'
        '{"step": 3000, "epoch": 2, "loss": 5.1}\n{"step": 30')  # the last line cut short by a stop
    assert quality.progress(str(runs_dir), "joint-softmax-s0") == \
        "joint-softmax-s0 (step 3,000, validation ppl after each epoch: 262.8)"
    assert quality.progress(str(runs_dir), "joint-softmax-s1") == "joint-softmax-s1 (not started)"


def test_a_run_that_started_over_says_how_often(tmp_path):
    # two restarts from nothing, each moving a whole earlier log; a resume's set-aside steps hold no invocation
    run = tmp_path / "runs" / "joint-softmax-s2"
    run.mkdir(parents=True)
    attempt = '{"step": 0, "invocation": {"from_step": 0, "to_step": 0}}\n{"step": 50, "epoch": 1, "loss": 7.8}\n' \
              '{"step": 500, "invocation": {"from_step": 500, "to_step": 500}}\n'
    (run / "log.superseded.jsonl").write_text('{"step": 550, "epoch": 1, "loss": 6.0}\n' + attempt + attempt)
    (run / "log.jsonl").write_text('{"step": 0, "invocation": {"from_step": 0, "to_step": 0}}\n'
                                   '{"step": 100, "epoch": 1, "loss": 7.4}\n')
    assert quality.progress(str(tmp_path / "runs"), "joint-softmax-s2") == (
        "joint-softmax-s2 (step 100; started over from step 0 twice with no checkpoint to resume from, earlier "
        "attempts in log.superseded.jsonl)")
    (run / "log.superseded.jsonl").write_text(attempt)
    (run / "log.jsonl").unlink()
    assert quality.progress(str(tmp_path / "runs"), "joint-softmax-s2") == (
        "joint-softmax-s2 (not started; started over from step 0 once with no checkpoint to resume from, "
        "earlier attempts in log.superseded.jsonl)")


def test_the_markdown_table_names_each_vq_runs_mapping(plan, tmp_path):
    # vq-K1024 and vq-learned share a head spec; only the mapping column tells the frozen map from the learned.
    runs_dir = str(tmp_path / "runs")
    fake_summary(runs_dir, "joint-softmax-s0", valid=120, test=110)
    fake_summary(runs_dir, "joint-vq-K1024-s0", valid=150, test=140)
    fake_summary(runs_dir, "joint-vq-learned-s0", valid=140, test=130, config={"reassign_every": 500})
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")
    lines = (tmp_path / "results" / "quality.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| body, vocabulary"))
    column = [cell.strip() for cell in header.split("|")].index("mapping")
    mapping = {cells[2]: cells[column] for cells in
               ([c.strip() for c in line.split("|")] for line in lines if line.startswith("| "))}
    assert mapping["vq-K1024"] == "frequency" and mapping["vq-learned"] == "learned" and mapping["softmax"] == ""


def test_a_run_that_changed_its_thread_count_on_a_resume_is_named_with_its_counts(plan, tmp_path):
    # tokens/s of such a run mixes two speeds, so the table's text must not claim "one thread per run".
    runs_dir = str(tmp_path / "runs")
    one = [{"threads": 1, "from_step": 0, "to_step": 500}]
    fake_summary(runs_dir, "joint-softmax-s0", valid=120, test=110, invocations=one)
    fake_summary(runs_dir, "joint-adaptive-s0", valid=125, test=115,
                 invocations=one + [{"threads": 1, "from_step": 500, "to_step": 900},
                                    {"threads": 2, "from_step": 900, "to_step": 2000}])
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")
    with open(tmp_path / "results" / "quality.csv") as f:
        threads = {r["run"]: r["threads"] for r in csv.DictReader(f)}
    assert threads == {"joint-softmax-s0": "1", "joint-adaptive-s0": "1+2"}
    text = (tmp_path / "results" / "quality.md").read_text()
    assert "except joint-adaptive-s0 (1+2 threads, by invocation)" in text
    assert "joint-softmax-s0 (" not in text


def test_the_best_vq_claim_is_sought_among_variants_with_95_percent_fewer_parameters(plan, tmp_path):
    from vqbench.report import build_report

    runs_dir = str(tmp_path / "quality" / "runs")
    fake_summary(runs_dir, "joint-softmax-s0", valid=240.0, test=200.0, params=8_000_000)
    fake_summary(runs_dir, "joint-vq-K1024-s0", valid=300.0, test=260.0, params=262_144)
    fake_summary(runs_dir, "joint-vq-learned-s0", valid=280.0, test=240.0, params=262_144)  # 96.7% fewer
    fake_summary(runs_dir, "joint-vq-bias-s0", valid=230.0, test=220.0, params=1_000_000)  # better, 87.5% fewer
    quality.write_tables(plan, runs_dir, str(tmp_path / "quality"), "plan.json")
    claims = [line for line in build_report(str(tmp_path)).splitlines() if line.startswith("| perplexity")]
    best = next(line for line in claims if "best VQ variant" in line)
    assert "vq-learned" in best and "1.200" in best and "vq-bias" not in best


def test_the_transformer_plan_holds_the_issues_runs_at_their_parameter_targets():
    # paper-form VQ at the largest K with >= 95% fewer output parameters than softmax at V=100,277 and the
    # plan's width; the vq group at >= 95% fewer as well; the matched heads at most VQ's count and within 10% of it
    from vqbench import make_head
    plan = quality.Plan(quality.TRANSFORMER_PLAN)
    flags = dict(zip(plan.common[::2], plan.common[1::2]))
    vocab, d_model = 100_277, 128  # the width results/quality/transformer-size.md chose
    assert (flags["--body"], flags["--vocabulary"], flags["--d-model"]) == ("gpt", "cl100k_base", str(d_model))
    assert plan.track == "gpt" and plan.planned(plan.reference(), 0).run == "joint-gpt-softmax-s0"
    params = {e["name"]: make_head(e["head"], vocab, d_model).num_parameters() for e in plan.entries}
    softmax = params["softmax"]
    paper = next(e for e in plan.entries if e["group"] == "paper")
    K = int(paper["head"].split("=")[1])
    assert 1 - params[paper["name"]] / softmax >= 0.95 > 1 - (K + 1) * d_model / softmax
    assert all(1 - params[e["name"]] / softmax >= 0.95 for e in plan.entries if e["group"] == "vq")
    for entry in (e for e in plan.entries if e["group"] == "matched"):
        assert 0.9 * params[paper["name"]] <= params[entry["name"]] <= params[paper["name"]], entry["name"]
    seeds = {e["name"]: e["seeds"] for e in plan.entries}
    assert seeds["softmax"] == seeds["softmax-tied"] == seeds[paper["name"]] == [0, 1, 2]
    assert next(e for e in plan.entries if e["name"] == "softmax-tied")["flags"] == ["--tie-embeddings"]
    assert plan.best_seeds == (1, 2) and set(plan.best_groups) == {"vq", "other"}
    # the reference perplexity: the same softmax at its swept rate, trained twice the budget (its flags come last)
    long = next(e for e in plan.entries if e["group"] == "reference-long")
    assert long["head"] == plan.reference()["head"] and long["seeds"] == [0]
    assert long["flags"] == ["--lr", plan.chosen_lr(plan.reference(), os.path.join(quality.DEFAULT_RESULTS, "runs")),
                             "--epochs", str(2 * plan.epochs), "--cosine-epochs", str(2 * plan.epochs)]
    train_cfg = __import__("vqbench.train", fromlist=["parse_args"]).parse_args(
        list(plan.common) + ["--head", "softmax", "--out", "x"])  # every flag is one vqbench.train knows
    assert train_cfg.body == "gpt" and train_cfg.d_model % train_cfg.heads == 0


def test_the_plateau_plan_trains_the_transformer_plans_main_variants_by_its_rule_at_their_swept_rates():
    """The same body, flags and heads as the transformer plan, each variant at the rate that plan's sweep chose
    (the same sweep for every head), three seeds of each named variant, and the plateau rule in place of the
    cosine budget: a rate held after warm-up, divided by 4 after an epoch gaining < 1%, stopped after two."""
    plan, budget = quality.Plan(quality.PLATEAU_PLAN), quality.Plan(quality.TRANSFORMER_PLAN)
    flags, budget_flags = dict(zip(plan.common[::2], plan.common[1::2])), dict(zip(budget.common[::2], budget.common[1::2]))
    schedule = {"--cosine-epochs": "0", "--lr-decay": "4", "--checkpoint-every": "100"}
    assert {k: v for k, v in flags.items() if k not in schedule} == {
        k: v for k, v in budget_flags.items() if k not in schedule and k != "--lr"}
    assert {k: flags[k] for k in schedule} == schedule and "--lr" not in flags and plan.epochs == 20
    assert plan.schedule == "to the validation plateau" and plan.track not in ("", budget.track)
    runs_dir = os.path.join(quality.DEFAULT_RESULTS, "runs")
    same = {e["name"]: e for e in budget.entries}
    assert [e["group"] for e in plan.entries] == ["reference", "tied", "paper", "vq", "other"]
    for entry in plan.entries:
        twin = same[entry["name"]]
        assert entry["head"] == twin["head"] and entry["seeds"] == [0, 1, 2], entry["name"]
        lr = entry["flags"][entry["flags"].index("--lr") + 1]
        assert lr == budget.chosen_lr(twin, runs_dir), entry["name"]
        assert [f for f in entry["flags"] if f not in ("--lr", lr)] == twin.get("flags", []), entry["name"]
    train_cfg = __import__("vqbench.train", fromlist=["parse_args"]).parse_args(
        list(plan.common) + ["--head", "softmax", "--out", "x"])
    assert (train_cfg.plateau, train_cfg.patience, train_cfg.cosine_epochs) == (0.01, 2, 0)


def test_a_plans_schedule_is_part_of_its_rows_setting(plan, tmp_path):
    """Two plans on the same body and vocabulary, one trained to the plateau: each variant pairs with its own
    schedule's reference, the table says the schedule, and each setting gets its own Pareto figure."""
    runs_dir = str(tmp_path / "results" / "runs")
    long_plan = tmp_path / "plateau.json"
    long_plan.write_text(json.dumps({**PLAN, "track": "plateau", "schedule": "to the validation plateau",
                                     "best_seeds": {}, "runs": PLAN["runs"][:2]}))
    for seed in (0, 1):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=110, test=100.0, seed=seed, params=6_000_000)
        fake_summary(runs_dir, f"joint-vq-K1024-s{seed}", valid=150, test=150.0, seed=seed, params=200_000)
        fake_summary(runs_dir, f"joint-plateau-softmax-s{seed}", valid=90, test=80.0, seed=seed, params=6_000_000)
        fake_summary(runs_dir, f"joint-plateau-vq-K1024-s{seed}", valid=95, test=84.0, seed=seed, params=200_000)
    more = [(quality.Plan(str(long_plan)), "plateau.json")]
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json", more)
    with open(tmp_path / "results" / "quality.csv") as f:
        rows = [quality.typed_quality_row(r) for r in csv.DictReader(f)]
    assert {r["run"]: r["schedule"] for r in rows}["joint-plateau-vq-K1024-s1"] == "to the validation plateau"
    by = {(v["setting"], v["name"]): v for v in quality.aggregate(rows, "softmax")}
    plateau = "2-layer LSTM, word-level WikiText-2 V=33,278, to the validation plateau"
    assert by[(plateau, "vq-K1024")]["ratio_mean"] == pytest.approx(1.05)  # 84/80, not 84/100
    assert by[("2-layer LSTM, word-level WikiText-2 V=33,278", "vq-K1024")]["ratio_mean"] == pytest.approx(1.5)
    text = (tmp_path / "results" / "quality.md").read_text()
    assert "| lstm, word-33278, to the validation plateau | vq-K1024" in text.replace("  ", " ").replace("  ", " ")
    assert os.path.getsize(tmp_path / "results" / "pareto-lstm-word-33278-to-the-validation-plateau.png") > 1000


def test_tracks_get_their_own_rows_settings_and_reference(plan, tmp_path):
    runs_dir = str(tmp_path / "results" / "runs")
    gpt_plan = tmp_path / "gpt.json"
    gpt_plan.write_text(json.dumps({**PLAN, "track": "gpt", "description": "a GPT track", "best_seeds": {},
                                    "runs": PLAN["runs"][:2]}))
    gpt = quality.Plan(str(gpt_plan))
    for seed in (0, 1):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=110, test=100.0, seed=seed, params=6_000_000)
        fake_summary(runs_dir, f"joint-vq-K1024-s{seed}", valid=150, test=150.0, seed=seed, params=200_000)
        track = {"body": "gpt-4x256", "vocabulary": "cl100k_base-100277"}
        fake_summary(runs_dir, f"joint-gpt-softmax-s{seed}", valid=60, test=50.0, seed=seed, params=9_000_000, **track)
        fake_summary(runs_dir, f"joint-gpt-vq-K1024-s{seed}", valid=60, test=55.0 + seed, seed=seed, params=300_000,
                     total_params=12_000_000, **track)
    lstm_plan = tmp_path / "lstm.json"  # a second plan on the LSTM track, which names no track
    lstm_plan.write_text(json.dumps({**PLAN, "description": "an LSTM replicate", "best_seeds": {},
                                     "runs": PLAN["runs"][:1]}))
    more = [(gpt, "gpt.json"), (quality.Plan(str(lstm_plan)), "lstm.json")]
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json", more)
    with open(tmp_path / "results" / "quality.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert (rows["joint-softmax-s0"]["body"], rows["joint-softmax-s0"]["vocabulary"]) == ("lstm", "word-33278")
    assert rows["joint-gpt-vq-K1024-s1"]["body"] == "gpt-4x256" and rows["joint-gpt-vq-K1024-s1"]["total_params"] == "12000000"
    summary = quality.aggregate([quality.typed_quality_row(r) for r in rows.values()], "softmax")
    by = {(v["body"], v["name"]): v for v in summary}
    assert by[("lstm", "vq-K1024")]["ratio_mean"] == pytest.approx(1.5)  # against the LSTM's own softmax
    assert by[("gpt-4x256", "vq-K1024")]["ratio_mean"] == pytest.approx(1.11)  # 55/50 and 56/50
    assert by[("gpt-4x256", "vq-K1024")]["setting"] == "4-layer GPT, d=256, cl100k_base WikiText-2 V=100,277"
    text = (tmp_path / "results" / "quality.md").read_text()
    assert "Track gpt (plan `gpt.json`, its runs named joint-gpt-*): a GPT track" in text
    assert "Track lstm (plan `lstm.json`, its runs named joint-*): an LSTM replicate" in text
    assert "(none)" not in text and "joint--" not in text
    assert os.path.getsize(tmp_path / "results" / "pareto-gpt-4x256-cl100k_base-100277.png") > 1000
    assert "| gpt-4x256, cl100k_base-100277 | vq-K1024" in text.replace("  ", " ").replace("  ", " ")


def test_the_claims_table_states_each_track_against_its_own_softmax_and_the_tied_one(plan, tmp_path):
    from vqbench.report import build_report
    runs_dir = str(tmp_path / "quality" / "runs")
    gpt_plan = tmp_path / "gpt.json"
    gpt_plan.write_text(json.dumps({"track": "gpt", "runs": [
        {"name": "softmax", "head": "softmax", "group": "reference", "seeds": [0, 1]},
        {"name": "softmax-tied", "head": "softmax", "group": "tied", "seeds": [0, 1], "flags": ["--tie-embeddings"]},
        {"name": "vq-K5013", "head": "vq:K=5013", "group": "paper", "seeds": [0, 1]}]}))
    track = {"body": "gpt-4x256", "vocabulary": "cl100k_base-100277"}
    for seed in (0, 1):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=110, test=100.0, seed=seed, params=6_000_000)
        fake_summary(runs_dir, f"joint-vq-K1024-s{seed}", valid=150, test=150.0, seed=seed, params=200_000)
        fake_summary(runs_dir, f"joint-gpt-softmax-s{seed}", valid=60, test=50.0, seed=seed, params=25_670_912, **track)
        fake_summary(runs_dir, f"joint-gpt-softmax-tied-s{seed}", valid=60, test=45.0 + 5 * seed, seed=seed,
                     params=25_670_912, **track)
        fake_summary(runs_dir, f"joint-gpt-vq-K5013-s{seed}", valid=60, test=54.0, seed=seed, params=1_283_328, **track)
    quality.write_tables(plan, runs_dir, str(tmp_path / "quality"), "plan.json", [(quality.Plan(str(gpt_plan)), "g")])
    claims = [line.split(" | ")[2] for line in build_report(str(tmp_path)).splitlines()
              if line.startswith("| perplexity")]
    assert claims[0].startswith("2-layer LSTM, word-level WikiText-2 V=33,278; VQ-Logits in the paper's form "
                                "(K=1024, frequency mapping, no bias): test ppl ratio 1.500 ± 0.000")
    gpt = "4-layer GPT, d=256, cl100k_base WikiText-2 V=100,277; "
    assert claims[1].startswith(gpt + "VQ-Logits in the paper's form (K=5013, frequency mapping, no bias): "
                                "test ppl ratio 1.080 ± 0.000")
    assert "95.0% fewer than softmax's 25,670,912; softmax test ppl 50.0 ± 0.0)" in claims[1]
    # against the tied softmax, paired by seed: 54/45 and 54/50
    assert claims[2].startswith(gpt + "VQ-Logits in the paper's form against the tied softmax (softmax-tied): "
                                "test ppl ratio %.3f ± %.3f (95%% CI" % mean_std_of([54 / 45, 54 / 50]))
    assert "softmax-tied test ppl 47.5 ± 3.5)" in claims[2] and len(claims) == 3
    assert ("![quality vs parameters, gpt-4x256-cl100k_base-100277](quality/pareto-gpt-4x256-cl100k_base-100277.png)"
            in build_report(str(tmp_path)))


def mean_std_of(values):
    import statistics
    return statistics.fmean(values), statistics.stdev(values)


SWEPT = {**PLAN, "epochs": 4, "lr_sweep": {"rates": [0.0003, 0.001, 0.003], "epochs": 1,
                                           "flags": ["--train-tokens", "5000"]}}


@pytest.fixture
def swept(tmp_path):
    path = tmp_path / "swept.json"
    path.write_text(json.dumps({**SWEPT, "runs": PLAN["runs"][:3] + [{**PLAN["runs"][3], "flags": ["--lr", "2"]}]}))
    return quality.Plan(str(path))


def finish_sweep(runs_dir, name, ppls):
    for rate, ppl in zip(("0.0003", "0.001", "0.003"), ppls):
        fake_summary(runs_dir, f"joint-{name}-lr{rate}-s0", valid=ppl, test=ppl, stop="epochs: the budget of 1 "
                     "epochs", epochs=1, config={"train_tokens": 5000})


def test_a_swept_variant_trains_at_the_rate_with_the_lowest_validation_perplexity(swept, tmp_path):
    runs_dir = str(tmp_path / "runs")
    names = [r.run for r in swept.runs(runs_dir)]
    # the sweep first; lowrank sets its own --lr, so it is not swept and runs at once
    assert names == [f"joint-{n}-lr{r}-s0" for n in ("softmax", "vq-K1024", "adaptive")
                     for r in ("0.0003", "0.001", "0.003")] + ["joint-lowrank-s0"]
    first = swept.runs(runs_dir)[0].command(runs_dir, "/ck", swept.common)
    assert first[first.index("--epochs") + 1] == "1" and first[-7:-3] == ["--train-tokens", "5000", "--out",
                                                                          os.path.join(runs_dir, names[0])]
    assert first[first.index("--lr") + 1] == "0.0003"
    finish_sweep(runs_dir, "softmax", [150.0, 120.0, float("nan")])  # a diverged rate is never chosen
    finish_sweep(runs_dir, "vq-K1024", [140.0, 160.0])  # one rate still running: vq waits
    assert swept.chosen_lr(swept.entries[0], runs_dir) == "0.001"
    assert swept.chosen_lr(swept.entries[1], runs_dir) is None
    runs = {r.run: r for r in swept.runs(runs_dir)}
    assert [n for n in runs if n.startswith("joint-softmax-s")] == ["joint-softmax-s0", "joint-softmax-s1",
                                                                     "joint-softmax-s2"]
    assert not any(n.startswith("joint-vq-K1024-s") for n in runs)
    command = runs["joint-softmax-s2"].command(runs_dir, "/ck", swept.common)
    assert command[command.index("--epochs") + 1] == "4" and "--train-tokens" not in command
    assert command[len(command) - 1 - command[::-1].index("--lr") + 1] == "0.001"  # the last --lr wins
    assert quality.pick_next(swept, runs_dir, str(tmp_path / "ck")).run == "joint-vq-K1024-lr0.003-s0"


def test_the_sweep_has_its_own_table_and_never_a_quality_row(swept, tmp_path):
    runs_dir = str(tmp_path / "results" / "runs")
    finish_sweep(runs_dir, "softmax", [150.0, 120.0, 130.0])
    finish_sweep(runs_dir, "adaptive", [151.0, 119.0])
    fake_summary(runs_dir, "joint-softmax-s0", valid=105, test=100)
    path = quality.write_tables(swept, runs_dir, str(tmp_path / "results"), "swept.json")
    with open(tmp_path / "results" / "quality.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["joint-softmax-s0"]
    with open(tmp_path / "results" / "lr-sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    assert [(r["name"], r["lr"], r["chosen"]) for r in sweep] == [
        ("softmax", "0.0003", ""), ("softmax", "0.001", "yes"), ("softmax", "0.003", ""),
        ("adaptive", "0.0003", ""), ("adaptive", "0.001", "")]  # adaptive's sweep is not finished
    text = open(path).read()
    assert "## Learning rates" in text and "`--train-tokens 5000`" in text
    assert "| softmax   | softmax   | 150.00      | **120.00** | 130.00     |" in text
    assert "| lowrank" not in text.split("## Learning rates")[1].split("Runs not finished")[0]


def test_a_plan_without_a_sweep_writes_no_sweep_file(plan, tmp_path):
    runs_dir = str(tmp_path / "results" / "runs")
    fake_summary(runs_dir, "joint-softmax-s0", valid=105, test=100)
    text = open(quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")).read()
    assert "Learning rates" not in text and not (tmp_path / "results" / "lr-sweep.csv").exists()


@pytest.mark.parametrize("sweep, match", [({"rates": [0.001]}, "two or more distinct numbers"),
                                          ({"rates": [0.001, 0.001]}, "two or more distinct numbers"),
                                          ({"rates": [0.001, -1]}, "two or more distinct numbers"),
                                          ({"rates": [0.001, True]}, "two or more distinct numbers"),
                                          ({"rates": [0.001, 0.01], "flags": ["--lr", "1"]}, "without --lr"),
                                          ({"rates": [0.001, 0.01], "flags": "--x"}, "a list of strings"),
                                          ({"rates": [0.001, 0.01], "epochs": 0}, "epochs must be an integer"),
                                          ({"rates": [0.01, 0.001]}, "increasing order"),
                                          ({"rates": [0.001, 0.01], "extend": -1}, "extend must be an integer"),
                                          ({"rates": [0.001, 0.01], "extend": "1"}, "extend must be an integer")])
def test_bad_sweeps_are_refused_with_one_line(tmp_path, capsys, sweep, match):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**PLAN, "lr_sweep": sweep}))
    assert quality.main(["plan", "--plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"lr_sweep: " in err and match in err and len(err.strip().splitlines()) == 1


def test_a_free_lane_waits_while_another_run_may_decide_more(swept, tmp_path, monkeypatch):
    # two lanes, one sweep run left: the free lane must not quit before that run's result lets more start
    runs_dir, checkpoints = str(tmp_path / "runs"), str(tmp_path / "ck")
    finish_sweep(runs_dir, "softmax", [150.0, 120.0, 130.0])
    finish_sweep(runs_dir, "vq-K1024", [150.0, 120.0, 130.0])
    finish_sweep(runs_dir, "adaptive", [150.0, 120.0])
    started = []

    class FakeRun:
        def __init__(self, command, **kwargs):
            run = os.path.basename(command[command.index("--out") + 1])
            started.append(run)
            if run == "joint-adaptive-lr0.003-s0":
                finish_sweep(runs_dir, "adaptive", [150.0, 120.0, 110.0])
            else:
                fake_summary(runs_dir, run, valid=100, test=100, stop="epochs: the budget of 4 epochs", epochs=4)

        def wait(self):
            return 0

    monkeypatch.setattr(quality.subprocess, "Popen", FakeRun)
    only = ["adaptive"]  # a variant's name selects its sweep runs too
    quality.run_all(swept, runs_dir, checkpoints, lanes=2, only=only, poll_s=0.01)
    assert started == ["joint-adaptive-lr0.003-s0", "joint-adaptive-s0"]


def test_lanes_take_runs_of_every_plan_so_none_idles_while_one_plan_has_a_single_run(tmp_path, monkeypatch):
    import threading
    import time
    plans = []
    for track in ("", "gpt"):
        path = tmp_path / f"plan{track}.json"
        path.write_text(json.dumps({"track": track, "runs": [
            {"name": "softmax", "head": "softmax", "group": "reference", "seeds": [0]}]}))
        plans.append(quality.Plan(str(path)))
    runs_dir, checkpoints = str(tmp_path / "runs"), str(tmp_path / "ck")
    lock, active, most, started = threading.Lock(), [0], [0], []

    class FakeRun:
        def __init__(self, command, **kwargs):
            self.run = os.path.basename(command[command.index("--out") + 1])
            started.append(self.run)
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])

        def wait(self):
            time.sleep(0.3)
            fake_summary(runs_dir, self.run, valid=100, test=100, stop="epochs: the budget of 20 epochs", epochs=20)
            with lock:
                active[0] -= 1
            return 0

    monkeypatch.setattr(quality.subprocess, "Popen", FakeRun)
    quality.run_all(plans, runs_dir, checkpoints, lanes=2, poll_s=0.01)
    assert sorted(started) == ["joint-gpt-softmax-s0", "joint-softmax-s0"] and most[0] == 2


def test_a_runner_with_a_stop_time_passes_it_to_each_run_and_starts_none_after_it(plan, tmp_path, monkeypatch):
    """--stop-at reaches every run's command (each stops at its first checkpoint after it), and once the time
    has passed no lane takes another run; a time that is no time is refused naming the flag."""
    import datetime
    runs_dir, checkpoints = str(tmp_path / "runs"), str(tmp_path / "ck")
    commands = []

    class FakeRun:
        def __init__(self, command, **kwargs):
            commands.append(command)

        def wait(self):
            return 0  # a run stopped at the time exits 0 without a summary

    monkeypatch.setattr(quality.subprocess, "Popen", FakeRun)
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)).isoformat()
    quality.run_all(plan, runs_dir, checkpoints, lanes=1, poll_s=0.01, stop_at=soon)
    assert commands and all(c[-2:] == ["--stop-at", soon] for c in commands)
    commands.clear()
    quality.run_all(plan, runs_dir, checkpoints, lanes=2, poll_s=0.01, stop_at="2000-01-01T00:00")
    assert commands == []
    with pytest.raises(SystemExit):
        quality.main(["run", "--plan", str(tmp_path / "plan.json"), "--stop-at", "tea time"])


def test_an_interrupted_runner_ends_its_runs_and_starts_no_more(plan, tmp_path, monkeypatch):
    """A time limit's SIGINT reaches the runner while its lanes train: each running child is ended, no lane
    takes another run, and the interrupt goes on to the caller (python -m vqbench.quality says so in one line)."""
    import signal
    import subprocess
    import threading
    import time
    runs_dir, checkpoints = str(tmp_path / "runs"), str(tmp_path / "ck")
    children, popen = [], subprocess.Popen

    def sleeper(command, **kwargs):  # a run that would train for a minute
        children.append(popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs))
        return children[-1]

    monkeypatch.setattr(quality.subprocess, "Popen", sleeper)
    # a test process started in the background by a shell without job control inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: install it for this test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        began = time.time()
        with pytest.raises(KeyboardInterrupt):
            quality.run_all(plan, runs_dir, checkpoints, lanes=2, poll_s=0.01)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(children) == 2 and all(child.wait(timeout=10) == -signal.SIGTERM for child in children)
    assert time.time() - began < 30


def test_perplexity_at_equal_training_time_uses_each_seeds_softmax_time_to_its_best_epoch(plan, tmp_path):
    runs_dir = str(tmp_path / "results" / "runs")

    def history(*epochs):
        return [{"epoch": i + 1, "valid_ppl": ppl, "train_seconds": seconds} for i, (ppl, seconds) in enumerate(epochs)]

    fake_summary(runs_dir, "joint-softmax-s0", valid=100, test=100, best_epoch=2, output_share=0.8,
                 history=history((130.0, 600.0), (100.0, 1200.0), (101.0, 1800.0)),
                 invocations=[{"threads": 2, "from_step": 0, "to_step": 900}])
    fake_summary(runs_dir, "joint-vq-K1024-s0", valid=105, test=105, best_epoch=5, output_share=0.2,
                 history=history((140.0, 300.0), (120.0, 600.0), (112.0, 900.0), (110.0, 1200.0), (105.0, 1500.0)))
    fake_summary(runs_dir, "joint-adaptive-s0", valid=99, test=99, best_epoch=1, output_share=0.3,
                 history=history((99.0, 1300.0)))
    fake_summary(runs_dir, "joint-lowrank-s0", valid=99, test=99, best_epoch=1, history=[{"epoch": 1, "valid_ppl": 99.0}])
    text = quality.equal_time_section(plan, runs_dir)
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
             if line.startswith("| ") and "variant" not in line}
    # the thread count is a column: seconds compare only between runs trained with the same count
    assert lines["softmax"] == ["0", "2", "100", "0.80", "100.00", "20", "100.00"]
    assert lines["vq-K1024"] == ["0", "not recorded", "100", "0.20", "105.00", "20", "110.00"]  # 1200 s: 4th epoch
    assert "one thread per run" not in text
    assert lines["adaptive"][-1] == "no epoch ended by then"
    assert lines["lowrank"][-1] == "no epoch ended by then"  # a history without seconds
    assert quality.equal_time_section(plan, str(tmp_path / "empty")) == ""


def cuda_invocation(**extra):
    return {"device": "cuda", "device_name": "NVIDIA H200", "threads": 2, **extra}


def test_each_run_names_its_device_and_gpu_runs_never_enter_the_equal_time_table(plan, tmp_path):
    runs_dir = str(tmp_path / "results" / "runs")
    history = [{"epoch": 1, "valid_ppl": 100.0, "train_seconds": 60.0}]
    assert quality.run_device({}) == "cpu"  # a summary from before the device record
    assert quality.run_device({"invocations": [{"device": "cpu"}, cuda_invocation()]}) == "cpu+NVIDIA H200"
    for name in ("softmax", "vq-K1024"):
        fake_summary(runs_dir, f"joint-{name}-s0", valid=100, test=100, best_epoch=1, history=history,
                     invocations=[cuda_invocation()])
    text = quality.equal_time_section(plan, runs_dir)
    assert "Not given: its 2 finished runs trained on a GPU shared with other runs" in text
    fake_summary(runs_dir, "joint-adaptive-s0", valid=99, test=99, best_epoch=1, history=history)  # on the CPU
    fake_summary(runs_dir, "joint-softmax-s0", valid=100, test=100, best_epoch=1, history=history)
    text = quality.equal_time_section(plan, runs_dir)
    assert "CPU runs only, 1 runs on a shared GPU left out" in text and "| vq-K1024" not in text
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")
    with open(tmp_path / "results" / "quality.csv") as f:
        devices = {r["run"]: r["device"] for r in csv.DictReader(f)}
    assert devices == {"joint-softmax-s0": "cpu", "joint-vq-K1024-s0": "NVIDIA H200", "joint-adaptive-s0": "cpu"}
    md = (tmp_path / "results" / "quality.md").read_text()
    assert "GPU runs (1, on NVIDIA H200): several runs share the GPU" in md


def test_every_variant_has_its_seed_paired_ratio_to_the_tied_softmax_where_the_setting_has_one(tmp_path):
    rows = [{"name": name, "group": group, "seed": seed, "test_ppl": test, "valid_ppl": test, "head": "h",
             "output_params": 10, "epochs": 3, "last_epoch_gain": 0.1, "varies": ""}
            for name, group, tests in (("softmax", "reference", (50.0, 52.0)), ("tied", "tied", (45.0, 50.0)),
                                       ("vq", "paper", (54.0, 54.0)))
            for seed, test in enumerate(tests)]
    by = {v["name"]: v for v in quality.aggregate(rows, "softmax")}
    assert by["vq"]["tied_seed_ratios"] == pytest.approx({0: 54 / 45, 1: 54 / 50})
    assert by["vq"]["tied_ratio_mean"] == pytest.approx((54 / 45 + 54 / 50) / 2)
    assert by["tied"]["tied_ratio_mean"] == pytest.approx(1.0)
    lstm = [dict(r, group="paper" if r["name"] == "vq" else "reference") for r in rows if r["name"] != "tied"]
    assert all(v["tied_ratio_seeds"] == 0 for v in quality.aggregate(lstm, "softmax"))
    table = quality.markdown_table(quality.aggregate(rows, "softmax"))
    assert "test ppl / tied softmax" in table.splitlines()[0]


def test_claims_from_a_budget_short_of_the_plateau_say_they_give_no_verdict(plan, tmp_path):
    from vqbench.report import build_report
    runs_dir = str(tmp_path / "quality" / "runs")
    for seed in (0, 1):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=110, test=100.0, seed=seed, params=6_000_000,
                     epochs=3, last_epoch_gain=0.168)
        fake_summary(runs_dir, f"joint-vq-K1024-s{seed}", valid=150, test=104.0, seed=seed, params=200_000, epochs=3)
    quality.write_tables(plan, runs_dir, str(tmp_path / "quality"), "plan.json")
    claims = [line for line in build_report(str(tmp_path)).splitlines() if line.startswith("| perplexity")]
    assert claims and all("at an equal budget of 3 epochs, short of softmax's validation plateau (its last epoch "
                          "still gained up to 16.8%): no verdict on the +4%" in line for line in claims)


def test_the_reference_trained_longer_gives_its_setting_a_reference_perplexity(tmp_path):
    """A variant of group reference-long (the reference trained longer) gets a claims line of its own: its test
    perplexity, its ratio to the budget's softmax of the same seed, and whether its own last epoch plateaued."""
    from vqbench.report import build_report
    path = tmp_path / "plan.json"
    long = {"name": "softmax-6ep", "head": "softmax", "group": "reference-long", "seeds": [0],
            "flags": ["--epochs", "6"]}
    path.write_text(json.dumps({**PLAN, "epochs": 3, "runs": PLAN["runs"][:2] + [long]}))
    plan = quality.Plan(str(path))
    runs_dir = str(tmp_path / "quality" / "runs")
    for seed in (0, 1):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=110, test=100.0 + seed, seed=seed, params=6_000_000,
                     epochs=3, last_epoch_gain=0.168)
        fake_summary(runs_dir, f"joint-vq-K1024-s{seed}", valid=150, test=104.0, seed=seed, params=200_000, epochs=3)
    fake_summary(runs_dir, "joint-softmax-6ep-s0", valid=100, test=92.0, params=6_000_000, epochs=6,
                 last_epoch_gain=0.021, stop="epochs: the budget of 6 epochs")
    quality.write_tables(plan, runs_dir, str(tmp_path / "quality"), "plan.json")
    claims = [line for line in build_report(str(tmp_path)).splitlines() if line.startswith("| perplexity")]
    reference = [line for line in claims if line.startswith("| perplexity, reference | none |")]
    assert len(reference) == 1 and ("the same softmax trained 6 epochs (softmax-6ep, 1 seed): test ppl 92.0, x0.920 "
                                    "of softmax's at 3 epochs (paired by seed); its last epoch gained 2.1%, short of "
                                    "the plateau too") in reference[0]
    assert not any("softmax-6ep" in line for line in claims if line not in reference)  # never "the best" of anything


def test_each_learned_map_reports_its_moves_and_whether_it_settled(plan, tmp_path):
    runs_dir = str(tmp_path / "runs")
    fake_summary(runs_dir, "joint-vq-learned-s0", valid=100, test=100, vocabulary="cl100k_base-1000")
    moves = [(500, 900, 0.9), (1000, 300, 0.3), (1500, 5, 0.005)]
    with open(os.path.join(runs_dir, "joint-vq-learned-s0", "log.jsonl"), "w") as f:
        f.write(json.dumps({"step": 0}) + "\n")
        for step, moved, share in moves:
            f.write(json.dumps({"step": step, "reassigned_tokens": moved, "reassigned_share_of_seen": share}) + "\n")
        f.write('{"step": 2000, "reassigned_to')  # a line cut short by a stop is skipped
    text = quality.learned_map_section(plan, runs_dir)
    row = [line for line in text.splitlines() if line.startswith("| joint-vq-learned-s0")][0]
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert cells == ["3", "900 (90.0%) at step 500", "5 (0.5%) at step 1,500", "5 (0.5%) at step 1,500", "yes"]
    # a log from before the count of tokens seen: shares of the vocabulary, and a map still moving has not settled
    with open(os.path.join(runs_dir, "joint-vq-learned-s0", "log.jsonl"), "w") as f:
        f.write(json.dumps({"step": 500, "reassigned_tokens": 400}) + "\n")
    assert "| 400 (40.0% of V) at step 500 |" in quality.learned_map_section(plan, runs_dir).replace("  ", " ")
    assert quality.learned_map_section(plan, str(tmp_path / "none")) == ""


def premise_plan(tmp_path, premise=("vq-K1024",)):
    path = tmp_path / "premise.json"
    path.write_text(json.dumps({**PLAN, "premise": {"variants": list(premise)}}))
    return quality.Plan(str(path))


def test_premise_runs_train_each_variant_on_each_finished_softmax_body(tmp_path):
    """A premise variant gets a frozen run per softmax seed once that seed's run has finished; it loads the
    body from the checkpoint folder, waits while that best.pt is missing, and is never a quality.csv row."""
    plan = premise_plan(tmp_path)
    runs_dir, checkpoints = str(tmp_path / "results" / "runs"), str(tmp_path / "ck")
    assert not [r for r in plan.runs(runs_dir) if r.group == quality.PREMISE_GROUP]
    fake_summary(runs_dir, "joint-softmax-s0", valid=110, test=100.0, params=6_000_000)
    frozen = [r for r in plan.runs(runs_dir) if r.group == quality.PREMISE_GROUP]
    assert [r.run for r in frozen] == ["frozen-vq-K1024-s0"]
    command = frozen[0].command(runs_dir, checkpoints, plan.common)
    assert command[command.index("--protocol") + 1] == "frozen" and command[command.index("--head") + 1] == "vq:K=1024"
    assert command[command.index("--body-from") + 1] == os.path.join(checkpoints, "joint-softmax-s0", "best.pt")
    assert command[command.index("--epochs") + 1] == str(plan.epochs) and command[command.index("--seed") + 1] == "0"
    assert quality.pick_next(plan, runs_dir, checkpoints, only=["premise"]) is None  # its body is not there
    os.makedirs(os.path.join(checkpoints, "joint-softmax-s0"))
    open(os.path.join(checkpoints, "joint-softmax-s0", "best.pt"), "w").close()
    assert quality.pick_next(plan, runs_dir, checkpoints, only=["premise"]).run == "frozen-vq-K1024-s0"

    fake_summary(runs_dir, "joint-vq-K1024-s0", valid=130, test=120.0, params=200_000)
    fake_summary(runs_dir, "frozen-vq-K1024-s0", valid=125, test=115.0, params=200_000, seed=0,
                 config={}, body="lstm", vocabulary="word-33278")
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")
    with open(tmp_path / "results" / "quality.csv") as f:
        assert {r["run"] for r in csv.DictReader(f)} == {"joint-softmax-s0", "joint-vq-K1024-s0"}
    with open(tmp_path / "results" / "premise.csv") as f:
        premise = list(csv.DictReader(f))
    assert [(r["run"], r["body_run"], r["K"], r["mapping"], r["test_ppl"], r["reference_test_ppl"])
            for r in premise] == [("frozen-vq-K1024-s0", "joint-softmax-s0", "1024", "frequency", "115.0", "100.0")]
    assert "frozen" not in open(tmp_path / "results" / "quality.md").read().split("Runs not finished yet")[0]


def test_premise_bodies_put_the_heads_on_each_named_softmax_variants_bodies(tmp_path):
    """``bodies`` names the softmax variants whose finished seeds carry the frozen heads: a run on the
    reference's body keeps the variant's name, one on another body is VARIANT-on-BODY (seed 0 of both exists),
    and premise.csv names each run's own body."""
    path = tmp_path / "premise.json"
    long = {"name": "softmax-long", "head": "softmax", "group": "reference-long", "seeds": [0],
            "flags": ["--epochs", "40"]}
    path.write_text(json.dumps({**PLAN, "runs": PLAN["runs"] + [long],
                                "premise": {"variants": ["vq-K1024"], "bodies": ["softmax", "softmax-long"]}}))
    plan = quality.Plan(str(path))
    runs_dir, checkpoints = str(tmp_path / "results" / "runs"), str(tmp_path / "ck")
    fake_summary(runs_dir, "joint-softmax-long-s0", valid=100, test=90.0, params=6_000_000)
    frozen = [r for r in plan.runs(runs_dir) if r.group == quality.PREMISE_GROUP]
    assert [(r.run, r.body_run) for r in frozen] == [("frozen-vq-K1024-on-softmax-long-s0", "joint-softmax-long-s0")]
    command = frozen[0].command(runs_dir, checkpoints, plan.common)
    assert command[command.index("--body-from") + 1] == os.path.join(checkpoints, "joint-softmax-long-s0", "best.pt")
    fake_summary(runs_dir, "joint-softmax-s0", valid=110, test=100.0, params=6_000_000)
    assert [r.run for r in plan.runs(runs_dir) if r.group == quality.PREMISE_GROUP] == [
        "frozen-vq-K1024-s0", "frozen-vq-K1024-on-softmax-long-s0"]
    for run, test in (("frozen-vq-K1024-s0", 115.0), ("frozen-vq-K1024-on-softmax-long-s0", 105.0)):
        fake_summary(runs_dir, run, valid=test + 10, test=test, params=200_000, config={})
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")
    with open(tmp_path / "results" / "premise.csv") as f:
        premise = [(r["name"], r["body_run"], r["test_ppl"], r["reference_test_ppl"]) for r in csv.DictReader(f)]
    assert premise == [("vq-K1024", "joint-softmax-s0", "115.0", "100.0"),
                       ("vq-K1024-on-softmax-long", "joint-softmax-long-s0", "105.0", "90.0")]


def test_a_plan_without_a_premise_writes_no_premise_file(plan, tmp_path):
    runs_dir = str(tmp_path / "results" / "runs")
    fake_summary(runs_dir, "joint-softmax-s0", valid=110, test=100.0)
    quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")
    assert not os.path.exists(tmp_path / "results" / "premise.csv")


@pytest.mark.parametrize("premise, match", [({"variants": ["nope"]}, "premise names 'nope'"),
                                            ({"variants": ["adaptive"]}, "premise names 'adaptive'"),
                                            ({"variants": []}, "premise: variants must be"),
                                            ({"variants": ["vq-K1024", "vq-K1024"]}, "premise: variants must be"),
                                            (["vq-K1024"], "premise: variants must be"),
                                            ({"variants": ["vq-K1024"], "bodies": "softmax"}, "premise: bodies must be"),
                                            ({"variants": ["vq-K1024"], "bodies": ["vq-K1024"]},
                                             "premise bodies names 'vq-K1024'"),
                                            ({"variants": ["vq-K1024"], "bodies": ["nope"]},
                                             "premise bodies names 'nope'")])
def test_bad_premises_are_refused_with_one_line(tmp_path, capsys, premise, match):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**PLAN, "premise": premise}))
    assert quality.main(["plan", "--plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_the_committed_plans_test_the_premise_at_the_papers_K_and_the_95_percent_K():
    gpt = quality.Plan(quality.TRANSFORMER_PLAN)
    assert gpt.premise == ("vq-K1024", "vq-K5013")
    heads = {e["name"]: e["head"] for e in gpt.entries}
    assert [heads[name] for name in gpt.premise] == ["vq:K=1024", "vq:K=5013"]
    # the premise plans train each track's softmax again (its bodies' checkpoints are gone), with the same
    # body flags, budget and rate as the track's own softmax, and VQ heads only on its frozen bodies
    lstm = quality.Plan(quality.DEFAULT_PLAN)
    for premise_path, track, ks in zip(quality.PREMISE_PLANS, (lstm, gpt), ((1024, 1536), (1024, 5013))):
        plan = quality.Plan(premise_path)
        reference, body = plan.reference(), track.reference()
        assert (plan.common, plan.epochs, plan.track) == (track.common, track.epochs, track.track)
        assert reference["head"] == body["head"] and reference["seeds"] == [0, 1, 2]
        rate = track.chosen_lr(body, quality.DEFAULT_RESULTS + "/runs") if track.swept(body) else None
        assert reference.get("flags", []) == (["--lr", rate] if rate else [])
        heads = {e["name"]: e["head"] for e in plan.entries}
        assert [heads[name] for name in plan.premise] == [f"vq:K={k}" for k in ks]
        assert all(e["seeds"] == [] for e in plan.entries if e["name"] in plan.premise)


def test_a_rate_chosen_at_the_grids_edge_is_swept_one_step_further(tmp_path):
    """With extend 1, a variant whose best rate is the grid's largest (smallest) adds one rate a grid ratio
    above (below) it, rounded to one digit; its rate is chosen once that run has finished, at most one step
    per side; an interior best adds nothing. The sweep table gets a column for the added rate."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**SWEPT, "lr_sweep": {**SWEPT["lr_sweep"], "extend": 1}}))
    plan = quality.Plan(str(path))
    runs_dir = str(tmp_path / "results" / "runs")
    softmax, vq, adaptive = plan.entries[:3]
    finish_sweep(runs_dir, "softmax", [150.0, 130.0, 120.0])  # best at the top edge
    finish_sweep(runs_dir, "vq-K1024", [150.0, 120.0, 130.0])  # interior
    finish_sweep(runs_dir, "adaptive", [110.0, 120.0, 130.0])  # best at the bottom edge
    assert plan.swept_rates(softmax, runs_dir) == [0.0003, 0.001, 0.003, 0.009]
    assert plan.swept_rates(vq, runs_dir) == [0.0003, 0.001, 0.003] and plan.chosen_lr(vq, runs_dir) == "0.001"
    assert plan.swept_rates(adaptive, runs_dir) == [9e-05, 0.0003, 0.001, 0.003]
    assert plan.chosen_lr(softmax, runs_dir) is None and plan.chosen_lr(adaptive, runs_dir) is None
    names = [r.run for r in plan.runs(runs_dir)]
    assert "joint-softmax-lr0.009-s0" in names and "joint-adaptive-lr9e-05-s0" in names
    assert not any(n.startswith("joint-softmax-s") for n in names)
    fake_summary(runs_dir, "joint-softmax-lr0.009-s0", valid=110.0, test=110.0, stop="epochs: the budget of 1 epochs",
                 epochs=1, config={"train_tokens": 5000})  # better still, but one step is the budget
    assert plan.swept_rates(softmax, runs_dir)[-1] == 0.009 and plan.chosen_lr(softmax, runs_dir) == "0.009"
    fake_summary(runs_dir, "joint-adaptive-lr9e-05-s0", valid=115.0, test=115.0, stop="epochs: the budget of 1 epochs",
                 epochs=1, config={"train_tokens": 5000})
    assert plan.chosen_lr(adaptive, runs_dir) == "0.0003"
    fake_summary(runs_dir, "joint-softmax-s0", valid=105, test=100)
    text = open(quality.write_tables(plan, runs_dir, str(tmp_path / "results"), "plan.json")).read()
    header = next(line for line in text.split("## Learning rates")[1].splitlines() if line.startswith("| variant"))
    assert [c.strip() for c in header.split("|")[3:-1]] == ["lr 9e-05", "lr 0.0003", "lr 0.001", "lr 0.003", "lr 0.009"]
    assert "**110.00**" in text and "at most 1 time(s) per side" in text


def test_a_rows_cpu_id_names_every_kind_of_cpu_its_invocations_trained_on():
    from vqbench.quality import run_cpu_ids
    zen3, zen4 = "AuthenticAMD family 25 model 1 stepping 1, avx2", "AuthenticAMD family 25 model 17 stepping 1, avx512_bf16"
    assert run_cpu_ids({"invocations": [{"threads": 1}]}) == ""  # logged before cpu_id was recorded
    assert run_cpu_ids({"invocations": [{"cpu_id": zen4}, {"cpu_id": zen4}]}) == zen4
    assert run_cpu_ids({"invocations": [{"cpu_id": zen4}, {}, {"cpu_id": zen3}]}) == f"{zen4} + {zen3}"
