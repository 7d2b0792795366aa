"""The oracle estimate: summed nats against a brute-force sum over tokens, and its identities."""

import math

import pytest
import torch

from vqbench.oracle import code_nats, oracle_table


def brute_force(log_probs, targets, codes, counts):
    softmax = uniform = unigram = 0.0
    V = log_probs.shape[1]
    for n, y in enumerate(targets.tolist()):
        members = [i for i in range(V) if codes[i] == codes[y]]
        p_code = sum(math.exp(float(log_probs[n, i])) for i in members)
        softmax -= float(log_probs[n, y])
        uniform += -math.log(p_code) + math.log(len(members))
        unigram += -math.log(p_code) - math.log(float(counts[y]) / sum(float(counts[i]) for i in members))
    return softmax, uniform, unigram


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_code_nats_match_a_brute_force_sum(seed):
    g = torch.Generator().manual_seed(seed)
    V, K, N = 11, 4, 9
    log_probs = torch.log_softmax(torch.randn(N, V, generator=g, dtype=torch.float64) * 2, dim=1)
    targets = torch.randint(0, V, (N,), generator=g)
    codes = torch.randint(0, K, (V,), generator=g)
    codes[:K] = torch.arange(K)  # every code used
    counts = torch.randint(1, 50, (V,), generator=g).double()
    assert code_nats(log_probs, targets, codes, counts, K) == pytest.approx(
        brute_force(log_probs, targets, codes, counts), rel=1e-10)


def test_singleton_codes_cost_nothing_and_one_code_costs_the_uniform_guess():
    g = torch.Generator().manual_seed(0)
    V, N = 8, 20
    log_probs = torch.log_softmax(torch.randn(N, V, generator=g, dtype=torch.float64), dim=1)
    targets = torch.randint(0, V, (N,), generator=g)
    counts = torch.ones(V, dtype=torch.float64)
    chunks = [(log_probs[:7], targets[:7]), (log_probs[7:], targets[7:])]
    two_alone = torch.cat([torch.arange(2), torch.full((V - 2,), 2)])  # tokens 0 and 1 alone, the rest share code 2
    rows = oracle_table(chunks, {("identity", V): torch.arange(V), ("one", 1): torch.zeros(V, dtype=torch.int64),
                                 ("two-alone", 3): two_alone}, counts)
    by = {r["mapping"]: r for r in rows}
    assert by["identity"]["oracle_ratio"] == pytest.approx(1.0)
    assert by["identity"]["within_code_ppl_factor"] == pytest.approx(1.0)
    # one code holding every token: the code has probability 1, so the oracle is the uniform guess V
    assert by["one"]["oracle_ppl"] == pytest.approx(V)
    assert by["one"]["oracle_unigram_ppl"] == pytest.approx(V)  # equal counts: unigram share = 1/n
    assert by["one"]["test_tokens"] == N
    assert (by["identity"]["exact_rows"], by["identity"]["exact_share"]) == (V, 1.0)
    assert (by["one"]["exact_rows"], by["one"]["exact_share"]) == (0, 0.0)
    assert by["two-alone"]["exact_rows"] == 2
    assert by["two-alone"]["exact_share"] == pytest.approx(float((targets < 2).double().mean()))
    softmax = math.exp(-float(log_probs.gather(1, targets[:, None]).sum()) / N)
    assert by["one"]["softmax_ppl"] == pytest.approx(softmax)


def oracle_csv(path, rows, run="joint-softmax", softmax=100.0):
    """An oracle file of rows (seed, mapping, K, ratio, unigram ratio) from the models ck/RUN-sSEED/best.pt,
    whose test perplexity is softmax + seed."""
    import csv

    from vqbench.oracle import COLUMNS
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for seed, mapping, K, ratio, unigram_ratio in rows:
            writer.writerow({"model": f"ck/{run}-s{seed}/best.pt", "model_seed": seed, "mapping": mapping,
                             "K": K, "softmax_ppl": softmax + seed, "oracle_ppl": (softmax + seed) * ratio,
                             "oracle_ratio": ratio, "oracle_unigram_ppl": (softmax + seed) * unigram_ratio,
                             "oracle_unigram_ratio": unigram_ratio, "within_code_ppl_factor": 3.0,
                             "exact_rows": 600, "exact_share": 0.7, "test_tokens": 1000, "cpu_model": "test CPU",
                             "git_commit": "abc"})


def softmax_and_paper_runs(results):
    """Finished fake runs of softmax (test 100, 101) and vq-K1024 (150, 160) for seeds 0 and 1 under
    results/runs, and a plan without best seeds beside results: (runs_dir, plan_path)."""
    import json

    from test_quality import PLAN, fake_summary
    runs_dir = str(results / "runs")
    for seed, (soft, vq) in enumerate([(100.0, 150.0), (101.0, 160.0)]):
        fake_summary(runs_dir, f"joint-softmax-s{seed}", valid=soft, test=soft, seed=seed)
        fake_summary(runs_dir, f"joint-vq-K1024-s{seed}", valid=vq, test=vq, seed=seed, config={})
    plan_path = results.parent / "plan.json"
    plan_path.write_text(json.dumps({**PLAN, "best_seeds": {"seeds": [], "groups": []}}))
    return runs_dir, plan_path


def test_the_table_splits_each_measured_vq_gap_into_mapping_and_codebook_by_seed(tmp_path):
    """quality table renders oracle.md: per seed s, codebook factor = (VQ_s / softmax_s) / (oracle_s / softmax_s)."""
    from vqbench import quality
    from test_quality import fake_summary

    results = tmp_path / "results"
    runs_dir, plan_path = softmax_and_paper_runs(results)
    fake_summary(runs_dir, "joint-vq-bias-s0", valid=140.0, test=140.0, config={})
    fake_summary(runs_dir, "joint-vq-learned-s0", valid=130.0, test=130.0, config={"reassign_every": 500})
    oracle_csv(results / "oracle.csv", [(0, "frequency", 1024, 1.2, 1.25), (1, "frequency", 1024, 1.25, 1.3),
                                        (0, "random", 1024, 9.0, 9.0), (1, "random", 1024, 11.0, 11.0),
                                        (0, "learned", 1024, 1.1, 1.1)])
    quality.write_tables(quality.Plan(str(plan_path)), runs_dir, str(results), "plan.json")
    rows = {r["name"]: r for r in __import__("csv").DictReader(open(results / "quality.csv"))}
    assert (rows["vq-K1024"]["mapping"], rows["vq-learned"]["mapping"], rows["softmax"]["mapping"]) == \
        ("frequency", "learned", "")
    text = (results / "oracle.md").read_text()
    split = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in text.split("## Measured VQ runs")[1].splitlines() if line.startswith("| vq")}
    # paper form: measured 1.5 and 160/101; oracle 1.2 and 1.25; codebook 1.25 and (160/101)/1.25
    paper = split["vq-K1024"]
    assert paper[5] == "%.3f ± %.3f" % mean_std([1.5, 160 / 101])
    assert paper[6] == "1.225 ± 0.035" and paper[7] == "%.3f ± %.3f" % mean_std([1.25, 160 / 101 / 1.25])
    assert paper[8] == "%.0f%%" % (100 * math.log(1.225) / math.log((1.5 + 160 / 101) / 2))
    assert split["vq-bias"][3].startswith("unigram share") and split["vq-bias"][6] == "1.250"  # seed 0's estimate
    assert split["vq-bias"][7] == "%.3f" % (1.4 / 1.25)
    assert split["vq-learned"][1] == "learned" and split["vq-learned"][7] == "%.3f" % (1.3 / 1.1)
    estimate = text.split("## The estimate")[1].split("## Measured")[0]
    assert "| random    | 1024 | 2" in estimate and "10.000 ± 1.414" in estimate
    assert "bound" not in text.replace("not a bound", "")  # an estimate of one predictor, never a bound
    assert "seed 1: test ppl 101.0" in text and "test CPU" in text


def mean_std(values):
    import statistics
    return statistics.fmean(values), statistics.stdev(values)


def tiny_corpus(folder, seed=0):
    """Sentences from a small grammar (two word classes that follow each other), 40 word types."""
    import random
    rng = random.Random(seed)
    nouns, verbs = [f"n{i}" for i in range(24)], [f"v{i}" for i in range(15)]
    def lines(count):
        return "".join(" ".join(rng.choice(nouns if j % 2 == 0 else verbs) for j in range(rng.randint(3, 9))) + "\n"
                       for _ in range(count))
    folder.mkdir()
    for name, count in (("train.txt", 600), ("valid.txt", 80), ("test.txt", 80)):
        (folder / name).write_text(lines(count))
    return str(folder)


def test_the_oracle_command_on_a_tiny_corpus_matches_a_brute_force_sum(tmp_path, capsys):
    """End to end: train a tiny softmax model, run the oracle (with a searched map), and recompute its rows by
    brute force from the model's own test log-probabilities."""
    import csv

    from vqbench import oracle, train
    from vqbench.training.data import load_corpus
    from vqbench.training.evaluate import hidden_states
    from vqbench.heads.mapping import build_mapping

    data = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    train.train(train.parse_args(["--head", "softmax", "--data", data, "--d-model", "16", "--layers", "1",
                                  "--bptt", "10", "--batch-size", "4", "--steps", "80", "--optimizer", "adam",
                                  "--lr", "0.01", "--threads", "1", "--out", str(out)]))
    vq = tmp_path / "vq"
    train.train(train.parse_args(["--head", "vq:K=5", "--data", data, "--d-model", "16", "--layers", "1",
                                  "--bptt", "10", "--batch-size", "4", "--steps", "40", "--reassign-every", "10",
                                  "--optimizer", "adam", "--lr", "0.01", "--threads", "1", "--out", str(vq)]))
    csv_path = tmp_path / "oracle" / "oracle.csv"
    assert oracle.main(["--model", str(out / "checkpoint.pt"), "--learned", str(vq / "checkpoint.pt"), "--data", data,
                        "--K", "4", "8", "--search", "6", "--sweeps", "5", "--chunk", "37",
                        "--out", str(csv_path)]) == 0
    rows = {(r["mapping"], int(r["K"])): r for r in csv.DictReader(open(csv_path))}
    assert set(rows) == {(m, k) for m in oracle.MAPPINGS for k in (4, 8)} | {("searched", 6), ("learned", 5)}
    corpus = load_corpus(data)
    learned = oracle.learned_mapping(str(vq / "checkpoint.pt"), corpus)[1]
    body, head, cfg = oracle.load_softmax_model(str(out / "checkpoint.pt"), corpus)
    hidden, targets = hidden_states(body, corpus.ids["test"], cfg["bptt"])
    with torch.no_grad():
        log_probs = head.log_probs(hidden).double()
    for (name, k), row in rows.items():
        if name == "searched":
            continue
        codes = learned if name == "learned" else build_mapping(
            name, corpus.vocab_size, k, corpus.counts.double(), seed=0, embeddings=head.weight.detach())[0]
        softmax, uniform, unigram = brute_force(log_probs, targets, codes.tolist(), corpus.counts.double())
        n = targets.numel()
        assert float(row["softmax_ppl"]) == pytest.approx(math.exp(softmax / n), rel=1e-5)
        assert float(row["oracle_ppl"]) == pytest.approx(math.exp(uniform / n), rel=1e-5), (name, k)
        assert float(row["oracle_unigram_ppl"]) == pytest.approx(math.exp(unigram / n), rel=1e-5), (name, k)
    note = rows[("searched", 6)]["note"]
    before, after = (float(x) for x in note.split("(")[1].split(" nats")[0].split(" -> "))
    held_before, held_kept = (float(x) for x in note.split("odd chunks (")[1].split(")")[0].split(" -> "))
    assert after < before and held_kept <= held_before  # the search lowered the validation objective
    assert "searched K=6, softmax seed 0" in (tmp_path / "oracle" / "oracle.md").read_text()
    assert oracle.main(["--model", str(out / "checkpoint.pt"), "--data", data, "--out", str(csv_path)]) == 2
    assert "exists" in capsys.readouterr().err  # a measured oracle.csv is never overwritten


def test_add_appends_only_rows_not_scored_yet_and_never_changes_the_rows_there(tmp_path, capsys):
    import shutil

    from vqbench import oracle, train

    data = tiny_corpus(tmp_path / "corpus")
    runs = {}
    for seed in (0, 1):
        runs[seed] = tmp_path / f"softmax-s{seed}"
        train.train(train.parse_args(["--head", "softmax", "--data", data, "--d-model", "8", "--layers", "1",
                                      "--bptt", "10", "--batch-size", "4", "--steps", "20", "--seed", str(seed),
                                      "--optimizer", "adam", "--lr", "0.01", "--threads", "1", "--out", str(runs[seed])]))
    csv_path = tmp_path / "oracle.csv"
    common = ["--data", data, "--out", str(csv_path)]
    assert oracle.main(["--model", str(runs[0] / "checkpoint.pt"), "--K", "4", *common]) == 0
    first = csv_path.read_text()
    shutil.copy(runs[0] / "checkpoint.pt", tmp_path / "copy-of-seed-0.pt")
    # every row asked is there already, or another file of a seed scored there: refused, file untouched
    for model, match in ((runs[0] / "checkpoint.pt", "every asked mapping and K scored"),
                         (tmp_path / "copy-of-seed-0.pt", "has seed 0")):
        capsys.readouterr()  # the corpus loader's progress lines of the runs above
        assert oracle.main(["--model", str(model), "--K", "4", "--add", *common]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and match in err[0]
        assert csv_path.read_text() == first
    # a new seed, and a new K for a seed already there: only the missing rows are scored and appended
    assert oracle.main(["--model", str(runs[1] / "checkpoint.pt"), "--K", "4", "--add", *common]) == 0
    assert oracle.main(["--model", str(runs[0] / "checkpoint.pt"), "--K", "4", "8", "--add", *common]) == 0
    assert csv_path.read_text().startswith(first)
    keys = [(r["model_seed"], r["mapping"], r["K"]) for r in oracle.read_rows(str(csv_path))]
    assert len(keys) == len(set(keys)) == 3 * len(oracle.MAPPINGS)
    assert {(seed, k) for seed, _, k in keys} == {(0, 4), (1, 4), (0, 8)}
    assert "| frequency  | 4   | 2 " in (tmp_path / "oracle.md").read_text()  # the estimate now averages two models


def test_the_report_states_the_estimate_from_oracle_csv_next_to_the_measured_gaps(tmp_path):
    from vqbench import quality
    from vqbench.report import build_report

    results = tmp_path / "quality"
    runs_dir, plan_path = softmax_and_paper_runs(results)
    quality.write_tables(quality.Plan(str(plan_path)), runs_dir, str(results), "plan.json")
    assert "The oracle estimate" not in build_report(str(tmp_path))  # no oracle.csv, no section
    oracle_csv(results / "oracle.csv", [(0, "frequency", 1024, 1.2, 1.25), (1, "frequency", 1024, 1.25, 1.3),
                                        (0, "learned", 1536, 1.15, 1.1), (0, "frequency", 4096, 1.05, 1.05)])
    report = build_report(str(tmp_path))
    section = report.split("### The oracle estimate")[1]
    assert "the paper's form (frequency map, K=1024) estimated x1.225 (2 softmax models)" in section
    # K=4096 is not a >= 95% cut at d=200, so the lowest estimate among the small codebooks is the learned map's
    assert "with 1/n inside a code: x1.150 (learned map, K=1536, 1 softmax model)" in section
    assert "with unigram shares: x1.100 (learned map, K=1536" in section
    assert "| vq-K1024 " in section and "1.225 ± 0.035" in section
    # the verdict on the paper's +4%: the lowest estimate at K <= 1663 of either column, and the measured
    # paired factors (150/100 over 1.2 and 160/101 over 1.25: mean 1.259)
    assert ("The paper's +4% (x1.040) lies below every estimate at K <= 1663: the lowest, x1.100 (learned map, "
            "K=1536, unigram shares inside a code), is 6% above it.") in section
    assert "The one measured VQ variant lies above its estimate: codebook factor x1.259." in section
    assert "bound" not in section.replace("not a bound", "")

    (results / "oracle.csv").unlink()
    oracle_csv(results / "oracle.csv", [(0, "frequency", 1024, 1.6, 1.6), (1, "learned", 1536, 1.2, 1.03)])
    section = build_report(str(tmp_path)).split("### The oracle estimate")[1]
    assert ("The paper's +4% (x1.040) is not ruled out at K <= 1663: the learned map at K=1536 (unigram shares "
            "inside a code) has an estimate of x1.030.") in section
    assert "The one measured VQ variant lies below its estimate: codebook factor x0.938." in section


def test_the_oracle_reads_a_gpt_softmax_model(tmp_path):
    """The estimate on the transformer track: the oracle rebuilds the GPT body its softmax run trained, and
    its softmax perplexity is that model's own test perplexity."""
    import csv

    from vqbench import oracle, train
    from vqbench.training.data import load_corpus
    from vqbench.training.evaluate import perplexity

    data = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    train.train(train.parse_args(["--head", "softmax", "--body", "gpt", "--heads", "2", "--data", data,
                                  "--d-model", "16", "--layers", "1", "--bptt", "10", "--batch-size", "4",
                                  "--steps", "20", "--optimizer", "adamw", "--lr", "0.01", "--threads", "1",
                                  "--out", str(out)]))
    csv_path = tmp_path / "oracle.csv"
    assert oracle.main(["--model", str(out / "checkpoint.pt"), "--data", data, "--K", "4", "--out", str(csv_path)]) == 0
    corpus = load_corpus(data)
    body, head, cfg = oracle.load_softmax_model(str(out / "checkpoint.pt"), corpus)
    assert type(body).__name__ == "GPTBody"
    rows = list(csv.DictReader(open(csv_path)))
    assert float(rows[0]["softmax_ppl"]) == pytest.approx(perplexity(body, head, corpus.ids["test"], cfg["bptt"]),
                                                          rel=1e-6)


def test_each_tracks_oracle_file_pairs_only_with_runs_and_frozen_bodies_of_its_own_setting(tmp_path):
    """oracle.csv (LSTM, written before the body and vocabulary columns) and oracle-gpt.csv (the transformer
    track): each .md and REPORT section pairs its estimates with the quality rows and premise runs of its own
    setting only, never a GPT run with an LSTM estimate of the same seed, mapping and K."""
    import csv

    from vqbench import quality
    from vqbench.oracle import COLUMNS, write_markdown
    from vqbench.report import build_report

    results = tmp_path / "quality"
    results.mkdir()
    oracle_csv(results / "oracle.csv", [(0, "frequency", 1024, 1.2, 1.25), (1, "frequency", 1024, 1.25, 1.3)])
    with open(results / "oracle-gpt.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for seed in (0, 1):
            writer.writerow({"model": f"ck/joint-gpt-softmax-s{seed}/best.pt", "model_seed": seed, "body": "gpt-4x128",
                             "vocabulary": "cl100k_base-100277", "mapping": "frequency", "K": 5013,
                             "softmax_ppl": 200.0, "oracle_ppl": 260.0 + seed, "oracle_ratio": (260.0 + seed) / 200,
                             "oracle_unigram_ppl": 250.0, "oracle_unigram_ratio": 1.25, "within_code_ppl_factor": 2.0,
                             "exact_rows": 10, "exact_share": 0.5, "test_tokens": 1000, "cpu_model": "test CPU",
                             "git_commit": "abc"})
    rows = []
    for seed, (lstm_soft, lstm_vq, gpt_soft, gpt_vq) in enumerate([(100.0, 150.0, 200.0, 280.0),
                                                                   (101.0, 160.0, 200.0, 290.0)]):
        for name, head, test, body, vocabulary in (
                ("softmax", "softmax", lstm_soft, "lstm", "word-33278"),
                ("vq-K1024", "vq:K=1024", lstm_vq, "lstm", "word-33278"),
                ("softmax", "softmax:chunk=4096", gpt_soft, "gpt-4x128", "cl100k_base-100277"),
                ("vq-K5013", "vq:K=5013", gpt_vq, "gpt-4x128", "cl100k_base-100277")):
            rows.append({"run": f"joint-{name}-s{seed}", "name": name, "head": head,
                         "mapping": "frequency" if name.startswith("vq") else "", "body": body,
                         "vocabulary": vocabulary, "protocol": "joint", "seed": seed, "group": "g", "epochs": 3,
                         "best_epoch": 3, "stop": "epochs", "valid_ppl": test, "test_ppl": test,
                         "last_epoch_gain": 0.01, "output_params": 1000, "tokens_per_s": 1.0})
    with open(results / "quality.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=quality.CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(results / "premise.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=quality.PREMISE_COLUMNS)
        writer.writeheader()
        for seed, test in ((0, 247.0), (1, 248.0)):
            writer.writerow({"track": "gpt", "body": "gpt-4x128", "vocabulary": "cl100k_base-100277",
                             "name": "vq-K5013", "head": "vq:K=5013", "mapping": "frequency", "K": 5013, "seed": seed,
                             "run": f"frozen-gpt-vq-K5013-s{seed}", "body_run": f"joint-gpt-softmax-s{seed}",
                             "epochs": 3, "best_epoch": 3, "stop": "epochs", "valid_ppl": test, "test_ppl": test,
                             "reference_test_ppl": 200.0, "tokens_per_s": 1.0, "cpu_model": "test CPU",
                             "git_commit": "abc"})
    lstm = open(write_markdown(str(results / "oracle.csv"))).read()
    gpt = open(write_markdown(str(results / "oracle-gpt.csv"))).read()
    assert "Setting: 2-layer LSTM, word-level WikiText-2 V=33,278." in lstm
    assert "Setting: 4-layer GPT, d=128, cl100k_base WikiText-2 V=100,277." in gpt
    assert "| vq-K1024 " in lstm and "vq-K5013" not in lstm.split("## The premise")[0]
    assert "No VQ head trained on a frozen softmax body has finished" in lstm
    assert "| vq-K1024 " not in gpt
    premise = next(line for line in gpt.split("## The premise")[1].splitlines() if line.startswith("| vq-K5013"))
    cells = [c.strip() for c in premise.split("|")[1:-1]]
    frozen = [247 / 260, 248 / 261]  # below the estimate: the trained head predicts codes better
    joint = [280 / 260, 290 / 261]
    assert cells[3] == "0, 1" and cells[4] == "247.5 ± 0.7" and cells[5] == "260.5 ± 0.7"
    # each frozen head and each estimate against the test perplexity of the softmax whose body it used
    assert cells[6].startswith("%.3f ± %.3f (95%% CI " % mean_std([247 / 200, 248 / 200]))
    assert cells[7].startswith("%.3f ± %.3f (95%% CI " % mean_std([260 / 200, 261 / 200]))
    assert cells[8].startswith("%.3f ± %.3f (95%% CI " % mean_std(frozen))
    assert cells[9].startswith("%.3f ± %.3f (95%% CI " % mean_std(joint))
    assert "vq-K5013 on the frozen bodies lies below the estimate" in gpt

    report = build_report(str(tmp_path))
    sections = report.split("### The oracle estimate: ")[1:]
    # each title names the softmax models scored, so two files of one setting get sections told apart
    assert [s.split("\n")[0].split(" (from ")[0] for s in sections] == [
        "2-layer LSTM, word-level WikiText-2 V=33,278", "4-layer GPT, d=128, cl100k_base WikiText-2 V=100,277"]
    assert sections[1].split("\n")[0].endswith("(from joint-gpt-softmax-s0, joint-gpt-softmax-s1)")
    assert "K <= 1663 gives >= 95% fewer" in sections[0] and "K <= 5013 gives >= 95% fewer" in sections[1]
    assert "lies below the estimate" in sections[1] and "lies below the estimate" not in sections[0]


@pytest.mark.parametrize("measured, said", [
    ([95.0, 96.0, 97.0], "lies below the estimate: a head trained for the code task predicts codes better"),
    ([105.0, 106.0, 107.0], "lies above the estimate: the trained head predicts codes no better"),
    ([90.0, 110.0, 101.0], "lies neither above nor below the estimate that its seeds can tell"),
    ([95.0], "lies below the estimate: a head trained for the code task predicts codes better")])
def test_the_premise_sentence_follows_the_interval_not_only_the_mean(measured, said):
    """Frozen-body perplexities against an estimate of 100 per seed: the sentence says below or above only
    when the 95% t-interval of measured / estimate excludes 1, and names a single seed as such."""
    from vqbench.oracle import premise_markdown
    oracle = [{"model_seed": s, "mapping": "frequency", "K": 1024, "oracle_ppl": 100.0, "oracle_unigram_ppl": 90.0,
               "body": "lstm", "vocabulary": "word-33278", "model": f"ck/joint-softmax-s{s}/best.pt"}
              for s in range(len(measured))]
    premise = [{"name": "vq-K1024", "head": "vq:K=1024", "mapping": "frequency", "K": 1024, "seed": s,
                "test_ppl": m, "reference_test_ppl": 80.0, "body": "lstm", "vocabulary": "word-33278",
                "body_run": f"joint-softmax-s{s}"}
               for s, m in enumerate(measured)]
    text = premise_markdown(oracle, premise, [])
    assert said in text
    assert ("a single seed: no interval" in text) == (len(measured) == 1)


def test_a_frozen_head_is_set_against_the_estimate_from_its_own_body_only():
    """Two softmax models of one seed (a plan's softmax and a retrained replicate): a head trained on the
    replicate's frozen body pairs with the replicate's estimate, never with the other model's."""
    from vqbench.oracle import premise_markdown, premise_pairs
    oracle = [{"model_seed": 0, "mapping": "frequency", "K": 1024, "oracle_ppl": ppl, "oracle_unigram_ppl": ppl,
               "body": "gpt-4x128", "vocabulary": "cl100k_base-100277", "model": f"ck/{run}/best.pt"}
              for run, ppl in (("joint-gpt-softmax-body-s0", 100.0),)]
    premise = [{"name": name, "head": "vq:K=1024", "mapping": "frequency", "K": 1024, "seed": 0, "test_ppl": 95.0,
                "reference_test_ppl": 80.0, "body": "gpt-4x128", "vocabulary": "cl100k_base-100277", "body_run": body}
               for name, body in (("vq-K1024", "joint-gpt-softmax-s0"), ("vq-K1024-on-body", "joint-gpt-softmax-body-s0"))]
    pairs = premise_pairs(oracle, premise, [])
    assert [(p["name"], p["estimate"]) for p in pairs] == [("vq-K1024-on-body", [100.0])]
    # an estimate from the plan's own softmax, whose body no frozen head used, says where its setting's heads are
    plan_model = [{**oracle[0], "model": "ck/joint-gpt-softmax-s1/best.pt"}]
    text = premise_markdown(plan_model, premise[1:], [])
    assert text.startswith("No VQ head trained on a frozen softmax body is set against these softmax models.")
    assert "yet" not in text  # the setting's heads are elsewhere: nothing here waits for a run
    assert "trained on other softmax models' bodies (joint-gpt-softmax-body-s0)" in text


def test_a_premise_plans_frozen_head_is_set_beside_the_joint_variant_of_its_head_and_mapping():
    """A premise plan names its frozen head vq-K1024-on-body; the jointly trained column still gets the
    quality variant with that head and mapping (vq-K1024), but not when two variants share them."""
    from vqbench.oracle import premise_pairs
    oracle = [{"model_seed": s, "mapping": "frequency", "K": 1024, "oracle_ppl": 100.0, "oracle_unigram_ppl": 100.0,
               "oracle_ratio": 1.25, "oracle_unigram_ratio": 1.25, "body": "lstm", "vocabulary": "word-33278",
               "model": f"ck/joint-softmax-body-s{s}/best.pt"} for s in (0, 1)]
    premise = [{"name": "vq-K1024-on-body", "head": "vq:K=1024", "mapping": "frequency", "K": 1024, "seed": s,
                "test_ppl": 110.0, "reference_test_ppl": 80.0, "body": "lstm", "vocabulary": "word-33278",
                "body_run": f"joint-softmax-body-s{s}"} for s in (0, 1)]

    def variant(name, mapping="frequency"):
        return {"name": name, "head": "vq:K=1024", "mapping": mapping, "ratio_mean": 1.4,
                "seed_ratios": {0: 1.375, 1: 1.5}}

    pairs = premise_pairs(oracle, premise, [variant("vq-K1024"), variant("vq-K1024-learned", "learned")])
    assert [p["joint"] for p in pairs] == [[1.375 / 1.25, 1.5 / 1.25]]
    assert premise_pairs(oracle, premise, [variant("vq-K1024"), variant("vq-K1024-again")])[0]["joint"] == []


@pytest.mark.parametrize("measured, share", [((1.5, 1.5), "55%"), ((1.1, 1.1), "n/a: the estimate lies above"),
                                             ((0.9, 0.9), "")])
def test_the_mappings_share_of_the_gap_is_given_only_where_it_is_a_part_of_the_gap(measured, share):
    """log(estimate) / log(measured) is a share only for 1 <= estimate <= measured: an estimate above the
    measured ratio (x1.25 against x1.1) gets no share over 100%, and a VQ run below its softmax none at all."""
    from vqbench.oracle import gap_split
    oracle = [{"model_seed": s, "mapping": "frequency", "K": 1024, "oracle_ratio": 1.25,
               "oracle_unigram_ratio": 1.25} for s in (0, 1)]
    variant = {"name": "vq-K1024", "head": "vq:K=1024", "mapping": "frequency", "ratio_mean": measured[0],
               "seed_ratios": dict(enumerate(measured))}
    [row] = gap_split(oracle, [variant])
    assert row[-1].startswith(share) and (share or row[-1] == "")



@pytest.mark.parametrize("device, said", [("tpu", "device: expected cpu or cuda[:N], got 'tpu'"),
                                          ("cuda:7", "device: 'cuda:7' asked for, but this torch sees no CUDA")])
def test_a_device_the_oracle_cannot_use_is_refused_with_one_line(tmp_path, capsys, device, said):
    import torch
    from vqbench.oracle import main
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["--model", str(tmp_path / "best.pt"), "--device", device, "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1 and not (tmp_path / "o.csv").exists()


def seed0_quality_csv(path, rows):
    """quality.csv of seed-0 runs (run, name, group, schedule, test ppl): a VQ name is vq:K=1024, frequency."""
    import csv

    from vqbench import quality
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=quality.CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for run, name, group, schedule, test in rows:
            vq = name.startswith("vq")
            writer.writerow({"run": run, "name": name, "head": "vq:K=1024" if vq else "softmax",
                             "mapping": "frequency" if vq else "", "schedule": schedule, "protocol": "joint",
                             "seed": 0, "group": group, "epochs": 3, "best_epoch": 3, "stop": "epochs",
                             "valid_ppl": test, "test_ppl": test, "last_epoch_gain": 0.01, "output_params": 1000,
                             "tokens_per_s": 1.0})


def test_an_estimate_from_a_body_trained_longer_pairs_only_with_the_heads_on_that_body(tmp_path):
    """softmax-6ep (group reference-long) has seed 0 as the reference has: its oracle file of its own pairs
    with the frozen heads on its body (VARIANT-on-BODY) and with no jointly trained run (those trained for the
    plan's budget), and the reference's oracle file never takes the heads on the longer body."""
    import csv

    from vqbench import quality
    from vqbench.oracle import write_markdown
    from vqbench.report import build_report

    results = tmp_path / "quality"
    results.mkdir()
    oracle_csv(results / "oracle.csv", [(0, "frequency", 1024, 1.25, 1.3)])  # from ck/joint-softmax-s0/best.pt
    oracle_csv(results / "oracle-6ep.csv", [(0, "frequency", 1024, 1.3, 1.3)], run="joint-softmax-6ep", softmax=90.0)
    seed0_quality_csv(results / "quality.csv", [("joint-softmax-s0", "softmax", "reference", "", 100.0),
                                                ("joint-vq-K1024-s0", "vq-K1024", "paper", "", 150.0),
                                                ("joint-softmax-6ep-s0", "softmax-6ep", "reference-long", "", 90.0)])
    with open(results / "premise.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=quality.PREMISE_COLUMNS)
        writer.writeheader()
        for name, body_run, test, reference in (("vq-K1024", "joint-softmax-s0", 140.0, 100.0),
                                                ("vq-K1024-on-softmax-6ep", "joint-softmax-6ep-s0", 115.0, 90.0)):
            writer.writerow({"track": "", "body": "lstm", "vocabulary": "word-33278", "name": name,
                             "head": "vq:K=1024", "mapping": "frequency", "K": 1024, "seed": 0,
                             "run": f"frozen-{name}-s0", "body_run": body_run, "epochs": 3, "best_epoch": 3,
                             "stop": "epochs", "valid_ppl": test, "test_ppl": test, "reference_test_ppl": reference,
                             "tokens_per_s": 1.0, "cpu_model": "test CPU", "git_commit": "abc"})
    longer = open(write_markdown(str(results / "oracle-6ep.csv"))).read()
    premise = [line for line in longer.split("## The premise")[1].splitlines() if line.startswith("| vq-K1024")]
    assert len(premise) == 1 and premise[0].startswith("| vq-K1024-on-softmax-6ep ")
    cells = [c.strip() for c in premise[0].split("|")[1:-1]]
    assert cells[4:9] == ["115.0", "117.0", "%.3f (single seed)" % (115 / 90), "%.3f (single seed)" % (117 / 90),
                          "%.3f (single seed)" % (115 / 117)] and cells[9] == ""
    assert "| vq-K1024 " not in longer.split("## The premise")[0]  # no joint run of the plan's budget pairs
    assert "No jointly trained VQ run is set against this estimate: its softmax model (joint-softmax-6ep-s0)" in longer
    own = open(write_markdown(str(results / "oracle.csv"))).read()
    premise = [line for line in own.split("## The premise")[1].splitlines() if line.startswith("| vq-K1024")]
    assert len(premise) == 1 and premise[0].startswith("| vq-K1024 ") and "| 140.0 " in premise[0]
    sections = build_report(str(tmp_path)).split("### The oracle estimate: ")[1:]
    assert [s.split("\n")[0] for s in sections] == [
        "2-layer LSTM, word-level WikiText-2 V=33,278 (from joint-softmax-s0)",
        "2-layer LSTM, word-level WikiText-2 V=33,278 (from joint-softmax-6ep-s0, trained longer than the plan's runs)"]
    assert "codebook factor" in sections[0] and "codebook factor" not in sections[1]


def test_an_estimate_from_a_body_of_another_schedule_pairs_with_that_schedules_runs(tmp_path):
    """Oracle rows carry no schedule: they take their softmax model's (its quality.csv row), so an estimate from
    a body trained to the plateau sits in that setting and splits the gaps of that schedule's VQ runs only."""
    from vqbench.oracle import write_markdown

    results = tmp_path / "quality"
    results.mkdir()
    oracle_csv(results / "oracle-plateau.csv", [(0, "frequency", 1024, 1.1, 1.1)], run="joint-plateau-softmax",
               softmax=80.0)
    plateau = "to the validation plateau"
    seed0_quality_csv(results / "quality.csv", [("joint-softmax-s0", "softmax", "reference", "", 100.0),
                                                ("joint-vq-K1024-s0", "vq-K1024", "paper", "", 150.0),
                                                ("joint-plateau-softmax-s0", "softmax", "reference", plateau, 80.0),
                                                ("joint-plateau-vq-K1024-s0", "vq-K1024", "paper", plateau, 96.0)])
    text = open(write_markdown(str(results / "oracle-plateau.csv"))).read()
    assert "Setting: 2-layer LSTM, word-level WikiText-2 V=33,278, to the validation plateau." in text
    assert "1.200" in text and "1.500" not in text  # measured 96/80, never 150/100


def test_frozen_body_runs_whose_body_has_no_estimate_are_reported_against_their_own_softmax(tmp_path):
    """REPORT lists the premise runs whose body no oracle file scored (checkpoints left behind on a lent GPU),
    each against its body's softmax, paired by seed; a run whose body has its estimate stays in its oracle
    section only."""
    import csv

    from vqbench import quality
    from vqbench.report import premise_without_estimate

    results = tmp_path / "quality"
    results.mkdir()
    assert premise_without_estimate(str(results)) == []  # no premise.csv
    with open(results / "premise.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=quality.PREMISE_COLUMNS)
        writer.writeheader()
        for seed, body, test, reference in ((0, "joint-softmax", 110.0, 100.0), (1, "joint-softmax", 126.0, 105.0),
                                            (0, "joint-gpt-softmax", 80.0, 75.0)):
            writer.writerow({"track": "", "body": "lstm", "vocabulary": "word-33278", "name": "vq-K1024",
                             "head": "vq:K=1024", "mapping": "frequency", "K": 1024, "seed": seed,
                             "run": f"frozen-vq-K1024-s{seed}", "body_run": f"{body}-s{seed}", "epochs": 3,
                             "best_epoch": 3, "stop": "epochs", "valid_ppl": test, "test_ppl": test,
                             "reference_test_ppl": reference, "tokens_per_s": 1.0, "cpu_model": "test CPU",
                             "git_commit": "abc"})
    oracle_csv(results / "oracle.csv", [(0, "frequency", 1024, 1.25, 1.3)], run="joint-gpt-softmax")
    lines = "\n".join(premise_without_estimate(str(results))).splitlines()
    row = next(line for line in lines if line.startswith("| 2-layer LSTM"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    ratios = [110 / 100, 126 / 105]
    assert cells[3] == "0, 1" and cells[6].startswith("%.3f ± %.3f (95%% CI " % mean_std(ratios))
    assert len([line for line in lines if line.startswith("| 2-layer LSTM")]) == 1  # body s0 of joint-gpt: scored
