"""python -m vqbench.oracle: the best perplexity any VQ-Logits head with a given mapping could reach.

    python -m vqbench.oracle --model CKPT/joint-softmax-s0/best.pt [--learned CKPT/joint-vq-K1024-learned-s0/best.pt]

A VQ head with map M gives token y the probability P(code(y) | context) x (share of y inside its code):
1/n_code(y) without a bias, or at best the unigram share u_y / U_code(y) with a per-token bias that does
not depend on the context. If it reproduced a trained softmax model's code probabilities exactly,
P(code | context) = sum of p_softmax(i | context) over the code's tokens, its test perplexity would be

    uniform: exp(mean over test targets of [-log P(code(y)) + log n_code(y)])
    unigram: exp(mean over test targets of [-log P(code(y)) - log(u_y / U_code(y))])

Against the softmax model's own perplexity this splits a VQ head's gap in two: the oracle's ratio is
what the mapping costs (no codebook can do better from these hidden states), the rest of a measured VQ
ratio is the codebook's (a K x d matrix standing in for a sum of V softmax rows). Mappings: random,
contiguous, frequency, k-means over the softmax's output vectors, and a learned map read from a trained
VQ run, at each K. A code that holds one token gives it an exact row of its own, so "exact rows" (and the
share of test targets they cover) says how far a map already is the "exact rows for the frequent tokens,
VQ for the tail" design. Writes oracle.csv and oracle.md beside each other (append-free: one file per call).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from typing import Dict, List, Tuple

import torch
from tabulate import tabulate

from vqbench.data import corpus_fingerprint, load_corpus
from vqbench.evaluate import hidden_states
from vqbench.lm import LSTMBody
from vqbench.mapping import build_mapping
from vqbench.provenance import cpu_model, git_commit
from vqbench.registry import make_head

MAPPINGS = ("random", "contiguous", "frequency", "kmeans")
COLUMNS = ["model", "mapping", "K", "softmax_ppl", "oracle_ppl", "oracle_ratio", "oracle_unigram_ppl",
           "oracle_unigram_ratio", "within_code_ppl_factor", "exact_rows", "exact_share", "test_tokens", "git_commit"]


def code_nats(log_probs: torch.Tensor, targets: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor,
              num_codes: int, probs: torch.Tensor = None) -> Tuple[float, float, float]:
    """Summed nats over a chunk: (softmax, oracle with 1/n inside codes, oracle with unigram shares).

    log_probs [N, V] of the softmax model, targets [N], codes [V] int64 in [0, K), counts [V] unigram
    counts (> 0 where a share is taken); probs [N, V] float64, log_probs exponentiated (computed here when
    not given: a caller scoring several mappings on one chunk passes it once).
    """
    p = log_probs.double().exp() if probs is None else probs
    mass = torch.zeros(p.shape[0], num_codes, dtype=torch.float64).index_add_(1, codes, p)  # [N, K]
    target_codes = codes[targets]
    log_code = mass.gather(1, target_codes[:, None]).squeeze(1).log()
    sizes = torch.bincount(codes, minlength=num_codes).double()
    code_counts = torch.zeros(num_codes, dtype=torch.float64).index_add_(0, codes, counts.double())
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
    """(body, head) of a softmax run's checkpoint (best.pt or checkpoint.pt of vqbench.train)."""
    from vqbench.train import load_checkpoint
    saved = load_checkpoint(path, "model")
    cfg = saved["config"]
    if not cfg["head"].startswith("softmax"):
        raise ValueError(f"model: {path!r} is a {cfg['head']!r} run; the oracle needs a softmax model")
    if saved["corpus"] != corpus_fingerprint(corpus):
        raise ValueError(f"model: {path!r} was trained on another corpus")
    body = LSTMBody(corpus.vocab_size, cfg["d_model"], cfg["layers"], cfg["dropout"])
    body.load_state_dict(saved["body"])
    head = make_head(cfg["head"], corpus.vocab_size, cfg["d_model"], token_counts=corpus.counts)
    head.load_state_dict(saved["head"])
    return body.eval(), head.eval(), cfg


def learned_mapping(path: str, corpus) -> Tuple[int, torch.Tensor]:
    """(K, codes [V]) of a trained VQ run's checkpoint."""
    from vqbench.train import load_checkpoint
    saved = load_checkpoint(path, "learned")
    if saved["corpus"] != corpus_fingerprint(corpus) or "mapping" not in saved["head"]:
        raise ValueError(f"learned: {path!r} is not a VQ run on this corpus")
    codes = saved["head"]["mapping"]
    return int(saved["head"]["codebook"].shape[0]), codes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", required=True, help="best.pt of one or more trained softmax runs")
    p.add_argument("--learned", nargs="*", default=[], help="best.pt of VQ runs whose learned mapping to score")
    p.add_argument("--K", type=int, nargs="+", default=[256, 1024, 1536, 4096],
                   help="codebook sizes (1536: the largest with >= 95%% fewer output parameters than softmax at d=200)")
    p.add_argument("--data", help="corpus folder (default: vqbench.data.default_corpus_dir())")
    p.add_argument("--out", default=os.path.join("results", "quality", "oracle.csv"),
                   help="CSV to write (refused if it exists; the .md beside it likewise)")
    p.add_argument("--chunk", type=int, default=1024, help="test positions per chunk (default 1024)")
    p.add_argument("--threads", type=int, help="torch threads")
    args = p.parse_args(argv)
    if any(k < 1 for k in args.K) or args.chunk < 1:
        p.error("--K, --chunk: must be >= 1")
    try:
        rows = run(args)
    except ValueError as error:
        print(f"python -m vqbench.oracle: error: {error}", file=sys.stderr)
        return 2
    print(write(rows, args.out))
    return 0


def run(args) -> List[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in [args.out, os.path.splitext(args.out)[0] + ".md"]:
        if os.path.exists(path):
            raise ValueError(f"out: {path!r} exists; move it aside or choose another --out (nothing was changed)")
    corpus = load_corpus(args.data)
    if any(k > corpus.vocab_size for k in args.K):
        raise ValueError(f"K: must be <= the vocabulary size {corpus.vocab_size}")
    learned = [learned_mapping(path, corpus) for path in args.learned]
    rows = []
    for model in args.model:
        body, head, cfg = load_softmax_model(model, corpus)
        mappings = {}
        for k in args.K:
            for name in MAPPINGS:
                mappings[(name, k)] = build_mapping(name, corpus.vocab_size, k, corpus.counts.double(), seed=0,
                                                    embeddings=head.weight.detach())[0]
        for k, codes in learned:
            mappings[("learned", k)] = codes
        hidden, targets = hidden_states(body, corpus.ids["test"], cfg["bptt"])

        def chunks():
            with torch.no_grad():
                for i in range(0, targets.numel(), args.chunk):
                    yield head.log_probs(hidden[i:i + args.chunk]), targets[i:i + args.chunk]

        for row in oracle_table(chunks(), mappings, corpus.counts):
            rows.append({"model": model, **row, "git_commit": git_commit()})
    return rows


def write(rows: List[dict], out: str) -> str:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "x", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    shown = [[r["model"], r["mapping"], r["K"], f"{r['softmax_ppl']:.1f}", f"{r['oracle_ppl']:.1f}",
              f"{r['oracle_ratio']:.3f}", f"{r['oracle_unigram_ppl']:.1f}", f"{r['oracle_unigram_ratio']:.3f}",
              f"{r['within_code_ppl_factor']:.2f}", r["exact_rows"], f"{r['exact_share']:.3f}"] for r in rows]
    headers = ["softmax model", "mapping", "K", "softmax test ppl", "oracle ppl (1/n)", "oracle / softmax",
               "oracle ppl (unigram share)", "oracle / softmax (unigram)", "within-code factor", "exact rows",
               "test targets on exact rows"]
    md = os.path.splitext(out)[0] + ".md"
    with open(md, "x") as f:
        f.write("# The VQ-Logits oracle bound on WikiText-2 test\n\n"
                f"`python -m vqbench.oracle` (CPU: {cpu_model()}). For each trained softmax model and mapping: "
                "the test perplexity a VQ head would reach if its code probabilities were exactly the softmax "
                "model's (sum of p over each code's tokens), choosing inside a code uniformly (1/n) or by "
                "unigram share (the best a context-free per-token bias can do). The oracle ratio is what the "
                "mapping alone costs; a measured VQ ratio above it is the codebook's share of the gap. \"Exact rows\": "
                "codes that hold a single token (an exact output row for it).\n\n"
                + tabulate(shown, headers=headers, tablefmt="github", disable_numparse=True) + "\n")
    return md


if __name__ == "__main__":
    sys.exit(main())
