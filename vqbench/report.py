"""python -m vqbench.report: results/REPORT.md and results/REFERENCES.bib from stored results.

Reads only files under --results (default results/): headline.csv, cpu-sweep.csv,
quality/quality.csv and figures/*.png; the references come from vqbench/references.bib. Measures nothing.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import struct
import sys
from collections import Counter
from typing import List

from vqbench.quality import UNFINISHED, _pm, aggregate, markdown_table, typed_quality_row
from vqbench.results import read_rows, select_rows
from vqbench.tables import build_tables, render

METHODS = [
    ("softmax", "Full softmax",
     "The baseline: logits h W^T over all V tokens, normalised by a softmax. `softmax:chunk=C` computes the "
     "same loss and gradients over chunks of C tokens without holding the N x V logits, the idea of Cut "
     "Cross-Entropy [wijmans2025cut] and Liger's fused linear cross-entropy [hsu2024liger]."),
    ("adaptive", "Adaptive softmax",
     "Frequent tokens in a head softmax, rare tokens in tail clusters reached through the head, each cluster "
     "with a smaller projection [grave2017efficient]; run through torch.nn.AdaptiveLogSoftmaxWithLoss."),
    ("hierarchical", "Hierarchical softmax",
     "Two-level class-based softmax p(w|h) = p(c(w)|h) p(w|c(w),h) with frequency-binned classes "
     "[mikolov2011extensions], and a binary tree over Huffman codes [morin2005hierarchical, mikolov2013distributed, "
     "joulin2017bag], whose loss follows each target's path."),
    ("lowrank", "Low-rank factorisation",
     "The V x d output matrix factorised through a rank-r bottleneck, Linear(d, r) then Linear(r, V) "
     "[sainath2013lowrank]."),
    ("vq", "VQ-Logits",
     "A K x d codebook and a fixed map from each token to one code; codebook logits h C^T are scattered to the "
     "V tokens [shao2025vqlogits]. Tokens sharing a code share a logit, so within a code the distribution is "
     "uniform. vqbench's `collapsed` loss path uses this to compute the exact loss in O(N K d)."),
]

BIBTEX_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "references.bib")


def _value(rows, spec, op, metric, **fixed):
    for r in rows:
        if r["status"] == "ok" and r["spec"] == spec and r["op"] == op and r["metric"] == metric \
                and all(str(r[k]) == str(v) for k, v in fixed.items()):
            return float(r["value"])
    return None


ALLOCATOR_LABEL = {"default": "fresh output, PyTorch's default CPU allocator, as in a plain process",
                   "thp": "fresh output, transparent-huge-page allocator"}
SPEED_CLAIMS = (("logits", "logit computation", "6x faster"), ("log_probs", "log-probabilities", "n/a"),
                ("loss", "training loss (forward)", "n/a"), ("train", "training step (forward + backward)", "n/a"))


def speed_cell(files, op, vq_spec, dtype) -> str:
    """VQ's speed-up over softmax for one op and dtype in each headline file (plain process first), and into
    a reused buffer where the file has the *_into op."""
    parts = []
    for rows in files:
        t_soft = _value(rows, "softmax", op, "time", dtype=dtype)
        t_vq = _value(rows, vq_spec, op, "time", dtype=dtype)
        if t_soft and t_vq:
            allocator = next((r["cpu_allocator"] for r in rows if r.get("cpu_allocator")), "")
            label = ALLOCATOR_LABEL.get(allocator, allocator) if op in ("logits", "log_probs") else ""
            parts.append(f"{t_soft / t_vq:.1f}x" + (f" ({label})" if label else ""))
        into_soft = _value(rows, "softmax", op + "_into", "time", dtype=dtype)
        into_vq = _value(rows, vq_spec, op + "_into", "time", dtype=dtype)
        if into_soft and into_vq and rows is files[-1]:
            parts.append(f"{into_soft / into_vq:.1f}x (into a reused buffer)")
    return "; ".join(dict.fromkeys(parts))


def _dtype_order(dtype: str):
    """Claims in a fixed order whatever the set's: float32, tf32, bfloat16, then any other by name."""
    order = ("float32", "tf32", "bfloat16")
    return (order.index(dtype) if dtype in order else len(order), dtype)


def gpu_softmax_caveat(cuda) -> str:
    """Why GPU ratios over these rows overstate VQ's gain, or '' once the rows hold the strongest softmax.

    Rows without a padded softmax (``pad=``) and without a TF32 row measured the softmax at the odd width V
    and in strict float32, far below the GEMM ceiling the same run measured; the fraction is the bfloat16
    softmax logits' FLOP rate over the ceiling of its floor row (the first dtype measured, without bfloat16).
    """
    from vqbench.registry import parse_spec
    if not cuda or any(r["dtype"] == "tf32" or (r["head"] == "softmax" and "pad" in parse_spec(r["spec"])[1])
                       for r in cuda):
        return ""
    dtypes = sorted({r["dtype"] for r in cuda}, key=lambda t: (t != "bfloat16", _dtype_order(t)))
    for dtype in dtypes:
        flops = _value(cuda, "softmax", "logits", "flops_analytic", dtype=dtype)
        seconds = _value(cuda, "softmax", "logits", "time", dtype=dtype)
        floor = next((r for r in select_rows(cuda, spec="softmax", op="logits", metric="floor", dtype=dtype,
                                             status="ok") if r.get("gemm_flop_s")), None)
        if flops and seconds and floor:
            rate, ceiling = flops / seconds, float(floor["gemm_flop_s"])
            return (f"softmax ran unpadded at V={floor['V']}, without TF32, at {100 * rate / ceiling:.0f}% of its "
                    f"measured {dtype} ceiling ({rate / 1e12:.1f} of {ceiling / 1e12:.0f} TFLOP/s)")
    return "softmax ran unpadded, without TF32"


def fastest_exact_softmax(rows, op, dtype):
    """(spec, seconds) of the fastest exact softmax variant (plain, chunked, padded, a peer) timed on op in
    dtype, or None: GPU speed-ups are taken against the strongest softmax, not the plain one."""
    from vqbench.tables import is_exact_softmax
    times = [(float(r["value"]), r["spec"]) for r in select_rows(rows, op=op, metric="time", dtype=dtype, status="ok")
             if is_exact_softmax(r["spec"])]
    return (min(times)[1], min(times)[0]) if times else None


def gpu_claims(cuda, vq_spec) -> list:
    """Claims-table rows for the GPU headline: VQ's speed-up over the fastest exact softmax per op and dtype."""
    if not cuda:
        return []
    lines = []
    first = cuda[0]
    where = f"V={first['V']}, d={first['d']}, N={first['N']}, {first['device_name']}"
    caveat = gpu_softmax_caveat(cuda)
    caveat = f" (caveat: {caveat}, so the ratio overstates VQ's gain)" if caveat else ""
    for dtype in sorted({r["dtype"] for r in cuda}, key=_dtype_order):
        for op, claim, claimed in SPEED_CLAIMS:
            soft = fastest_exact_softmax(cuda, op, dtype)
            t_vq = _value(cuda, vq_spec, op, "time", dtype=dtype)
            if soft and t_vq:
                spec, t_soft = soft
                lines.append(f"| {claim}, GPU | {claimed} | {t_soft / t_vq:.1f}x ({t_vq * 1e3:.3f} ms vs "
                             f"{t_soft * 1e3:.3f} ms); {vq_spec} vs {spec}, the fastest exact softmax, {where}, "
                             f"{dtype}{caveat} | results/cuda-headline.csv |")
    return lines


def claims_table(headline, sweep, quality, reference="softmax", paper="vq-K1024", vq_spec="vq:K=1024",
                 headline_thp=(), decode=(), cuda=()):
    """Markdown rows: claim, paper, measured, source. headline: the plain-process headline rows; headline_thp:
    the same with the THP allocator; decode: the generation step at small N; cuda: the headline on a GPU."""
    lines = ["| claim | paper | measured by vqbench | source |", "|---|---|---|---|"]
    files = [rows for rows in (headline, headline_thp) if rows]
    sources = ", ".join(name for name, rows in (("results/headline.csv", headline),
                                               ("results/headline-thp.csv", headline_thp)) if rows)
    if headline:
        first = headline[0]
        where = f"V={first['V']}, d={first['d']}, N={first['N']}, {first['device']}"
        soft = _value(headline, "softmax", "params", "params")
        vq = _value(headline, vq_spec, "params", "params")
        if soft and vq:
            lines.append(f"| output-layer parameters | up to 99% fewer | {100 * (1 - vq / soft):.1f}% fewer, {vq_spec} "
                         f"({where}) | results/headline.csv |")
        for dtype in sorted({r["dtype"] for r in headline}, key=_dtype_order):
            for op, claim, claimed in SPEED_CLAIMS:
                cell = speed_cell(files, op, vq_spec, dtype)
                if cell:
                    lines.append(f"| {claim} | {claimed} | {cell}; {vq_spec} vs softmax, {where}, {dtype} | {sources} |")
    lines += gpu_claims(cuda, vq_spec)
    for n in sorted({int(r["N"]) for r in decode}):
        for op, how in (("decode", "head.sample"), ("decode_dense", "log_probs + multinomial")):
            t_soft = _value(decode, "softmax", op, "time", N=n)
            t_vq = _value(decode, vq_spec, op, "time", N=n)
            if t_soft and t_vq:
                lines.append(f"| generation step, N={n} ({how}) | n/a | {t_soft / t_vq:.1f}x faster, {vq_spec} vs "
                             f"softmax ({t_vq * 1e3:.3f} ms vs {t_soft * 1e3:.3f} ms) | results/decode.csv |")
    if sweep:
        best = None
        for r in sweep:
            if r["status"] == "ok" and r["metric"] == "params" and r["head"] == "vq":
                soft = _value(sweep, "softmax", "params", "params", V=r["V"], d=r["d"], N=r["N"])
                if soft:
                    cut = 1 - float(r["value"]) / soft
                    if best is None or cut > best[0]:
                        best = (cut, r)
        if best:
            cut, r = best
            lines.append(f"| output-layer parameters, largest cut in the sweep | up to 99% fewer | "
                         f"{100 * cut:.2f}% fewer ({r['spec']}, V={r['V']}, d={r['d']}) | results/cpu-sweep.csv |")
    claims = quality_claims(quality, reference, paper)
    for row in claims:
        lines.append(f"| perplexity | +4% over softmax | {row} | results/quality/quality.csv |")
    if not claims:
        missing = (f"no finished {reference} run to take ratios against" if quality
                   else "no finished quality runs")
        lines.append(f"| perplexity | +4% over softmax | not measured yet: {missing} in "
                     "results/quality/quality.csv | |")
    return "\n".join(lines)


PAPER_FEWER_PARAMS = 0.95  # the paper's cut: +4% perplexity at >= 95% fewer output-layer parameters
WIKITEXT2_VOCAB = 33_278  # the quality runs' vocabulary (WikiText-2 train, <eos> included)


def quality_claims(quality, reference="softmax", paper="vq-K1024"):
    """Sentences for the perplexity claim: the paper's form of VQ-Logits and the best VQ variant with >= 95%
    fewer output parameters (the paper's cut; the Pareto figure shows the rest), each as its
    test-perplexity ratio to the reference (paired by seed, mean ± std) with its output parameters."""
    variants = {v["name"]: v for v in aggregate(quality, reference)} if quality else {}
    soft = variants.get(reference)
    if soft is None:
        return []

    def said(v):
        spread = "" if math.isnan(v["ratio_std"]) else f" ± {v['ratio_std']:.3f}"
        seeds = f"{v['ratio_seeds']} seeds" if v["ratio_seeds"] > 1 else "1 seed"
        return (f"test ppl ratio {v['ratio_mean']:.3f}{spread} ({100 * (v['ratio_mean'] - 1):+.1f}%, {seeds}; "
                f"{v['name']}, {v['output_params']:,} output parameters, {100 * v['fewer_params']:.1f}% fewer "
                f"than softmax's {soft['output_params']:,}; softmax test ppl {_pm(soft['test_mean'], soft['test_std'], 1)})")

    out = []
    if paper in variants:
        out.append("VQ-Logits in the paper's form (K=1024, frequency mapping, no bias): " + said(variants[paper]))
    # the paper's claim is +4% at >= 95% fewer output parameters, so the best variant is sought at that cut
    vq = [v for v in variants.values() if v["head"].startswith("vq") and not math.isnan(v["ratio_mean"])
          and v["fewer_params"] >= PAPER_FEWER_PARAMS]
    if vq:
        best = min(vq, key=lambda v: v["ratio_mean"])
        if best["name"] != paper:
            out.append("best VQ variant with >= 95% fewer output parameters: " + said(best))
    return out


def unfinished_quality_runs(quality_md: str) -> list:
    """quality.md's sentence on the planned runs without a finished result (so a reader of the report
    knows which rows are missing and how far they are), as report lines; none when every run finished."""
    if not os.path.exists(quality_md):
        return []
    with open(quality_md) as f:
        line = next((l.strip() for l in f if l.startswith(UNFINISHED)), "")
    if not line or line.endswith(": none."):
        return []
    return [f"{line.rstrip('.')}; each gets its row when it finishes (from `results/quality/quality.md`).", ""]


def oracle_section(oracle_csv, quality, reference="softmax"):
    """REPORT lines on the oracle bound: what a VQ head could reach from a trained softmax model's own code
    probabilities, and each measured VQ gap split into the mapping's and the codebook's factor."""
    from vqbench.oracle import bound_summary, gap_markdown, read_rows as read_oracle, target_verdict
    rows = read_oracle(oracle_csv)
    variants = aggregate(quality, reference)
    # a K x d codebook has K/V of softmax's V x d output parameters
    max_K = math.floor((1 - PAPER_FEWER_PARAMS) * WIKITEXT2_VOCAB)
    verdict = target_verdict(rows, variants, max_K)
    return ["### The oracle bound", "",
            "From `results/quality/oracle.csv` (`python -m vqbench.oracle`; every mapping and K in "
            "`results/quality/oracle.md`): the test perplexity ratio to softmax that a VQ head would reach if its "
            "code probabilities were exactly a trained softmax model's: what the mapping alone costs; what a "
            "measured VQ run pays above it is the codebook's. At d=200 a codebook of "
            f"K <= {max_K} has >= {100 * PAPER_FEWER_PARAMS:.0f}% fewer output parameters than softmax "
            f"(V={WIKITEXT2_VOCAB:,}). Bound: " + bound_summary(rows, max_K) + ".", "",
            *([verdict, ""] if verdict else []),
            gap_markdown(rows, variants), ""]


def environment(rows):
    first = rows[0]
    stamps = sorted(r["timestamp"] for r in rows if r.get("timestamp"))
    return (f"- device: {first['device_name']} ({first['device']}), CPU {first['cpu_model']}\n"
            f"- torch {first['torch_version']}, vqbench {first['vqbench_version']} at commit {first['git_commit']}, "
            f"{first['threads']} threads\n"
            f"- measured {stamps[0]} to {stamps[-1]}" if stamps else "")


def skip_summary(rows):
    reasons = Counter(r["reason"].split(":")[0] for r in rows if r["status"] == "skipped")
    if not reasons:
        return "No configuration was skipped."
    return "Skipped (config, op) units by reason: " + ", ".join(f"{k}: {v}" for k, v in reasons.most_common()) + \
        ". Each skipped cell in the tables carries its full reason."


def build_report(results_dir: str, reference: str = "softmax", paper: str = "vq-K1024", vq_spec: str = "vq:K=1024",
                 sweep_d: int = 1024, sweep_n: int = 2048) -> str:
    """REPORT.md's text from the files under results_dir. reference and paper: quality variants (the softmax
    baseline, the paper's form of VQ-Logits); vq_spec: the headline's VQ head for the claims; sweep_d and
    sweep_n: the sweep slice whose speed-ups the report shows."""
    def load(name):
        path = os.path.join(results_dir, name)
        return read_rows(path) if os.path.exists(path) else []

    headline, sweep = load("headline.csv"), load("cpu-sweep.csv")
    headline_thp, decode, cuda = load("headline-thp.csv"), load("decode.csv"), load("cuda-headline.csv")
    quality_csv = os.path.join(results_dir, "quality", "quality.csv")
    quality = []
    if os.path.exists(quality_csv):
        with open(quality_csv, newline="") as f:
            quality = [typed_quality_row(r) for r in csv.DictReader(f)]
    parts = ["# vqbench report", "",
             "Built by `python -m vqbench.report` from the files under `results/` alone; every number below is in "
             "one of them, and `results/README.md` gives the command that regenerates each.", ""]
    if headline or sweep:
        parts += ["## Environment", "", environment(headline or sweep), ""]
    parts += ["## Methods", ""]
    for name, title, text in METHODS:
        parts += [f"**{title}** (`{name}`). {text}", ""]
    parts += ["References: `results/REFERENCES.bib`.", "", "## Paper claims vs measured", "",
              "VQ-Logits [shao2025vqlogits] claims up to 99% fewer output-layer parameters, 6x faster logit "
              "computation and +4% perplexity against full softmax.", "",
              claims_table(headline, sweep, quality, reference, paper, vq_spec, headline_thp, decode, cuda), ""]
    caveat = gpu_softmax_caveat(cuda)
    if caveat:
        parts += [f"The GPU rows come from `results/cuda-headline.csv`, whose {caveat}, so every GPU ratio above overstates VQ's gain: a softmax padded to a "
                  "multiple of 64 tokens (`softmax:pad=64`) or in TF32 (`--dtype tf32`) is the fair baseline, and "
                  "`scripts/run-cuda.sh` measures both when a GPU is lent.", ""]
    if headline:
        parts += ["## Headline configuration", "", "From `results/headline.csv`.", "",
                  render(build_tables(select_rows(headline, metric=["params", "time", "peak_memory"])
                                      + select_rows(headline, status=["skipped"])), "github")]
    if sweep:
        parts += [f"## Sweep: speed-ups over full softmax at d={sweep_d}, N={sweep_n}", "",
                  "From `results/cpu-sweep.csv`; the full tables are in `results/cpu-sweep.md`.", ""]
        chosen = select_rows(sweep, d=sweep_d, N=sweep_n, metric="time", op=["logits", "loss", "train"])
        parts += [render([t for t in build_tables(chosen) if t.kind == "ratio"], "github")]
        parts += ["## Skipped configurations", "", skip_summary(sweep), ""]
    if quality:
        parts += ["## Quality on WikiText-2", "",
                  "From `results/quality/quality.csv` (`python -m vqbench.quality table`; protocol, commands and "
                  "every run in `results/quality/quality.md`). Ratios pair runs of the same seed.", "",
                  markdown_table(aggregate(quality, reference)), "",
                  *unfinished_quality_runs(os.path.join(results_dir, "quality", "quality.md")),
                  "![quality vs parameters](quality/pareto.png)", ""]
        oracle_csv = os.path.join(results_dir, "quality", "oracle.csv")
        if os.path.exists(oracle_csv):
            parts += oracle_section(oracle_csv, quality, reference)
    figures = sorted(glob.glob(os.path.join(results_dir, "figures", "*.png")))
    if figures:
        parts += ["## Figures", "", "From `python -m vqbench.plot`.", ""]
        parts += [f"![{os.path.basename(f)}]({os.path.relpath(f, results_dir)})" for f in figures]
        parts.append("")
    return "\n".join(parts)


def stale_results(results_dir: str) -> List[str]:
    """One line per results file under results_dir (its top level: the files the README and this report
    cite) with rows measured by code whose fingerprint differs from the working tree's."""
    from vqbench.fingerprint import current_fingerprint
    problems = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.csv"))):
        try:
            rows = read_rows(path)
        except ValueError:
            continue  # not a results file (quality tables live in their own folder)
        current, stale = {}, Counter()
        for row in select_rows(rows, status="ok"):  # a skipped row holds no measurement
            spec = row["spec"]
            if spec not in current:
                try:
                    current[spec] = current_fingerprint(spec)
                except Exception:  # a head that cannot be built here (a peer's package): as the sweep records
                    current[spec] = ""
            if row.get("code_fingerprint", "") != current[spec]:
                stale[spec] += 1
        if stale:
            specs = ", ".join(f"{spec} ({n})" for spec, n in sorted(stale.items()))
            problems.append(f"{path}: {sum(stale.values())} of {len(rows)} rows were measured by code other than "
                            f"the working tree's: {specs}")
    return problems


def png_text(path: str) -> dict:
    """The uncompressed text chunks (tEXt, iTXt) of a PNG file: {keyword: text}."""
    found = {}
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            raise ValueError(f"{path} is not a PNG file")
        while True:
            header = f.read(8)
            if len(header) < 8:
                return found
            length, kind = struct.unpack(">I4s", header)
            data = f.read(length)
            f.read(4)  # CRC
            if kind == b"tEXt":
                key, _, text = data.partition(b"\0")
                found[key.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = data.partition(b"\0")
                if rest[:1] == b"\0":  # not compressed: flags, method, language\0, translated keyword\0, text
                    text = rest[2:].split(b"\0", 2)[-1]
                    found[key.decode("latin-1")] = text.decode("utf-8")
            elif kind == b"IEND":
                return found


FIGURES = ("*.png", "figures/*.png", "quality/*.png")  # the figures README and REPORT show (not archived ones)


def stale_figures(results_dir: str) -> List[str]:
    """One line per figure under results_dir drawn from files that have changed since (or that records no
    sources): `python -m vqbench.plot` and `quality table` write each source's sha256 into the PNG."""
    from vqbench.plot import SOURCE_KEY, file_sha256
    problems = []
    cited = [p for pattern in FIGURES for p in glob.glob(os.path.join(results_dir, pattern))]
    for path in sorted(cited):
        note = png_text(path).get(SOURCE_KEY)
        if not note:
            problems.append(f"{path}: records no source files (drawn by an older vqbench.plot); draw it again")
            continue
        for part in note.split("; "):
            rel, _, digest = part.rpartition(" sha256=")
            source = os.path.normpath(os.path.join(os.path.dirname(path), rel))
            if not os.path.exists(source):
                problems.append(f"{path}: its source {source} is gone")
                continue
            if file_sha256(source) != digest:
                problems.append(f"{path}: {source} has changed since it was drawn; draw it again")
    return problems


def stale_report(results_dir: str, **settings) -> List[str]:
    """['REPORT.md: ...'] when the folder's report differs from one built from today's results (a folder
    without a report has nothing to be stale)."""
    path = os.path.join(results_dir, "REPORT.md")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        if f.read() != build_report(results_dir, **settings):
            return [f"{path}: not built from today's results; build it again with python -m vqbench.report"]
    return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results folder (default results/)")
    p.add_argument("--vq-spec", default="vq:K=1024", help="the headline's VQ head for the claims table")
    p.add_argument("--paper-variant", default="vq-K1024", help="quality variant of the paper's form of VQ-Logits")
    p.add_argument("--sweep-d", type=int, default=1024, help="d of the sweep's speed-up tables (default 1024)")
    p.add_argument("--sweep-n", type=int, default=2048, help="N of the sweep's speed-up tables (default 2048)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1, naming each file, when a results file holds rows measured by "
                        "code other than the working tree's (vqbench.fingerprint), a figure was drawn from files "
                        "that have changed since, or REPORT.md differs from one built from today's results")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results):
        p.error(f"--results: no folder {args.results}")
    settings = dict(paper=args.paper_variant, vq_spec=args.vq_spec, sweep_d=args.sweep_d, sweep_n=args.sweep_n)
    if args.check:
        problems = stale_results(args.results) + stale_figures(args.results) + stale_report(args.results, **settings)
        for line in problems:
            print(line, file=sys.stderr)
        print("stale results: measure them again" if problems else "every results file describes the working tree")
        return 1 if problems else 0
    report = build_report(args.results, **settings)
    with open(os.path.join(args.results, "REPORT.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.results, "REFERENCES.bib"), "w") as f:
        with open(BIBTEX_PATH) as source:
            f.write(source.read())
    print(os.path.join(args.results, "REPORT.md"))
    print(os.path.join(args.results, "REFERENCES.bib"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
