"""python -m vqbench.report: results/REPORT.md and results/REFERENCES.bib from stored results.

Reads only files under --results (default results/): headline.csv, cpu-sweep.csv,
quality/quality.csv and figures/*.png; the references come from vqbench/references.bib. Measures nothing.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import math
import os
import stat
import statistics
import struct
import sys
from collections import Counter
from typing import List, Optional, Tuple

from vqbench.quality import UNFINISHED
from vqbench.train import TrainConfig
from vqbench.reporting.quality_stats import (REFERENCE_LONG_GROUP, _pm, aggregate, markdown_table,
                                             typed_quality_row)
from vqbench.heads.registry import import_modules
from vqbench.results import read_rows, select_rows
from vqbench.reporting.tables import build_tables, render

def methods(rows) -> List[str]:
    """The Methods section's paragraphs: each registered head's METHOD, in ORDER, then one line for each head the
    rows name that is not registered here (a head from a module this process did not import)."""
    from vqbench.heads.registry import registered_heads
    heads = registered_heads()
    parts = []
    for name, cls in heads.items():
        if cls.METHOD:
            title = cls.TITLE[:1].upper() + cls.TITLE[1:]
            parts += [f"**{title}** (`{name}`). {cls.METHOD}", ""]
    for name in sorted({r["head"] for r in rows if r.get("head")} - set(heads)):
        parts += [f"**`{name}`**: a head from a module outside vqbench, not imported here (its rows are in the "
                  f"tables; `python -m vqbench.report --import MODULE` adds its description).", ""]
    return parts


BIBTEX_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "references.bib")


def _row(rows, spec, op, metric, **fixed) -> Optional[dict]:
    for r in rows:
        if r["status"] == "ok" and r["spec"] == spec and r["op"] == op and r["metric"] == metric \
                and all(str(r[k]) == str(v) for k, v in fixed.items()):
            return r
    return None


def _value(rows, spec, op, metric, **fixed):
    row = _row(rows, spec, op, metric, **fixed)
    return float(row["value"]) if row else None


#: two rows are from one session when one commit of the code, one CPU model and at most this many hours apart
#: measured them: a ratio of rows from two sessions also holds how much the machine moved between them
SESSION_HOURS = 3


def measured_apart(a: dict, b: dict) -> str:
    """'' when rows a and b were measured in one session, else how they differ (commit, CPU model, hours):
    a speed-up over rows measured apart says so, since unchanged ops move between sessions."""
    from datetime import datetime
    try:
        hours = abs((datetime.fromisoformat(a["timestamp"]) - datetime.fromisoformat(b["timestamp"]))
                    .total_seconds()) / 3600
    except (KeyError, TypeError, ValueError):  # a row without its time: judged by commit and CPU model alone
        hours = 0.0
    if a.get("git_commit") == b.get("git_commit") and a.get("cpu_model") == b.get("cpu_model") \
            and hours <= SESSION_HOURS:
        return ""

    def when(r):
        return f"{r['spec']} at {r.get('git_commit', '')[:7] or '?'}, {r.get('timestamp', '')[:16] or '?'}"
    return f"rows measured apart: {when(a)}; {when(b)}"


def _apart(rows, op, vq_spec, dtype, **fixed) -> str:
    soft = _row(rows, "softmax", op, "time", dtype=dtype, **fixed)
    vq = _row(rows, vq_spec, op, "time", dtype=dtype, **fixed)
    return measured_apart(soft, vq) if soft and vq else ""


ALLOCATOR_LABEL = {"default": "fresh output, PyTorch's default CPU allocator, as in a plain process",
                   "thp": "fresh output, transparent-huge-page allocator"}
SPEED_CLAIMS = (("logits", "logit computation", "6x faster"), ("log_probs", "log-probabilities", "n/a"),
                ("loss", "training loss (forward)", "n/a"), ("train", "training step (forward + backward)", "n/a"))


def speed_cell(files, op, vq_spec, dtype, runs=()) -> str:
    """VQ's speed-up over softmax for one op and dtype in each headline file (plain process first), and into
    a reused buffer where the file has the *_into op. runs: more runs of the first file's setting (headline-run*.csv,
    in shuffled head order): its ratio is then their median with the range over all of them."""
    parts = []
    for rows in files:
        ratio = _speed_up(rows, op, vq_spec, dtype)
        if ratio:
            allocator = next((r["cpu_allocator"] for r in rows if r.get("cpu_allocator")), "")
            label = ALLOCATOR_LABEL.get(allocator, allocator) if op in ("logits", "log_probs") else ""
            spread, apart = "", [_apart(rows, op, vq_spec, dtype)]
            if rows is files[0]:  # the setting whose runs in other orders are stored
                ratios = [ratio] + [r for r in (_speed_up(run, op, vq_spec, dtype) for run in runs) if r]
                ratio, spread = statistics.median(ratios), _run_spread(ratios)
                apart += [_apart(run, op, vq_spec, dtype) for run in runs]
            notes = ", ".join(n for n in (label, spread, *dict.fromkeys(a for a in apart if a)) if n)
            parts.append(f"{ratio:.1f}x" + (f" ({notes})" if notes else ""))
        into = _speed_up(rows, op + "_into", vq_spec, dtype)
        if into and rows is files[-1]:
            apart = _apart(rows, op + "_into", vq_spec, dtype)
            parts.append(f"{into:.1f}x (into a reused buffer{', ' + apart if apart else ''})")
    return "; ".join(dict.fromkeys(parts))


def _speed_up(rows, op, vq_spec, dtype):
    t_soft = _value(rows, "softmax", op, "time", dtype=dtype)
    t_vq = _value(rows, vq_spec, op, "time", dtype=dtype)
    return t_soft / t_vq if t_soft and t_vq else None


def _run_spread(ratios) -> str:
    """'median of 3 runs in shuffled head order, 1.9-2.3x', or that one run's spread is not measured."""
    if len(ratios) < 2:
        return "one run: its spread over runs is not measured"
    return f"median of {len(ratios)} runs in shuffled head order, {min(ratios):.1f}-{max(ratios):.1f}x"


def _torch(row) -> str:
    """', torch 2.13.0+cpu': the torch version a claim's rows ran under ('' when the rows do not say)."""
    return f", torch {row['torch_version']}" if row.get("torch_version") else ""


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
    from vqbench.heads.registry import parse_spec
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
    from vqbench.reporting.tables import is_exact_softmax
    times = [(float(r["value"]), r["spec"]) for r in select_rows(rows, op=op, metric="time", dtype=dtype, status="ok")
             if is_exact_softmax(r["spec"])]
    return (min(times)[1], min(times)[0]) if times else None


CUDA_HEADLINE = "cuda-headline.csv"
ARCHIVED_CUDA = ("archive", CUDA_HEADLINE)  # until a GPU measures today's code, the claims cite the archived rows


def gpu_claims(cuda, vq_spec, source: str = "results/" + CUDA_HEADLINE) -> list:
    """Claims-table rows for the GPU headline: VQ's speed-up over the fastest exact softmax per op and dtype.
    source: the file the rows come from; an archived one (measured by code that has changed since) says so
    in every row, with the commit that measured it."""
    if not cuda:
        return []
    lines = []
    first = cuda[0]
    where = f"V={first['V']}, d={first['d']}, N={first['N']}, {first['device_name']}{_torch(first)}"
    caveat = gpu_softmax_caveat(cuda)
    caveat = f" (caveat: {caveat}, so the ratio overstates VQ's gain)" if caveat else ""
    if "/archive/" in source:
        commit = first.get("git_commit", "").split("+")[0][:7]
        caveat += (f" (archived: measured at {commit} by code that has changed since; a lent GPU measures it "
                   "again with scripts/run-cuda.sh)")
    for dtype in sorted({r["dtype"] for r in cuda}, key=_dtype_order):
        for op, claim, claimed in SPEED_CLAIMS:
            soft = fastest_exact_softmax(cuda, op, dtype)
            t_vq = _value(cuda, vq_spec, op, "time", dtype=dtype)
            if soft and t_vq:
                spec, t_soft = soft
                lines.append(f"| {claim}, GPU | {claimed} | {t_soft / t_vq:.1f}x ({t_vq * 1e3:.3f} ms vs "
                             f"{t_soft * 1e3:.3f} ms); {vq_spec} vs {spec}, the fastest exact softmax, {where}, "
                             f"{dtype}{caveat} | {source} |")
    return lines


def claims_table(headline, sweep, quality, reference="softmax", paper="vq-K1024", vq_spec="vq:K=1024",
                 headline_thp=(), decode=(), cuda=(), runs=(), cuda_source="results/" + CUDA_HEADLINE):
    """Markdown rows: claim, paper, measured, source. headline: the plain-process headline rows; headline_thp:
    the same with the THP allocator; decode: the generation step at small N; cuda: the headline on a GPU;
    runs: more runs of the plain-process headline, in shuffled head order (headline-run*.csv); cuda_source: the
    file the GPU rows come from."""
    lines = ["| claim | paper | measured by vqbench | source |", "|---|---|---|---|"]
    lines += _cpu_headline_claims(headline, headline_thp, vq_spec, runs)
    lines += gpu_claims(cuda, vq_spec, cuda_source)
    lines += _decode_claims(decode, vq_spec)
    lines += _sweep_claims(sweep)
    claims = quality_claims(quality, reference, paper)
    for row in claims:
        lines.append(f"| perplexity | +4% over softmax | {row} | results/quality/quality.csv |")
    for row in reference_claims(quality, reference):
        lines.append(f"| perplexity, reference | none | {row} | results/quality/quality.csv |")
    if not claims:
        missing = (f"no finished {reference} run to take ratios against" if quality
                   else "no finished quality runs")
        lines.append(f"| perplexity | +4% over softmax | not measured yet: {missing} in "
                     "results/quality/quality.csv | |")
    return "\n".join(lines)


def _cpu_headline_claims(headline, headline_thp, vq_spec, runs=()) -> List[str]:
    """The parameter cut and the speed-ups at the CPU headline size (both allocators; runs: more runs of the
    plain-allocator headline in shuffled head order)."""
    if not headline:
        return []
    lines, files = [], [rows for rows in (headline, headline_thp) if rows]
    sources = ", ".join(name for name, rows in (("results/headline.csv", headline),
                                               ("results/headline-run*.csv", runs),
                                               ("results/headline-thp.csv", headline_thp)) if rows)
    first = headline[0]
    where = f"V={first['V']}, d={first['d']}, N={first['N']}, {first['device']}{_torch(first)}"
    soft = _value(headline, "softmax", "params", "params")
    vq = _value(headline, vq_spec, "params", "params")
    if soft and vq:
        lines.append(f"| output-layer parameters | up to 99% fewer | {100 * (1 - vq / soft):.1f}% fewer, {vq_spec} "
                     f"({where}) | results/headline.csv |")
    for dtype in sorted({r["dtype"] for r in headline}, key=_dtype_order):
        for op, claim, claimed in SPEED_CLAIMS:
            cell = speed_cell(files, op, vq_spec, dtype, runs)
            if cell:
                lines.append(f"| {claim} | {claimed} | {cell}; {vq_spec} vs softmax, {where}, {dtype} | {sources} |")
    return lines


def _decode_claims(decode, vq_spec) -> List[str]:
    lines = []
    for n in sorted({int(r["N"]) for r in decode}):
        for op, how in (("decode", "head.sample"), ("decode_dense", "log_probs + multinomial")):
            soft, vq = _row(decode, "softmax", op, "time", N=n), _row(decode, vq_spec, op, "time", N=n)
            if soft and vq:
                t_soft, t_vq = float(soft["value"]), float(vq["value"])
                apart = measured_apart(soft, vq)
                lines.append(f"| generation step, N={n} ({how}) | n/a | {t_soft / t_vq:.1f}x faster, {vq_spec} vs "
                             f"softmax ({t_vq * 1e3:.3f} ms vs {t_soft * 1e3:.3f} ms{'; ' + apart if apart else ''})"
                             f" | results/decode.csv |")
    return lines


def _sweep_claims(sweep) -> List[str]:
    """The largest output-parameter cut of any VQ head in the sweep."""
    best = None
    for r in sweep:
        if r["status"] == "ok" and r["metric"] == "params" and r["head"] == "vq":
            soft = _value(sweep, "softmax", "params", "params", V=r["V"], d=r["d"], N=r["N"])
            if soft:
                cut = 1 - float(r["value"]) / soft
                if best is None or cut > best[0]:
                    best = (cut, r)
    if not best:
        return []
    cut, r = best
    return [f"| output-layer parameters, largest cut in the sweep | up to 99% fewer | "
            f"{100 * cut:.2f}% fewer ({r['spec']}, V={r['V']}, d={r['d']}) | results/cpu-sweep.csv |"]


PAPER_FEWER_PARAMS = 0.95  # the paper's cut: +4% perplexity at >= 95% fewer output-layer parameters
PLATEAU = TrainConfig.plateau  # a last-epoch validation gain above the plateau rule's threshold: not converged


def by_setting(quality, reference="softmax") -> dict:
    """{setting: {variant name: aggregate row}} of the quality rows, settings in first-seen order."""
    settings = {}
    for v in aggregate(quality, reference) if quality else []:
        settings.setdefault(v["setting"], {})[v["name"]] = v
    return settings


def quality_claims(quality, reference="softmax", paper="vq-K1024"):
    """Sentences for the perplexity claim, per setting (body, vocabulary, corpus) and opening with it, so that
    no row reads as another setting's verdict: the paper's form of VQ-Logits (the variant of group "paper",
    else the one named ``paper``) and the best VQ variant with >= 95% fewer output parameters (the paper's
    cut; the Pareto figure shows the rest), each as its test-perplexity ratio to the setting's untied
    reference (paired by seed, mean ± std and 95% t-interval) with its output parameters; where the setting
    has a tied softmax (group "tied"), the paper's form against it as well."""
    out = []
    for where, variants in by_setting(quality, reference).items():
        soft = variants.get(reference)
        if soft is not None:
            out += [f"{where}; {line}" for line in setting_claims(variants, soft, paper)]
    return out


def setting_claims(variants: dict, soft: dict, paper: str) -> list:
    """quality_claims' sentences for one setting's variants {name: aggregate row} and its reference."""
    def said(v, ratio=None, base=None):
        ratio, base = ratio or v, base or soft
        spread = "" if math.isnan(ratio["ratio_std"]) else f" ± {ratio['ratio_std']:.3f}"
        seeds = f"{ratio['ratio_seeds']} seeds" if ratio["ratio_seeds"] > 1 else "1 seed"
        interval = ("" if math.isnan(ratio["ratio_low"])
                    else f"95% CI {ratio['ratio_low']:.3f}-{ratio['ratio_high']:.3f}, ")
        return (f"test ppl ratio {ratio['ratio_mean']:.3f}{spread} ({interval}"
                f"{100 * (ratio['ratio_mean'] - 1):+.1f}%, {seeds}; {v['name']}, {v['output_params']:,} output "
                f"parameters, {100 * v['fewer_params']:.1f}% fewer than softmax's {soft['output_params']:,}; "
                f"{'softmax' if base is soft else base['name']} test ppl {_pm(base['test_mean'], base['test_std'], 1)})")

    out = []
    form = next((v for v in variants.values() if v["group"] == "paper"), variants.get(paper))
    if form is not None:
        K = form["head"].partition("K=")[2].split(",")[0]
        out.append(f"VQ-Logits in the paper's form (K={K}, frequency mapping, no bias): " + said(form))
        tied = next((v for v in variants.values() if v["group"] == "tied"), None)
        if tied is not None:
            out.append(f"VQ-Logits in the paper's form against the tied softmax ({tied['name']}): "
                       + said(form, {key[len("tied_"):]: value for key, value in form.items()
                                     if key.startswith("tied_")}, tied))
    # the paper's claim is +4% at >= 95% fewer output parameters, so the best variant is sought at that cut
    vq = [v for v in variants.values() if v["head"].startswith("vq") and not math.isnan(v["ratio_mean"])
          and v["fewer_params"] >= PAPER_FEWER_PARAMS]
    if vq:
        best = min(vq, key=lambda v: v["ratio_mean"])
        if form is None or best["name"] != form["name"]:
            out.append("best VQ variant with >= 95% fewer output parameters: " + said(best))
    if soft["last_epoch_gain"] > PLATEAU:  # a budget that stops while softmax still improves compares, but rules nothing
        budget = "/".join(dict.fromkeys(soft["epochs"].split("/")))
        out = [f"{line}; at an equal budget of {budget} epochs, short of softmax's validation plateau (its last "
               f"epoch still gained up to {100 * soft['last_epoch_gain']:.1f}%): no verdict on the +4%" for line in out]
    return out


def reference_claims(quality, reference="softmax") -> list:
    """Per setting, each variant of group reference-long (the setting's reference trained longer): its test
    perplexity, its ratio to the reference of the same seed at the setting's budget, and whether its own last
    epoch reached the plateau: how far that budget stops short of the reference perplexity."""
    out = []
    for where, variants in by_setting(quality, reference).items():
        soft = variants.get(reference)
        for longer in (v for v in variants.values() if v["group"] == REFERENCE_LONG_GROUP):
            if soft is None or math.isnan(longer["ratio_mean"]):
                continue
            gain = longer["last_epoch_gain"]
            seeds = f"{longer['seeds']} seeds" if longer["seeds"] > 1 else "1 seed"
            out.append(f"{where}; the same softmax trained {longer['epochs']} epochs ({longer['name']}, {seeds}): "
                       f"test ppl {_pm(longer['test_mean'], longer['test_std'], 1)}, x{longer['ratio_mean']:.3f} of "
                       f"{reference}'s at {'/'.join(dict.fromkeys(soft['epochs'].split('/')))} epochs (paired by "
                       f"seed); its last epoch gained {100 * gain:.1f}%"
                       + (", short of the plateau too" if gain > PLATEAU else ", within the plateau rule's threshold"))
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
    """REPORT lines on the oracle estimate of one setting (the softmax models scored in oracle_csv): what a VQ
    head would reach from a trained softmax model's own code probabilities, each measured VQ gap split into the
    mapping's and the codebook's factor, and the estimate's premise tested by heads trained on frozen bodies."""
    from vqbench.oracle import (estimate_summary, gap_markdown, longer_bodies, model_run, premise_markdown,
                                setting_inputs, target_verdict)
    rows, settings, variants, premise = setting_inputs(oracle_csv, quality, reference)
    vocab = max(int(r["vocabulary"].rpartition("-")[2]) for r in rows)
    # a K x d codebook has K/V of softmax's V x d output parameters
    max_K = math.floor((1 - PAPER_FEWER_PARAMS) * vocab)
    verdict = target_verdict(rows, variants, max_K)
    name = os.path.basename(oracle_csv)
    longer = longer_bodies(rows, quality)
    # the softmax models in the title: two oracle files of one setting (a plan's bodies and a premise plan's
    # retrained ones) get sections of their own
    models = sorted({model_run(r["model"]) for r in rows})
    return [f"### The oracle estimate: {'; '.join(settings)} (from {', '.join(models)}"
            + (", trained longer than the plan's runs)" if longer else ")"), "",
            f"From `results/quality/{name}` (`python -m vqbench.oracle`; every mapping and K in "
            f"`results/quality/{name[:-4]}.md`): the test perplexity ratio to softmax that a VQ head would reach if its "
            "code probabilities were exactly a trained softmax model's: an estimate of what the mapping alone "
            "costs (not a bound: a VQ model trained for the code task may predict codes better than the softmax's "
            "summed probabilities); what a measured VQ run pays above it is the codebook's. A K x d codebook has "
            f"K/V of softmax's V x d output parameters, so K <= {max_K} gives >= {100 * PAPER_FEWER_PARAMS:.0f}% "
            f"fewer (V={vocab:,}). Estimate: " + estimate_summary(rows, max_K) + ".", "",
            *([verdict, ""] if verdict else []),
            gap_markdown(rows, variants, longer), "",
            "The premise, tested: VQ heads trained on each softmax model's frozen body against the estimate from "
            "that model (`results/quality/premise.csv`).", "",
            premise_markdown(rows, premise, variants), ""]


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


def gpu_rows(load):
    """(rows, source) of the GPU headline: results/cuda-headline.csv, else its archived rows until a GPU
    measures today's code (results/archive/README.md says which commit measured them)."""
    rows = load(CUDA_HEADLINE)
    if rows:
        return rows, "results/" + CUDA_HEADLINE
    return load(os.path.join(*ARCHIVED_CUDA)), "results/" + "/".join(ARCHIVED_CUDA)


def build_report(results_dir: str, reference: str = "softmax", paper: str = "vq-K1024", vq_spec: str = "vq:K=1024",
                 sweep_d: int = 1024, sweep_n: int = 2048) -> str:
    """REPORT.md's text from the files under results_dir. reference and paper: quality variants (the softmax
    baseline, the paper's form of VQ-Logits); vq_spec: the headline's VQ head for the claims; sweep_d and
    sweep_n: the sweep slice whose speed-ups the report shows."""
    def load(name):
        path = os.path.join(results_dir, name)
        return read_rows(path) if os.path.exists(path) else []

    headline, sweep = load("headline.csv"), load("cpu-sweep.csv")
    headline_thp, decode = load("headline-thp.csv"), load("decode.csv")
    cuda, cuda_source = gpu_rows(load)
    quality_csv = os.path.join(results_dir, "quality", "quality.csv")
    quality = []
    if os.path.exists(quality_csv):
        with open(quality_csv, newline="") as f:
            quality = [typed_quality_row(r) for r in csv.DictReader(f)]
    parts = ["# vqbench report", "",
             "Built by `python -m vqbench.report` from the files under `results/` alone; every number below is in "
             "one of them, and `results/README.md` gives the command that regenerates each.", ""]
    parts += pending_section(results_dir)
    if headline or sweep:
        parts += ["## Environment", "", environment(headline or sweep), ""]
    parts += ["## Methods", "", *methods(headline + sweep)]
    parts += ["References: `results/REFERENCES.bib`.", "", "## Paper claims vs measured", "",
              "VQ-Logits [shao2025vqlogits] claims up to 99% fewer output-layer parameters, 6x faster logit "
              "computation and +4% perplexity against full softmax.", "",
              claims_table(headline, sweep, quality, reference, paper, vq_spec, headline_thp, decode, cuda,
                           [load(os.path.basename(p)) for p in sorted(glob.glob(os.path.join(results_dir,
                                                                                         "headline-run*.csv")))],
                           cuda_source),
              ""]
    caveat = gpu_softmax_caveat(cuda)
    if caveat:
        parts += [f"The GPU rows come from `{cuda_source}`, whose {caveat}, so every GPU ratio above "
                  "overstates VQ's gain: a softmax padded to a "
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
        parts += quality_section(results_dir, quality, reference)
    figures = sorted(glob.glob(os.path.join(results_dir, "figures", "*.png")))
    if figures:
        parts += ["## Figures", "", "From `python -m vqbench.plot`.", ""]
        parts += [f"![{os.path.basename(f)}]({os.path.relpath(f, results_dir)})" for f in figures]
        parts.append("")
    return "\n".join(parts)


def pending_section(results_dir: str) -> List[str]:
    """REPORT.md's list of the results files waiting for re-measurement, with the reason of each."""
    pending = pending_remeasurement(results_dir)
    if not pending:
        return []
    return ["## Waiting for re-measurement", "",
            "The code these files' rows executed has changed since they were measured "
            f"(`python -m vqbench.report --check`; `results/{PENDING_FILE}`): their figures describe the "
            "code of the commit in each row's `git_commit`, not today's, until they are measured again.", "",
            *[f"- `results/{name}`: {reason}" for name, reason in sorted(pending.items())], ""]


def quality_section(results_dir: str, quality, reference: str) -> List[str]:
    """REPORT.md's quality section: the variants' table, the Pareto figures and the oracle estimate."""
    parts = ["## Quality on WikiText-2", "",
             "From `results/quality/quality.csv` (`python -m vqbench.quality table`; protocol, commands and "
             "every run in `results/quality/quality.md`). Ratios pair runs of the same seed.", "",
             markdown_table(aggregate(quality, reference)), "",
             *unfinished_quality_runs(os.path.join(results_dir, "quality", "quality.md")),
             "![quality vs parameters](quality/pareto.png)", "",
             *[f"![quality vs parameters, {os.path.basename(path)[7:-4]}](quality/{os.path.basename(path)})\n"
               for path in sorted(glob.glob(os.path.join(results_dir, "quality", "pareto-*.png")))]]
    from vqbench.oracle import oracle_files
    for oracle_csv in oracle_files(os.path.join(results_dir, "quality")):
        parts += oracle_section(oracle_csv, quality, reference)
    return parts + premise_without_estimate(os.path.join(results_dir, "quality"))


def premise_without_estimate(quality_dir: str) -> List[str]:
    """REPORT lines on the frozen-body VQ runs of premise.csv whose body no oracle file scored (its checkpoint
    stayed where it trained): each set against its body's own softmax test perplexity, paired by seed."""
    from vqbench.oracle import model_run, oracle_files, read_premise, read_rows
    from tabulate import tabulate

    from vqbench.reporting.quality_stats import mean_std, setting, t_interval
    path = os.path.join(quality_dir, "premise.csv")
    if not os.path.exists(path):
        return []
    scored = {model_run(r["model"]) for oracle_csv in oracle_files(quality_dir) for r in read_rows(oracle_csv)}
    groups = {}
    for r in read_premise(path):
        if r["body_run"] not in scored:
            groups.setdefault((setting(r), r["name"], r["head"]), []).append(r)
    if not groups:
        return []
    table = []
    for (where, name, head), rows in groups.items():
        rows.sort(key=lambda r: r["seed"])
        ratios = [r["test_ppl"] / r["reference_test_ppl"] for r in rows]
        mean, std = mean_std(ratios)
        low, high = t_interval(ratios)
        spread = f" ± {std:.3f} (95% CI {low:.3f}-{high:.3f})" if len(ratios) > 1 else " (single seed)"
        table.append([where, name, head, ", ".join(str(r["seed"]) for r in rows),
                      _pm(*mean_std([r["test_ppl"] for r in rows]), 1),
                      _pm(*mean_std([r["reference_test_ppl"] for r in rows]), 1), f"{mean:.3f}{spread}"])
    return ["### Frozen-body VQ heads without an estimate", "",
            "VQ heads trained alone on a trained softmax model's frozen body (`results/quality/premise.csv`) "
            "whose body no oracle file has scored (the oracle needs that body's best.pt), so no estimate is set "
            "against them: each against "
            "that body's own softmax test perplexity, paired by seed.", "",
            tabulate(table, headers=["setting", "VQ head", "head", "softmax seeds (bodies)", "frozen-body VQ test ppl",
                                     "its softmax's test ppl", "VQ / its softmax"],
                     tablefmt="github", disable_numparse=True), ""]


PENDING_FILE = "pending-remeasurement.json"


def pending_remeasurement(results_dir: str) -> dict:
    """{results file name: why it waits} from results_dir/pending-remeasurement.json: files whose executed code
    has changed since they were measured, kept (and cited, with that caveat) until they are measured again;
    the key "asv" stands for the asv history under results/asv/."""
    path = os.path.join(results_dir, PENDING_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            pending = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a JSON object of file name -> reason ({type(error).__name__})") from None
    if not isinstance(pending, dict) or not all(isinstance(v, str) for v in pending.values()):
        raise ValueError(f"{path}: not a JSON object of file name -> reason")
    return pending


def _current_fingerprints(specs) -> dict:
    """{spec: the working tree's fingerprint, or None when its head cannot be built here}."""
    from vqbench.measuring.fingerprint import current_fingerprint
    current = {}
    for spec in specs:
        try:
            current[spec] = current_fingerprint(spec)
        except Exception:  # a head not registered here (a third-party module not imported) or not buildable
            current[spec] = None
    return current


def staleness(path: str) -> Tuple[Counter, Counter, int]:
    """(stale rows by spec, rows by spec that cannot be checked, rows in all) of one results file."""
    from vqbench.measuring.fingerprint import UNCHECKABLE
    every = read_rows(path)
    rows = select_rows(every, status="ok")  # a skipped row holds no measurement
    current = _current_fingerprints({r["spec"] for r in rows})
    stale, unchecked = Counter(), Counter()
    for row in rows:
        stored, now = row.get("code_fingerprint", ""), current[row["spec"]]
        if UNCHECKABLE in (stored, now) or now is None:
            unchecked[row["spec"]] += 1
        elif stored != now:
            stale[row["spec"]] += 1
    return stale, unchecked, len(every)


def stale_results(results_dir: str, notes: Optional[list] = None) -> List[str]:
    """One line per results file under results_dir (its top level: the files the README and this report cite)
    with rows measured by code other than the working tree's, unless the file waits in pending-remeasurement.json
    (then a line goes to ``notes``); a listed file that is fresh is a problem too (its caveat would be false)."""
    notes = [] if notes is None else notes
    pending = pending_remeasurement(results_dir)
    problems = []
    present = {os.path.basename(p) for p in glob.glob(os.path.join(results_dir, "*.csv"))} | {"asv"}
    for name in sorted(set(pending) - present):  # "asv": the asv history, checked by the committed-results test
        problems.append(f"{os.path.join(results_dir, PENDING_FILE)}: lists {name}, which is not in {results_dir}")
    for path in sorted(glob.glob(os.path.join(results_dir, "*.csv"))):
        try:
            stale, unchecked, total = staleness(path)
        except ValueError:
            continue  # not a results file (quality tables live in their own folder)
        name = os.path.basename(path)
        if unchecked:
            notes.append(f"{path}: {sum(unchecked.values())} rows cannot be checked (head code not readable here): "
                         + ", ".join(sorted(unchecked)))
        if stale and name in pending:
            notes.append(f"{path}: waits for re-measurement ({pending[name]})")
        elif stale:
            specs = ", ".join(f"{spec} ({n})" for spec, n in sorted(stale.items()))
            problems.append(f"{path}: {sum(stale.values())} of {total} rows were measured by code other than the "
                            f"working tree's: {specs}")
        elif name in pending:
            problems.append(f"{path}: listed in {PENDING_FILE} but every row is fresh: remove it from the list")
    return problems


def floor_rows(results_dir: str) -> List[dict]:
    """Every latency row of the results files under results_dir with its floor derived now
    (vqbench.reporting.floors)."""
    from vqbench.reporting.floors import derive_floor_rows
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.csv"))):
        try:
            rows = read_rows(path)
        except ValueError:
            continue
        times = {_floor_key(r): r for r in select_rows(rows, metric="time", status="ok")}
        for floor in derive_floor_rows(rows):
            t = times.get(_floor_key(floor))
            if t is None:
                continue
            ratio = float(t["value"]) / float(floor["value"]) if float(floor["value"]) > 0 else math.nan
            out.append({"file": os.path.basename(path), **{k: t.get(k, "") for k in FLOOR_COLUMNS[1:9]},
                        "time": t["value"], "floor": floor["value"], "ratio": f"{ratio:.4g}",
                        "floor_source": floor["floor_source"], "cpu_model": t.get("cpu_model", ""),
                        "git_commit": t.get("git_commit", "")})
    return out


FLOOR_COLUMNS = ("file", "spec", "op", "V", "d", "N", "device", "dtype", "cpu_allocator", "time", "floor", "ratio",
                 "floor_source", "cpu_model", "git_commit")


def _floor_key(row):
    return tuple(row.get(k, "") for k in ("spec", "op", "V", "d", "N", "device", "dtype", "cpu_allocator"))


def write_floors(results_dir: str, out) -> None:
    writer = csv.DictWriter(out, fieldnames=list(FLOOR_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(floor_rows(results_dir))


PNG_LIMIT = 64 << 20      # a figure is a few hundred KiB; more is not one of ours
SOURCE_LIMIT = 4 << 30    # the largest source file --check hashes


def _read_regular(path: str, limit: int) -> bytes:
    """The bytes of path, a regular file of at most limit bytes; ValueError otherwise (a FIFO or device is
    never read: opened without blocking, checked before reading)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise ValueError(f"cannot open it ({error.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, more than the {limit} this check reads")
        return f.read(limit + 1)


def png_text(path: str) -> dict:
    """The uncompressed text chunks (tEXt, iTXt) of a PNG file: {keyword: text}; ValueError (one line) when
    path is not a readable PNG of at most PNG_LIMIT bytes or a text chunk is not valid text."""
    data = _read_regular(path, PNG_LIMIT)
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    found, at = {}, 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunk = data[at + 8:at + 8 + length]
        at += 12 + length  # length, type, data, CRC
        try:
            if kind == b"tEXt":
                key, _, text = chunk.partition(b"\0")
                found[key.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = chunk.partition(b"\0")
                if rest[:1] == b"\0":  # not compressed: flags, method, language\0, translated keyword\0, text
                    found[key.decode("latin-1")] = rest[2:].split(b"\0", 2)[-1].decode("utf-8")
            elif kind == b"IEND":
                break
        except UnicodeDecodeError:
            raise ValueError(f"its {kind.decode('latin-1')} text is not UTF-8") from None
    return found


FIGURES = ("*.png", "figures/*.png", "quality/*.png")  # the figures README and REPORT show (not archived ones)


def stale_figures(results_dir: str) -> List[str]:
    """One line per figure under results_dir drawn from files that have changed since (or that records no
    sources, or cannot be read): `python -m vqbench.plot` and `quality table` write each source's sha256 into
    the PNG. A recorded source is read only when it is a regular file inside results_dir."""
    from vqbench.plot import SOURCE_KEY
    problems = []
    cited = [p for pattern in FIGURES for p in glob.glob(os.path.join(results_dir, pattern))]
    for path in sorted(cited):
        try:
            note = png_text(path).get(SOURCE_KEY)
        except ValueError as error:
            problems.append(f"{path}: not a readable figure ({error}); draw it again")
            continue
        if not note:
            problems.append(f"{path}: records no source files (drawn by an older vqbench.plot); draw it again")
            continue
        for part in note.split("; "):
            rel, _, digest = part.rpartition(" sha256=")
            problem = _source_problem(results_dir, os.path.dirname(path), rel, digest)
            if problem:
                problems.append(f"{path}: {problem}")
    return problems


def _source_problem(results_dir: str, figure_dir: str, rel: str, digest: str) -> str:
    """'' when the figure's recorded source rel still has this digest, else why the figure is stale."""
    source = os.path.normpath(os.path.join(figure_dir, rel))
    root = os.path.realpath(results_dir)
    if os.path.commonpath([os.path.realpath(source), root]) != root:
        return f"its recorded source {rel[:200]!r} lies outside {results_dir} (not read); draw it again"
    if not os.path.exists(source):
        return f"its source {source} is gone"
    try:
        data = _read_regular(source, SOURCE_LIMIT)
    except ValueError as error:
        return f"its source {source} cannot be checked ({error}); draw it again"
    if hashlib.sha256(data).hexdigest() != digest:
        return f"{source} has changed since it was drawn; draw it again"
    return ""


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
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that the Methods section describes the heads it registers "
                        "(repeatable)")
    p.add_argument("--vq-spec", default="vq:K=1024", help="the headline's VQ head for the claims table")
    p.add_argument("--paper-variant", default="vq-K1024", help="quality variant of the paper's form of VQ-Logits")
    p.add_argument("--sweep-d", type=int, default=1024, help="d of the sweep's speed-up tables (default 1024)")
    p.add_argument("--sweep-n", type=int, default=2048, help="N of the sweep's speed-up tables (default 2048)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1, naming each file, when a results file holds rows measured by "
                        "code other than the working tree's (vqbench.measuring.fingerprint) and not listed in "
                        "results/pending-remeasurement.json, a figure was drawn from files "
                        "that have changed since, or REPORT.md differs from one built from today's results")
    p.add_argument("--floors", action="store_true",
                   help="write nothing; print as CSV every latency row of the results files with its floor derived "
                        "now from the row's counts and ceilings, and time / floor")
    args = p.parse_args(argv)
    try:
        import_modules(args.imports)
    except ValueError as error:
        p.error(str(error))
    if not os.path.isdir(args.results):
        p.error(f"--results: no folder {args.results}")
    settings = dict(paper=args.paper_variant, vq_spec=args.vq_spec, sweep_d=args.sweep_d, sweep_n=args.sweep_n)
    if args.floors:
        try:
            write_floors(args.results, sys.stdout)
        except BrokenPipeError:  # a reader such as `head` that stops early: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.check:
        notes = []
        problems = (stale_results(args.results, notes) + stale_figures(args.results)
                    + stale_report(args.results, **settings))
        for line in notes + problems:
            print(line, file=sys.stderr)
        print("stale results: measure them again" if problems else "every results file describes the working tree")
        return 1 if problems else 0
    report = build_report(args.results, **settings)
    try:
        with open(os.path.join(args.results, "REPORT.md"), "w") as f:
            f.write(report)
        with open(os.path.join(args.results, "REFERENCES.bib"), "w") as f:
            with open(BIBTEX_PATH) as source:
                f.write(source.read())
    except OSError as error:
        p.error(f"--results: cannot write {error.filename} ({error.strerror})")
    print(os.path.join(args.results, "REPORT.md"))
    print(os.path.join(args.results, "REFERENCES.bib"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
