"""Quality rows as statistics: typed rows, seed-paired ratios to the reference with their spread and 95%
t-intervals, the setting a row was measured in, and the markdown table of the variants. No torch; read by the
quality tables, the oracle's table and the report."""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Tuple

from tabulate import tabulate

LSTM_TRACK = ("lstm", "word-33278")  # the body and vocabulary of runs whose summary predates the columns
TIED_GROUP = "tied"  # a plan's group of softmax runs whose output weight is the input embedding
REFERENCE_LONG_GROUP = "reference-long"  # the reference trained longer: the reference perplexity of its setting


def describe_body(body: str) -> str:
    """'lstm' -> '2-layer LSTM'; 'gpt-4x256' -> '4-layer GPT, d=256' (the quality.csv body column in words)."""
    if body == "lstm":
        return "2-layer LSTM"
    kind, _, size = body.partition("-")
    layers, _, width = size.partition("x")
    if kind == "gpt" and layers.isdigit() and width.isdigit():
        return f"{layers}-layer GPT, d={width}"
    return body


def describe_vocabulary(vocabulary: str) -> str:
    """'word-33278' -> 'word-level WikiText-2 V=33,278'; 'cl100k_base-100277' -> 'cl100k_base WikiText-2
    V=100,277' (the quality.csv vocabulary column in words)."""
    name, _, size = vocabulary.rpartition("-")
    if not size.isdigit():
        return vocabulary
    return f"{'word-level' if name == 'word' else name} WikiText-2 V={int(size):,}"


def setting(row: dict) -> str:
    """The setting a quality row or variant was measured in: body, vocabulary and corpus, and the schedule
    where its plan names one (a plan's usual budget names none)."""
    body, vocabulary = row.get("body") or LSTM_TRACK[0], row.get("vocabulary") or LSTM_TRACK[1]
    schedule = row.get("schedule") or ""
    return f"{describe_body(body)}, {describe_vocabulary(vocabulary)}" + (f", {schedule}" if schedule else "")


def typed_quality_row(row: dict) -> dict:
    """A quality.csv row (strings) with its numbers as numbers."""
    out = dict(row)
    for key in ("seed", "epochs", "best_epoch", "output_params"):
        out[key] = int(row[key])
    for key in ("valid_ppl", "test_ppl", "last_epoch_gain", "tokens_per_s"):
        out[key] = float(row[key])
    out.setdefault("varies", "")
    out.setdefault("mapping", "")
    out["body"] = row.get("body") or LSTM_TRACK[0]  # a quality.csv written before the columns: the LSTM's
    out["vocabulary"] = row.get("vocabulary") or LSTM_TRACK[1]
    return out


def mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 <= p < 1) of Student's t with df >= 1 degrees of freedom: bisection on its CDF,
    integrated with Simpson's rule over the substitution t = tan(u), which keeps the heavy tail finite."""
    if not (0.5 <= p < 1) or df < 1:
        raise ValueError(f"p, df: need 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def mass(upper: float) -> float:  # P(0 < T < tan(upper))
        steps, width = 400, upper / 400
        total = 0.0
        for i in range(steps + 1):
            u = i * width
            t = math.tan(u)
            f = math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df)) / math.cos(u) ** 2
            total += f * (1 if i in (0, steps) else 4 if i % 2 else 2)
        return total * width / 3

    lo, hi = 0.0, math.pi / 2 * (1 - 1e-9)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < p - 0.5 else (lo, mid)
    return math.tan((lo + hi) / 2)


def t_interval(values: List[float], level: float = 0.95) -> Tuple[float, float]:
    """The two-sided ``level`` Student-t confidence interval of the mean of ``values`` (nan, nan for fewer
    than two): the spread of a few seeds says little on its own, the interval says what it allows."""
    if len(values) < 2:
        return math.nan, math.nan
    mean, std = mean_std(values)
    half = t_quantile(0.5 + level / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean - half, mean + half


def aggregate(rows: List[dict], reference: str) -> List[dict]:
    """Per variant of each setting (body, vocabulary, schedule): test/valid perplexity mean and std over seeds,
    and the ratio to the setting's own reference paired by seed (the same seed gives both the same
    initialisation of the body, dropout stream and data order); settings in first-seen order."""
    by_setting: Dict[str, Dict[str, List[dict]]] = {}
    for r in rows:
        by_setting.setdefault(setting(r), {}).setdefault(r["name"], []).append(r)
    summary = []
    for by_names in by_setting.values():
        tied = [r for rs in by_names.values() for r in rs if r["group"] == TIED_GROUP]
        summary += [variant_summary(name, group, by_names.get(reference, []), tied)
                    for name, group in by_names.items()]
    return summary


def paired_ratios(group: List[dict], reference_rows: List[dict]) -> dict:
    """Test-perplexity ratios of ``group`` to ``reference_rows`` paired by seed: {"seed_ratios", "ratio_mean",
    "ratio_std", "ratio_seeds", "ratio_low", "ratio_high"} (nan where no seed pairs)."""
    ref = {r["seed"]: r for r in reference_rows}
    seed_ratios = {r["seed"]: r["test_ppl"] / ref[r["seed"]]["test_ppl"] for r in group if r["seed"] in ref}
    ratios = list(seed_ratios.values())
    ratio_mean, ratio_std = mean_std(ratios) if ratios else (math.nan, math.nan)
    ratio_low, ratio_high = t_interval(ratios)
    return {"seed_ratios": seed_ratios, "ratio_mean": ratio_mean, "ratio_std": ratio_std,
            "ratio_seeds": len(ratios), "ratio_low": ratio_low, "ratio_high": ratio_high}


def variant_summary(name: str, group: List[dict], reference_rows: List[dict], tied_rows=()) -> dict:
    """One variant's rows [seeds] against its setting's reference rows (and its tied softmax's rows, where
    the setting has one: the baseline whose output layer costs no parameters of its own): aggregate's row."""
    ref = {r["seed"]: r for r in reference_rows}
    ref_params = next(iter(ref.values()))["output_params"] if ref else None
    ratio = paired_ratios(group, reference_rows)
    tied = {f"tied_{key}": value for key, value in paired_ratios(group, list(tied_rows)).items()}
    test_mean, test_std = mean_std([r["test_ppl"] for r in group])
    valid_mean, valid_std = mean_std([r["valid_ppl"] for r in group])
    params = group[0]["output_params"]
    return {**ratio, **tied, "name": name, "head": group[0]["head"], "mapping": group[0].get("mapping", ""),
            "setting": setting(group[0]), "body": group[0].get("body") or LSTM_TRACK[0],
            "vocabulary": group[0].get("vocabulary") or LSTM_TRACK[1], "schedule": group[0].get("schedule") or "",
            "group": group[0]["group"], "seeds": len(group),
            "test_mean": test_mean, "test_std": test_std, "valid_mean": valid_mean, "valid_std": valid_std,
            "output_params": params, "fewer_params": 1 - params / ref_params if ref_params else math.nan,
            "epochs": "/".join(str(r["epochs"]) for r in group),
            "last_epoch_gain": max(r["last_epoch_gain"] for r in group), "varies": group[0]["varies"]}


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def ratio_cell(variant: dict, prefix: str = "") -> str:
    """'1.059 ± 0.021 (95% CI 1.005-1.112)' over seeds, '1.059 (single seed)' for one, '' for none;
    prefix "tied_" for the ratio to the tied softmax."""
    mean, std, seeds = (variant.get(prefix + key, math.nan) for key in ("ratio_mean", "ratio_std", "ratio_seeds"))
    if math.isnan(mean):
        return ""
    if seeds < 2:
        return f"{mean:.3f} (single seed)"
    return f"{_pm(mean, std, 3)} (95% CI {variant[prefix + 'ratio_low']:.3f}-{variant[prefix + 'ratio_high']:.3f})"


def markdown_table(summary: List[dict]) -> str:
    headers = ["body, vocabulary", "variant", "head", "mapping", "seeds", "test ppl", "valid ppl",
               "test ppl / softmax", "test ppl / tied softmax", "output params", "fewer params", "epochs", "max last-epoch gain", "varies"]
    body = [[f"{s['body']}, {s['vocabulary']}" + (f", {s['schedule']}" if s["schedule"] else ""), s["name"], s["head"], s["mapping"],
             s["seeds"] if s["seeds"] > 1 else "1 (single seed)",
             _pm(s["test_mean"], s["test_std"], 1), _pm(s["valid_mean"], s["valid_std"], 1),
             ratio_cell(s), ratio_cell(s, "tied_"), f"{s['output_params']:,}",
             "" if math.isnan(s["fewer_params"]) else f"{100 * s['fewer_params']:.1f}%", s["epochs"],
             f"{100 * s['last_epoch_gain']:.2f}%", s["varies"]] for s in summary]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
