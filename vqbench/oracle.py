"""python -m vqbench.oracle: an estimate of the perplexity a VQ-Logits head with a given mapping reaches.

    python -m vqbench.oracle --model CKPT/joint-softmax-s0/best.pt [--learned CKPT/joint-vq-K1024-learned-s0/best.pt]

A VQ head with map M gives token y the probability P(code(y) | context) x (share of y inside its code):
1/n_code(y) without a bias, or at best the unigram share u_y / U_code(y) with a per-token bias that does
not depend on the context. If it reproduced a trained softmax model's code probabilities exactly,
P(code | context) = sum of p_softmax(i | context) over the code's tokens, its test perplexity would be

    uniform: exp(mean over test targets of [-log P(code(y)) + log n_code(y)])
    unigram: exp(mean over test targets of [-log P(code(y)) - log(u_y / U_code(y))])

This is an estimate, not a bound: it is the perplexity of one predictor (code probabilities taken from
the trained softmax), and a VQ model trained for the code task may predict codes better than the
softmax's sums do. What is exact: a VQ head's perplexity is its code perplexity times a fixed
within-code factor (n_code, or the unigram shares), so against the softmax model's own perplexity the
oracle's ratio estimates what the mapping costs and the rest of a measured VQ ratio is the codebook's
(a K x d matrix standing in for a sum of V softmax rows). Mappings: random,
contiguous, frequency, k-means over the softmax's output vectors, a learned map read from a trained
VQ run, at each K, and with ``--search K`` a map searched for each model (vqbench/training/map_search.py: local
search for this very objective on half the validation split, stopped by the other half, scored on
test), the best fixed map found. A code that holds one token gives it an exact row of its own, so "exact rows" (and the
share of test targets they cover) says how far a map already is the "exact rows for the frequent tokens,
VQ for the tail" design. Writes oracle.csv (refused if it exists: one measurement per file) and renders
oracle.md beside it, with the measured VQ runs of quality.csv next to their estimate; ``--add`` appends the
rows (softmax seed, mapping, K) not scored there yet, leaving the rows there as they are.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import statistics
import sys
from typing import Dict, List, Tuple

import torch
from tabulate import tabulate

from vqbench.train import body_label, body_of, load_checkpoint, model_states
from vqbench.training.data import VOCABULARIES, corpus_fingerprint, load_corpus
from vqbench.training.evaluate import hidden_states
from vqbench.training.map_search import search_mapping
from vqbench.heads.mapping import build_mapping
from vqbench.measuring.provenance import cpu_model, git_commit, relative_path
from vqbench.heads.registry import make_head

MAPPINGS = ("random", "contiguous", "frequency", "kmeans")
COLUMNS = ["model", "model_seed", "body", "vocabulary", "mapping", "K", "softmax_ppl", "oracle_ppl", "oracle_ratio",
           "oracle_unigram_ppl", "oracle_unigram_ratio", "within_code_ppl_factor", "exact_rows", "exact_share", "test_tokens", "note", "cpu_model", "git_commit"]


def code_nats(log_probs: torch.Tensor, targets: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor,
              num_codes: int, probs: torch.Tensor = None) -> Tuple[float, float, float]:
    """Summed nats over a chunk: (softmax, oracle with 1/n inside codes, oracle with unigram shares).

    log_probs [N, V] of the softmax model, targets [N], codes [V] int64 in [0, K), counts [V] unigram
    counts (> 0 where a share is taken); probs [N, V] float64, log_probs exponentiated (computed here when
    not given: a caller scoring several mappings on one chunk passes it once).
    """
    p = log_probs.double().exp() if probs is None else probs
    mass = torch.zeros(p.shape[0], num_codes, dtype=torch.float64, device=p.device).index_add_(1, codes, p)  # [N, K]
    target_codes = codes[targets]
    log_code = mass.gather(1, target_codes[:, None]).squeeze(1).log()
    sizes = torch.bincount(codes, minlength=num_codes).double()
    code_counts = torch.zeros(num_codes, dtype=torch.float64, device=p.device).index_add_(0, codes, counts.double())
    softmax = -log_probs.gather(1, targets[:, None]).double().sum()
    uniform = (-log_code + sizes[target_codes].log()).sum()
    unigram = (-log_code - (counts.double()[targets] / code_counts[target_codes]).log()).sum()
    return float(softmax), float(uniform), float(unigram)


def oracle_table(log_prob_chunks, mappings: Dict[Tuple[str, int], torch.Tensor], counts: torch.Tensor) -> List[dict]:
    """Rows for every (mapping name, K) -> codes, over an iterable of (log_probs [n, V], targets [n]) chunks."""
    sums = {key: [0.0, 0.0, 0.0] for key in mappings}
    within = {key: 0.0 for key in mappings}
    exact = {key: 0 for key in mappings}  # test targets whose code holds them alone
    tokens = 0
    for log_probs, targets in log_prob_chunks:
        tokens += targets.numel()
        probs = log_probs.double().exp()
        for (name, k), codes in mappings.items():
            part = code_nats(log_probs, targets, codes, counts, k, probs)
            sums[(name, k)] = [a + b for a, b in zip(sums[(name, k)], part)]
            sizes = torch.bincount(codes, minlength=k)[codes[targets]]
            within[(name, k)] += float(sizes.double().log().sum())
            exact[(name, k)] += int((sizes == 1).sum())
    rows = []
    for (name, k), (softmax, uniform, unigram) in sums.items():
        ppl = math.exp(softmax / tokens)
        rows.append({"mapping": name, "K": k, "softmax_ppl": ppl, "oracle_ppl": math.exp(uniform / tokens),
                     "oracle_ratio": math.exp((uniform - softmax) / tokens),
                     "oracle_unigram_ppl": math.exp(unigram / tokens),
                     "oracle_unigram_ratio": math.exp((unigram - softmax) / tokens),
                     "within_code_ppl_factor": math.exp(within[(name, k)] / tokens),
                     "exact_rows": int((torch.bincount(mappings[(name, k)], minlength=k) == 1).sum()),
                     "exact_share": exact[(name, k)] / tokens, "test_tokens": tokens})
    return rows


def load_softmax_model(path: str, corpus):
    """(body, head, config) of a joint softmax run's checkpoint (best.pt or checkpoint.pt of vqbench.train)."""
    saved = load_checkpoint(path, "model")
    cfg = saved["config"]
    if not cfg["head"].startswith("softmax"):
        raise ValueError(f"model: {path!r} is a {cfg['head']!r} run; the oracle needs a softmax model")
    if saved["corpus"] != corpus_fingerprint(corpus):
        raise ValueError(f"model: {path!r} was trained on another corpus")
    body_state, head_state = model_states(saved, path, "model")
    body = body_of(cfg, corpus.vocab_size)  # the LSTM or the GPT the run trained
    body.load_state_dict(body_state)
    head = make_head(cfg["head"], corpus.vocab_size, cfg["d_model"], token_counts=corpus.counts)
    head.load_state_dict(head_state)
    return body.eval(), head.eval(), cfg


def learned_mapping(path: str, corpus) -> Tuple[int, torch.Tensor]:
    """(K, codes [V]) of a trained VQ run's checkpoint."""
    saved = load_checkpoint(path, "learned")
    head = model_states(saved, path, "learned")[1]
    if saved["corpus"] != corpus_fingerprint(corpus) or "mapping" not in head:
        raise ValueError(f"learned: {path!r} is not a VQ run on this corpus")
    return int(head["codebook"].shape[0]), head["mapping"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", required=True, help="best.pt of one or more trained softmax runs")
    p.add_argument("--learned", nargs="*", default=[], help="best.pt of VQ runs whose learned mapping to score")
    p.add_argument("--K", type=int, nargs="+", default=[256, 1024, 1536, 4096],
                   help="codebook sizes (1536: the largest with >= 95%% fewer output parameters than softmax at d=200)")
    p.add_argument("--search", type=int, nargs="*", default=[], metavar="K",
                   help="also search a fixed map per model at these K (vqbench/training/map_search.py: local search on "
                        "validation from the frequency map, scored on test like the others; ~1-2 min per sweep)")
    p.add_argument("--sweeps", type=int, default=30, help="most sweeps of each search (default 30)")
    p.add_argument("--data", help="corpus folder (default: vqbench.training.data.default_corpus_dir())")
    p.add_argument("--vocabulary", default="word", choices=VOCABULARIES,
                   help="the tokenizer the softmax models were trained with (default word)")
    p.add_argument("--out", default=os.path.join("results", "quality", "oracle.csv"),
                   help="CSV to write (refused if it exists, unless --add); oracle.md is rendered beside it")
    p.add_argument("--add", action="store_true",
                   help="append to --out the rows (model seed, mapping, K) not scored there yet, never changing "
                        "the rows there: score each softmax seed as it finishes, or add a search later")
    p.add_argument("--chunk", type=int, default=1024, help="test positions per chunk (default 1024)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--device", default="cpu", help="where the test split is scored: cpu (default) or cuda[:N]")
    args = p.parse_args(argv)
    for flag, values in (("--K", args.K), ("--search", args.search), ("--chunk", [args.chunk]),
                         ("--sweeps", [args.sweeps])):
        if any(value < 1 for value in values):
            p.error(f"{flag}: must be >= 1")
    try:
        rows = run(args)
    except ValueError as error:
        print(f"python -m vqbench.oracle: error: {error}", file=sys.stderr)
        return 2
    print(write(rows, args.out, add=args.add))
    return 0


def run(args) -> List[dict]:
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        raise ValueError(f"device: expected cpu or cuda[:N], got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {args.device!r} asked for, but this torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    scored = scored_rows(args.out, args.add)
    corpus = load_corpus(args.data, vocabulary=args.vocabulary)
    if any(k > corpus.vocab_size for k in args.K + args.search):
        raise ValueError(f"K, search: must be <= the vocabulary size {corpus.vocab_size}")
    learned = [learned_mapping(path, corpus) for path in args.learned]
    if len({k for k, _ in learned}) < len(learned):
        raise ValueError("learned: two learned maps with the same K; score one per K per call")
    asked = ([(name, k) for k in args.K for name in MAPPINGS] + [("learned", k) for k, _ in learned]
             + [("searched", k) for k in args.search])
    todo = {}  # model -> the (mapping, K) it still needs: checked for every model before hours of scoring
    for model in args.model:
        seed = load_softmax_model(model, corpus)[2]["seed"]
        there = scored.get(seed)
        if there and there[0] != relative_path(model):  # stored as relative_path records it
            raise ValueError(f"model: {model!r} has seed {seed}, scored in {args.out!r} from {there[0]!r} "
                             f"(ratios pair by seed; nothing was changed)")
        todo[model] = [key for key in asked if not there or key not in there[1]]
        if not todo[model]:
            raise ValueError(f"model: {model!r} has every asked mapping and K scored in {args.out!r} already "
                             f"(nothing was changed)")
        scored[seed] = (model, set(asked) | (there[1] if there else set()))
    rows = []
    for model in args.model:
        body, head, cfg = load_softmax_model(model, corpus)
        mappings, notes = model_mappings(model, body, head, cfg, corpus, todo[model], learned, args)
        # the test split is scored where --device says (a GPU turns minutes of V-wide sums into seconds); the
        # mappings and the search above are built on the CPU, as before
        body, head = body.to(args.device), head.to(args.device)
        mappings = {key: codes.to(args.device) for key, codes in mappings.items()}
        test = hidden_states(body, corpus.ids["test"], cfg["bptt"])
        for row in oracle_table(chunks_of(head, *test, args.chunk), mappings, corpus.counts.to(args.device)):
            rows.append({"model": relative_path(model), "model_seed": cfg["seed"], "body": body_label(cfg),
                         "vocabulary": corpus.label, **row,
                         "note": notes.get((row["mapping"], row["K"]), ""), "cpu_model": cpu_model(),
                         "git_commit": git_commit()})
    return rows


def model_mappings(model, body, head, cfg, corpus, todo, learned, args) -> Tuple[dict, dict]:
    """({(mapping, K): codes [V]}, {(mapping, K): note}) to score for one softmax model: the fixed mappings, the
    learned ones and the searched ones (searched on its validation split) that ``todo`` still asks for."""
    mappings = {}
    for name, k in todo:
        if name in MAPPINGS:
            mappings[(name, k)] = build_mapping(name, corpus.vocab_size, k, corpus.counts.double(), seed=0,
                                                embeddings=head.weight.detach())[0]
    for k, codes in learned:
        if ("learned", k) in todo:
            mappings[("learned", k)] = codes
    notes = {}
    search = [k for name, k in todo if name == "searched"]
    if search:
        valid = hidden_states(body, corpus.ids["validation"], cfg["bptt"])
        for k in search:
            start = build_mapping("frequency", corpus.vocab_size, k, corpus.counts.double())[0]
            found, history = search_mapping(
                lambda: chunks_of(head, *valid, args.chunk, part=0), start, k, sweeps=args.sweeps,
                check=lambda: chunks_of(head, *valid, args.chunk, part=1),
                log=lambda line: print(f"{model} searched K={k}: {line}", file=sys.stderr, flush=True))
            mappings[("searched", k)] = found
            kept = min(history, key=lambda h: h["held_out_nats_per_position"])
            notes[("searched", k)] = (
                f"searched from the frequency map on the even validation chunks of {args.chunk} positions "
                f"({history[0]['nats_per_position']:.4f} -> {history[-1]['nats_per_position']:.4f} nats per "
                f"position in {history[-1]['sweep']} sweeps), kept at sweep {kept['sweep']}, the best on the "
                f"odd chunks ({history[0]['held_out_nats_per_position']:.4f} -> "
                f"{kept['held_out_nats_per_position']:.4f}); {int((found != start).sum())} tokens moved")
    return mappings, notes


def chunks_of(head, hidden: torch.Tensor, targets: torch.Tensor, chunk: int, part: int = None):
    """(log_probs [n, V], targets [n]) of the softmax head over hidden [T, d], ``chunk`` positions at a time;
    part 0 or 1: only the even or the odd chunks (two halves spread evenly over the text)."""
    with torch.no_grad():
        for index, i in enumerate(range(0, targets.numel(), chunk)):
            if part is None or index % 2 == part:
                yield head.log_probs(hidden[i:i + chunk]), targets[i:i + chunk]


def scored_rows(out: str, add: bool) -> Dict[int, Tuple[str, set]]:
    """{model seed: (model path, {(mapping, K)})} already in oracle.csv at out ({} when there is none). An
    existing file is a measurement: refused unless add, and refused if its columns are not this version's."""
    if not os.path.exists(out):
        return {}
    if not add:
        raise ValueError(f"out: {out!r} exists; move it aside, choose another --out, or --add rows not scored "
                         f"there yet (nothing was changed)")
    with open(out, newline="") as f:
        header = next(csv.reader(f), [])
    if header != COLUMNS:
        raise ValueError(f"out: {out!r} has other columns than this version writes; --add to a new file instead")
    scored: Dict[int, Tuple[str, set]] = {}
    for r in read_rows(out):
        scored.setdefault(r["model_seed"], (r["model"], set()))[1].add((r["mapping"], r["K"]))
    return scored


def write(rows: List[dict], out: str, add: bool = False) -> str:
    """oracle.csv at out (refused if it exists: it is a measurement; with add, the rows are appended to it),
    then oracle.md beside it."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fresh = not (add and os.path.exists(out))
    with open(out, "x" if fresh else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if fresh:
            writer.writeheader()
        writer.writerows(rows)
    return write_markdown(out)


def oracle_files(results_dir: str) -> List[str]:
    """The oracle files under results_dir (oracle.csv, oracle-<track>.csv: one per track's softmax models)."""
    found = glob.glob(os.path.join(glob.escape(results_dir), "oracle*.csv"))
    return sorted(found, key=lambda path: (os.path.basename(path) != "oracle.csv", path))  # the first track first


def read_rows(path: str) -> List[dict]:
    """oracle.csv rows with their numbers as numbers (a file written before the body and vocabulary columns
    scored the LSTM track's models)."""
    from vqbench.reporting.quality_stats import LSTM_TRACK
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["body"], r["vocabulary"] = r.get("body") or LSTM_TRACK[0], r.get("vocabulary") or LSTM_TRACK[1]
        for key in ("model_seed", "K", "exact_rows", "test_tokens"):
            r[key] = int(r[key])
        for key in ("softmax_ppl", "oracle_ppl", "oracle_ratio", "oracle_unigram_ppl", "oracle_unigram_ratio",
                    "within_code_ppl_factor", "exact_share"):
            r[key] = float(r[key])
    return rows


def _mean_std(values: List[float], digits: int) -> str:
    from vqbench.reporting.quality_stats import _pm, mean_std
    return _pm(*mean_std(values), digits)


def estimate_rows(rows: List[dict]) -> List[list]:
    """Table rows per (mapping, K), in first-seen order: the estimate's mean +- std over the softmax models."""
    keys = list(dict.fromkeys((r["mapping"], r["K"]) for r in rows))
    body = []
    for mapping, k in keys:
        group = [r for r in rows if (r["mapping"], r["K"]) == (mapping, k)]
        column = lambda key: [r[key] for r in group]  # noqa: E731
        body.append([mapping, k, len(group), _mean_std(column("oracle_ppl"), 1), _mean_std(column("oracle_ratio"), 3),
                     _mean_std(column("oracle_unigram_ratio"), 3), _mean_std(column("within_code_ppl_factor"), 2),
                     _mean_std([float(x) for x in column("exact_rows")], 0),
                     _mean_std([100 * x for x in column("exact_share")], 1)])
    return body


def paired_gaps(oracle_rows: List[dict], variants: List[dict]) -> List[dict]:
    """Per measured VQ variant (quality.aggregate rows with a mapping) with an estimate for its mapping and K:
    name, mapping, K, biased (a per-token bias: the unigram-share estimate applies), seeds (those with both a VQ
    run and an oracle row), measured (VQ test ppl / softmax test ppl of seed s) and estimate (the oracle ratio
    from the softmax model of seed s, the model its own ratio divides by), both lists in seed order."""
    from vqbench.heads.registry import coerce_option, head_class, parse_spec
    paired = []
    for v in variants:
        if not v.get("mapping") or math.isnan(v["ratio_mean"]):
            continue
        options = parse_spec(v["head"])[1]
        K = coerce_option(head_class("vq"), "K", options["K"])
        biased = coerce_option(head_class("vq"), "bias", options.get("bias", "0"))
        column = "oracle_unigram_ratio" if biased else "oracle_ratio"
        oracle = {r["model_seed"]: r[column] for r in oracle_rows if (r["mapping"], r["K"]) == (v["mapping"], K)}
        seeds = sorted(set(v["seed_ratios"]) & set(oracle))
        if seeds:
            paired.append({"name": v["name"], "head": v["head"], "mapping": v["mapping"], "K": K,
                           "biased": bool(biased), "seeds": seeds, "measured": [v["seed_ratios"][s] for s in seeds],
                           "estimate": [oracle[s] for s in seeds]})
    return paired


def gap_split(oracle_rows: List[dict], variants: List[dict]) -> List[list]:
    """Table rows of ``paired_gaps``: the measured ratio to softmax, the oracle ratio of the variant's
    mapping and K (the mapping's factor) and measured / oracle (the codebook's factor), each as mean ± std
    over the paired seeds, and the mapping's share of the gap on a log scale."""
    body = []
    for g in paired_gaps(oracle_rows, variants):
        measured_mean, estimate_mean = statistics.fmean(g["measured"]), statistics.fmean(g["estimate"])
        share = ""
        if measured_mean > 1 and estimate_mean >= 1:  # a share of the gap is a part of it, never over 100%
            share = (f"{100 * math.log(estimate_mean) / math.log(measured_mean):.0f}%" if estimate_mean <= measured_mean
                     else "n/a: the estimate lies above the measured ratio")
        body.append([g["name"], g["mapping"], g["K"], "unigram share (per-token bias)" if g["biased"] else "1/n",
                     ", ".join(map(str, g["seeds"])), _mean_std(g["measured"], 3), _mean_std(g["estimate"], 3),
                     _mean_std([m / b for m, b in zip(g["measured"], g["estimate"])], 3), share])
    return body


def gap_markdown(rows: List[dict], variants: List[dict], longer: List[str] = ()) -> str:
    """The table of each measured VQ variant against the estimate for its mapping and K (``gap_split``), or a
    sentence saying why there is none: none has finished yet, or the softmax models (the run folders in longer)
    trained longer than any jointly trained run, whose estimate therefore pairs with frozen-body heads only."""
    if longer:
        return (f"No jointly trained VQ run is set against this estimate: its softmax model ({', '.join(longer)}) "
                "trained longer than the plan's runs, so only VQ heads trained on that frozen body pair with it "
                "(below).")
    split = gap_split(rows, variants)
    if not split:
        return "No finished VQ run in quality.csv has a mapping and K scored here yet."
    return tabulate(split, headers=[
        "VQ variant", "mapping", "K", "inside a code", "seeds (paired)", "measured test ppl / softmax",
        "oracle / softmax (the mapping's factor)", "measured / oracle (the codebook's factor)",
        "mapping's share of the gap (log scale)"], tablefmt="github", disable_numparse=True)


def grouped(rows: List[dict], max_K: int = None) -> Dict[Tuple[str, int], List[dict]]:
    """oracle.csv rows by (mapping, K), one row per softmax model in each; only K <= max_K when given."""
    groups: Dict[Tuple[str, int], List[dict]] = {}
    for r in rows:
        if max_K is None or r["K"] <= max_K:
            groups.setdefault((r["mapping"], r["K"]), []).append(r)
    return groups


def estimate_summary(rows: List[dict], max_K: int) -> str:
    """One sentence from oracle.csv: the estimate for the paper's form (frequency map, K=1024) and the lowest
    estimate of any mapping at K <= max_K (the codebooks with >= 95% fewer output parameters), each as the mean
    oracle / softmax ratio over the softmax models scored, 1/n inside a code and with unigram shares."""
    def mean_of(group, key):
        return statistics.fmean(r[key] for r in group)

    def models(group):
        return f"{len(group)} softmax model" + ("s" if len(group) > 1 else "")

    groups = grouped(rows)
    said = []
    paper = groups.get(("frequency", 1024))
    if paper:
        said.append(f"the paper's form (frequency map, K=1024) estimated x{mean_of(paper, 'oracle_ratio'):.3f} "
                    f"({models(paper)})")
    small = grouped(rows, max_K)
    if small:
        for column, inside in (("oracle_ratio", "1/n inside a code"), ("oracle_unigram_ratio", "unigram shares")):
            (mapping, k), group = min(small.items(), key=lambda item: mean_of(item[1], column))
            said.append(f"the lowest estimate at K <= {max_K} with {inside}: x{mean_of(group, column):.3f} "
                        f"({mapping} map, K={k}, {models(group)})")
    return "; ".join(said)


def target_verdict(rows: List[dict], variants: List[dict], max_K: int, target: float = 1.04) -> str:
    """Sentences from oracle.csv and the measured VQ variants on the paper's target (test ppl <= target x
    softmax at K <= max_K): whether the lowest estimate of any mapping scored there, 1/n or unigram shares
    inside a code, leaves room for it, and whether the measured runs lie above their estimates (their
    codebook factor, measured / oracle, per variant over its paired seeds)."""
    groups = grouped(rows, max_K)
    if not groups:
        return ""
    lowest, where = min((statistics.fmean(r[column] for r in group), (mapping, k, inside))
                        for (mapping, k), group in groups.items()
                        for column, inside in (("oracle_ratio", "1/n"), ("oracle_unigram_ratio", "unigram shares")))
    mapping, k, inside = where
    goal = f"The paper's +{100 * (target - 1):.0f}% (x{target:.3f})"
    if lowest > target:
        said = [f"{goal} lies below every estimate at K <= {max_K}: the lowest, x{lowest:.3f} ({mapping} map, "
                f"K={k}, {inside} inside a code), is {100 * (lowest / target - 1):.0f}% above it. So a VQ head "
                f"with one of these mappings and >= 95% fewer output parameters reaches it at this vocabulary "
                f"only if its code probabilities beat the trained softmax model's own summed ones (an estimate, "
                f"not a bound: a model trained for the code task may predict codes better; the premise test "
                f"below measures whether heads trained on the frozen bodies do)."]
    else:
        said = [f"{goal} is not ruled out at K <= {max_K}: the {mapping} map at K={k} ({inside} inside a "
                f"code) has an estimate of x{lowest:.3f}."]
    factors = [statistics.fmean(m / b for m, b in zip(g["measured"], g["estimate"]))
               for g in paired_gaps(rows, variants)]
    if len(factors) == 1:
        side = "above" if factors[0] >= 1 else "below"
        said.append(f"The one measured VQ variant lies {side} its estimate: codebook factor x{factors[0]:.3f}.")
    elif factors:
        below = sum(f < 1 for f in factors)
        where = "every one lies above its estimate" if not below else f"{below} lie below their estimate"
        said.append(f"Of the {len(factors)} measured VQ variants (any K), {where}: codebook factor "
                    f"x{min(factors):.3f} to x{max(factors):.3f}.")
    return " ".join(said)


def read_premise(path: str) -> List[dict]:
    """premise.csv rows (vqbench.quality: VQ heads trained on a softmax run's frozen body), numbers as numbers."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"], r["K"] = int(r["seed"]), int(r["K"])
        for key in ("valid_ppl", "test_ppl", "reference_test_ppl"):
            r[key] = float(r[key])
    return rows


def model_run(model: str) -> str:
    """The run folder name of a softmax model's checkpoint path (DIR/joint-gpt-softmax-s0/best.pt ->
    joint-gpt-softmax-s0): a frozen-body run's body_run names the same."""
    return os.path.basename(os.path.dirname(os.path.normpath(model)))


def premise_pairs(oracle_rows: List[dict], premise: List[dict], variants: List[dict]) -> List[dict]:
    """Per frozen-body VQ variant (premise.csv rows of the oracle rows' setting): the seeds whose softmax model
    has both a frozen-body run and an oracle row for its mapping and K from that same model (by run folder); measured and estimated test ppl in
    seed order, with that softmax model's own test ppl; and the same variant trained jointly with its body, as
    measured / estimate per paired seed: the quality variant of the frozen run's name, else the one variant with
    its head and mapping (a premise plan names its frozen heads VARIANT-on-BODY after their own plan's body)."""
    from vqbench.heads.registry import coerce_option, head_class, parse_spec
    from vqbench.reporting.quality_stats import setting
    settings = {setting(r) for r in oracle_rows}
    gaps = paired_gaps(oracle_rows, variants)
    joint = {g["name"]: g for g in gaps}
    out = []
    for name, head in dict.fromkeys((r["name"], r["head"]) for r in premise if setting(r) in settings):
        runs = {r["seed"]: r for r in premise if (r["name"], r["head"]) == (name, head) and setting(r) in settings}
        first = next(iter(runs.values()))
        biased = coerce_option(head_class("vq"), "bias", parse_spec(head)[1].get("bias", "0"))
        column = "oracle_unigram_ppl" if biased else "oracle_ppl"
        # the estimate from the very body the head was trained on: the oracle row's model is that run's best.pt
        estimate = {r["model_seed"]: r[column] for r in oracle_rows
                    if (r["mapping"], r["K"]) == (first["mapping"], first["K"]) and r["model_seed"] in runs
                    and model_run(r["model"]) == runs[r["model_seed"]]["body_run"]}
        seeds = sorted(set(runs) & set(estimate))
        if seeds:
            alike = [g for g in gaps if (g["head"], g["mapping"]) == (head, first["mapping"])]
            g = joint.get(name) or (alike[0] if len(alike) == 1 else None)
            out.append({"name": name, "mapping": first["mapping"], "K": first["K"], "biased": bool(biased),
                        "seeds": seeds, "measured": [runs[s]["test_ppl"] for s in seeds],
                        "estimate": [estimate[s] for s in seeds],
                        "softmax": [runs[s]["reference_test_ppl"] for s in seeds],
                        "joint": [m / e for m, e in zip(g["measured"], g["estimate"])] if g else []})
    return out


def _factor_cell(values: List[float]) -> str:
    from vqbench.reporting.quality_stats import mean_std, t_interval
    if not values:
        return ""
    mean, std = mean_std(values)
    if len(values) < 2:
        return f"{mean:.3f} (single seed)"
    low, high = t_interval(values)
    return f"{mean:.3f} ± {std:.3f} (95% CI {low:.3f}-{high:.3f})"


def premise_markdown(oracle_rows: List[dict], premise: List[dict], variants: List[dict]) -> str:
    """The table of frozen-body VQ runs against the estimate from the same softmax model, and what it says of
    the premise (that a head trained for the code task predicts codes no better than the softmax's sums), or a
    sentence saying that no such run has finished yet."""
    from vqbench.reporting.quality_stats import setting
    pairs = premise_pairs(oracle_rows, premise, variants)
    if not pairs:
        settings = {setting(r) for r in oracle_rows}
        others = sorted({r["body_run"] for r in premise if setting(r) in settings}
                        - {model_run(r["model"]) for r in oracle_rows})
        if others:  # this setting's premise is tested elsewhere: nothing here is waiting for a run
            return ("No VQ head trained on a frozen softmax body is set against these softmax models. The "
                    f"frozen-body heads of this setting were trained on other softmax models' bodies "
                    f"({', '.join(others)}): they pair with the estimate from those bodies, in the oracle file "
                    "that scores them.")
        return ("No VQ head trained on a frozen softmax body has finished for these softmax models yet "
                "(`python -m vqbench.quality run --only premise`, once the softmax runs' best.pt are there).")
    table = tabulate([[p["name"], p["mapping"], p["K"], ", ".join(map(str, p["seeds"])),
                       _mean_std(p["measured"], 1), _mean_std(p["estimate"], 1),
                       _factor_cell([m / s for m, s in zip(p["measured"], p["softmax"])]),
                       _factor_cell([e / s for e, s in zip(p["estimate"], p["softmax"])]),
                       _factor_cell([m / e for m, e in zip(p["measured"], p["estimate"])]), _factor_cell(p["joint"])]
                      for p in pairs],
                     headers=["VQ head", "mapping", "K", "softmax seeds (bodies)", "frozen-body VQ test ppl",
                              "estimate ppl", "frozen-body VQ / its softmax", "estimate / its softmax",
                              "measured / estimate (frozen body)",
                              "measured / estimate (trained jointly)"], tablefmt="github", disable_numparse=True)
    from vqbench.reporting.quality_stats import t_interval
    said = []
    for p in pairs:
        factors = [m / e for m, e in zip(p["measured"], p["estimate"])]
        factor, (low, high) = statistics.fmean(factors), t_interval(factors)
        below = ("below the estimate: a head trained for the code task predicts codes better than the softmax's "
                 "summed probabilities, so the estimate overstates what the mapping costs")
        above = ("above the estimate: the trained head predicts codes no better than the softmax's summed "
                 "probabilities, as the estimate assumes")
        if len(factors) < 2:
            side, spread = (below if factor < 1 else above), "a single seed: no interval"
        elif high < 1 or low > 1:
            side, spread = (below if high < 1 else above), f"95% CI {low:.3f}-{high:.3f}, {len(factors)} seeds"
        else:
            side = "neither above nor below the estimate that its seeds can tell"
            spread = f"95% CI {low:.3f}-{high:.3f} holds 1, {len(factors)} seeds"
        said.append(f"{p['name']} on the frozen bodies lies {side} (x{factor:.3f}, {spread}).")
    return table + "\n\n" + " ".join(said)


def longer_bodies(oracle_rows: List[dict], quality_rows: List[dict]) -> List[str]:
    """The run folders of the oracle rows' softmax models that are quality.csv runs of group reference-long:
    bodies trained longer than the plan's runs, whose estimate no jointly trained run of the plan pairs with."""
    from vqbench.reporting.quality_stats import REFERENCE_LONG_GROUP
    longer = {r["run"] for r in quality_rows or () if r.get("group") == REFERENCE_LONG_GROUP}
    return sorted({model_run(r["model"]) for r in oracle_rows} & longer)


def setting_inputs(oracle_csv: str, quality_rows: List[dict], reference: str = "softmax"
                   ) -> Tuple[List[dict], List[str], List[dict], List[dict]]:
    """(oracle rows, the settings of their softmax models, the quality variants (typed quality.csv rows
    aggregated against ``reference``) of those settings that pair with them, the rows of premise.csv beside
    oracle_csv): what one oracle file is set against, never another track's runs, and no jointly trained run
    where the softmax models were trained longer than it (their estimate pairs with frozen heads only)."""
    from vqbench.reporting.quality_stats import aggregate, setting
    rows = read_rows(oracle_csv)
    schedules = {q["run"]: q.get("schedule") or "" for q in quality_rows or ()}
    for r in rows:  # an oracle row's setting is its softmax model's, schedule included (from that run's row)
        r["schedule"] = schedules.get(model_run(r["model"]), "")
    settings = sorted({setting(r) for r in rows})
    variants = [] if longer_bodies(rows, quality_rows) else aggregate(quality_rows or [], reference)
    premise_csv = os.path.join(os.path.dirname(oracle_csv), "premise.csv")
    premise = read_premise(premise_csv) if os.path.exists(premise_csv) else []
    return rows, settings, [v for v in variants if v["setting"] in settings], premise


def write_markdown(oracle_csv: str, quality_csv: str = None) -> str:
    """oracle.md beside oracle_csv, rendered from it and from quality_csv (default: quality.csv beside it,
    when there): a view of the two files, rewritten whenever either changes (`python -m vqbench.quality
    table` does). Returns the path written."""
    from vqbench.reporting.quality_stats import typed_quality_row
    quality_csv = quality_csv or os.path.join(os.path.dirname(oracle_csv), "quality.csv")
    quality = []
    if os.path.exists(quality_csv):
        with open(quality_csv, newline="") as f:
            quality = [typed_quality_row(r) for r in csv.DictReader(f)]
    rows, settings, variants, premise = setting_inputs(oracle_csv, quality)
    models = {(r["model_seed"], r["model"]): r["softmax_ppl"] for r in rows}
    estimate = tabulate(estimate_rows(rows), headers=[
        "mapping", "K", "softmax models", "oracle ppl (1/n)", "oracle / softmax (1/n)",
        "oracle / softmax (unigram share)", "within-code factor", "exact rows", "test targets on exact rows (%)"],
        tablefmt="github", disable_numparse=True)
    notes = "\n".join(f"- {r['mapping']} K={r['K']}, softmax seed {r['model_seed']}: {r['note']}"
                      for r in rows if r.get("note"))
    if notes:
        estimate += "\n\n" + notes
    split_text = gap_markdown(rows, variants, longer_bodies(rows, quality))
    text = ORACLE_MD.format(
        name=os.path.basename(oracle_csv), setting="; ".join(settings),
        premise=premise_markdown(rows, premise, variants), cpus=", ".join(sorted({r["cpu_model"] for r in rows})), commits=", ".join(sorted({r["git_commit"] for r in rows})),
        models="; ".join(f"seed {seed}: test ppl {ppl:.1f} ({path})" for (seed, path), ppl in sorted(models.items())),
        estimate=estimate, split=split_text)
    md = os.path.splitext(oracle_csv)[0] + ".md"
    with open(md, "w") as f:
        f.write(text)
    return md


ORACLE_MD = """# The VQ-Logits oracle estimate on WikiText-2 test

Setting: {setting}. From `{name}` (`python -m vqbench.oracle --model DIR/<softmax run>/best.pt`, git commit
{commits}), `quality.csv` and `premise.csv`; rendered again by `python -m vqbench.quality table`. CPU: {cpus}.
For each trained softmax model and
mapping: the test perplexity a VQ head would reach if its code probabilities were exactly the softmax
model's (the sum of p over each code's tokens), choosing inside a code uniformly (1/n) or by unigram share
(the best a context-free per-token bias can do). The oracle ratio estimates what the mapping alone costs;
a measured VQ ratio above it is the codebook's share of the gap. It is an estimate, not a bound: a VQ model
trained for the code task may predict codes better than the softmax's summed probabilities. "Exact rows": codes that hold a single
token (an exact output row for it). Softmax models: {models}.

## The estimate per mapping and K (mean ± std over the softmax models)

{estimate}

## Measured VQ runs against their estimate

Per seed s: measured = VQ test ppl / the test ppl of its own plan's softmax seed s; oracle = the estimate
from the softmax model of seed s scored here / that model's test ppl; codebook's factor = measured / oracle,
each ratio to its own softmax model (VQ test ppl / oracle ppl where the model scored here is the one the VQ
run's ratio divides by; a replicate trained again, as in a premise plan, differs from it by its own seed-level
noise). Each column is a mean ± std over the seeds that have both a VQ run and a softmax model scored here
(a single value: one such seed). The mapping's share of the gap is log(oracle) / log(measured), the rest
being the codebook's (K x d rows standing in for sums of softmax rows, trained jointly with the body); none
where the estimate lies above the measured ratio.

{split}

## The premise: VQ heads trained on each softmax model's frozen body

The estimate assumes that a VQ head predicts codes no better than the softmax model's summed probabilities.
Tested here: the same VQ head (its mapping and K) trained alone on the frozen body of softmax seed s, under the
plan's schedule and budget, its test perplexity against the estimate from that same softmax model (a ratio
below 1: the trained head predicts codes better, and the estimate overstates the mapping's cost). Beside it,
the VQ model trained jointly with its own body, against the same estimate as a ratio of ratios: its test ppl
over its own plan's softmax of seed s, divided by the estimate over the softmax model scored here (the
codebook's factor above; its body differs from both). Each cell: mean ± std over the seeds, with the 95%
t-interval.

{premise}
"""


if __name__ == "__main__":
    sys.exit(main())
