"""python -m vqbench.report: results/REPORT.md and results/REFERENCES.bib from stored results.

Reads only files under --results (default results/): headline.csv, cpu-sweep.csv, any
cuda-*.csv, quality/*.csv and figures/*.png. Measures nothing.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import sys
from collections import Counter

from vqbench.quality import _pm, aggregate, markdown_table, typed_quality_row
from vqbench.sweep import read_rows
from vqbench.tables import build_tables, render

METHODS = [
    ("softmax", "Full softmax",
     "The baseline: logits h W^T over all V tokens, normalised by a softmax. `softmax:chunk=C` computes the "
     "same loss and gradients over chunks of C tokens without holding the N x V logits, the idea of Cut "
     "Cross-Entropy [wijmans2025cut] and Liger's fused linear cross-entropy [hsu2024liger].",
     ["wijmans2025cut", "hsu2024liger"]),
    ("adaptive", "Adaptive softmax",
     "Frequent tokens in a head softmax, rare tokens in tail clusters reached through the head, each cluster "
     "with a smaller projection [grave2017efficient]; run through torch.nn.AdaptiveLogSoftmaxWithLoss.",
     ["grave2017efficient"]),
    ("hierarchical", "Hierarchical softmax",
     "Two-level class-based softmax p(w|h) = p(c(w)|h) p(w|c(w),h) with frequency-binned classes "
     "[mikolov2011extensions], and a binary tree over Huffman codes [morin2005hierarchical, mikolov2013distributed, "
     "joulin2017bag], whose loss follows each target's path.",
     ["mikolov2011extensions", "morin2005hierarchical", "mikolov2013distributed", "joulin2017bag"]),
    ("lowrank", "Low-rank factorisation",
     "The V x d output matrix factorised through a rank-r bottleneck, Linear(d, r) then Linear(r, V) "
     "[sainath2013lowrank].", ["sainath2013lowrank"]),
    ("vq", "VQ-Logits",
     "A K x d codebook and a fixed map from each token to one code; codebook logits h C^T are scattered to the "
     "V tokens [shao2025vqlogits]. Tokens sharing a code share a logit, so within a code the distribution is "
     "uniform. vqbench's `collapsed` loss path uses this to compute the exact loss in O(N K d).",
     ["shao2025vqlogits"]),
]

BIBTEX = r"""@article{shao2025vqlogits,
  title   = {{VQ-Logits}: Compressing the Output Bottleneck of Large Language Models via Vector Quantized Logits},
  author  = {Shao, Jintian and Huang, Hongyi and Wu, Jiayi and Cheng, YiMing and Wu, ZhiYu and Shan, You and Zheng, MingKai},
  journal = {arXiv preprint arXiv:2505.10202},
  year    = {2025}
}

@inproceedings{grave2017efficient,
  title     = {Efficient softmax approximation for {GPUs}},
  author    = {Grave, Edouard and Joulin, Armand and Ciss{\'e}, Moustapha and Grangier, David and J{\'e}gou, Herv{\'e}},
  booktitle = {Proceedings of the 34th International Conference on Machine Learning (ICML)},
  year      = {2017},
  note      = {arXiv:1609.04309}
}

@inproceedings{mikolov2011extensions,
  title     = {Extensions of recurrent neural network language model},
  author    = {Mikolov, Tom{\'a}{\v{s}} and Kombrink, Stefan and Burget, Luk{\'a}{\v{s}} and {\v{C}}ernock{\'y}, Jan and Khudanpur, Sanjeev},
  booktitle = {IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  year      = {2011}
}

@inproceedings{morin2005hierarchical,
  title     = {Hierarchical probabilistic neural network language model},
  author    = {Morin, Frederic and Bengio, Yoshua},
  booktitle = {Proceedings of the Tenth International Workshop on Artificial Intelligence and Statistics (AISTATS)},
  year      = {2005}
}

@inproceedings{mikolov2013distributed,
  title     = {Distributed representations of words and phrases and their compositionality},
  author    = {Mikolov, Tomas and Sutskever, Ilya and Chen, Kai and Corrado, Greg and Dean, Jeffrey},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2013}
}

@inproceedings{joulin2017bag,
  title     = {Bag of tricks for efficient text classification},
  author    = {Joulin, Armand and Grave, Edouard and Bojanowski, Piotr and Mikolov, Tomas},
  booktitle = {Proceedings of the 15th Conference of the European Chapter of the Association for Computational Linguistics (EACL)},
  year      = {2017}
}

@inproceedings{sainath2013lowrank,
  title     = {Low-rank matrix factorization for deep neural network training with high-dimensional output targets},
  author    = {Sainath, Tara N. and Kingsbury, Brian and Sindhwani, Vikas and Arisoy, Ebru and Ramabhadran, Bhuvana},
  booktitle = {IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  year      = {2013}
}

@inproceedings{wijmans2025cut,
  title     = {Cut Your Losses in Large-Vocabulary Language Models},
  author    = {Wijmans, Erik and Huval, Brody and Hertzberg, Alexander and Koltun, Vladlen and Kr{\"a}henb{\"u}hl, Philipp},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025},
  note      = {arXiv:2411.09009}
}

@article{hsu2024liger,
  title   = {Liger Kernel: Efficient Triton Kernels for {LLM} Training},
  author  = {Hsu, Pin-Lun and Dai, Yun and Kothapalli, Vignesh and Song, Qingquan and Tang, Shao and Zhu, Siyu and Shimizu, Steven and Sahni, Shivam and Ning, Haowen and Chen, Yanning},
  journal = {arXiv preprint arXiv:2410.10989},
  year    = {2024}
}

@inproceedings{merity2017pointer,
  title     = {Pointer Sentinel Mixture Models},
  author    = {Merity, Stephen and Xiong, Caiming and Bradbury, James and Socher, Richard},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2017},
  note      = {arXiv:1609.07843}
}
"""


def _value(rows, spec, op, metric, **fixed):
    for r in rows:
        if r["status"] == "ok" and r["spec"] == spec and r["op"] == op and r["metric"] == metric \
                and all(str(r[k]) == str(v) for k, v in fixed.items()):
            return float(r["value"])
    return None


def claims_table(headline, sweep, quality, reference="softmax", paper="vq-K1024"):
    """Markdown rows: claim, paper, measured, source."""
    lines = ["| claim | paper | measured by vqbench | source |", "|---|---|---|---|"]
    if headline:
        first = headline[0]
        where = f"V={first['V']}, d={first['d']}, N={first['N']}, {first['device']} {first['dtype']}"
        soft = _value(headline, "softmax", "params", "params")
        vq = _value(headline, "vq:K=1024", "params", "params")
        if soft and vq:
            lines.append(f"| output-layer parameters | up to 99% fewer | {100 * (1 - vq / soft):.1f}% fewer at K=1024 "
                         f"({where}) | results/headline.csv |")
        for op, claim, paper in (("logits", "logit computation", "6x faster"),
                                 ("loss", "training loss (forward)", "n/a"),
                                 ("train", "training step (forward + backward)", "n/a")):
            t_soft = _value(headline, "softmax", op, "time")
            t_vq = _value(headline, "vq:K=1024", op, "time")
            if t_soft and t_vq:
                lines.append(f"| {claim} | {paper} | {t_soft / t_vq:.1f}x faster at K=1024 ({where}) | "
                             f"results/headline.csv |")
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
        lines.append("| perplexity | +4% over softmax | not measured yet: no finished quality runs in "
                     "results/quality/quality.csv | |")
    return "\n".join(lines)


def quality_claims(quality, reference="softmax", paper="vq-K1024"):
    """Sentences for the perplexity claim: the paper's form of VQ-Logits and the best VQ variant, each as its
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
    vq = [v for v in variants.values() if v["head"].startswith("vq") and not math.isnan(v["ratio_mean"])]
    if vq:
        best = min(vq, key=lambda v: v["ratio_mean"])
        if best["name"] != paper:
            out.append("best VQ variant: " + said(best))
    return out


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


def select(rows, **fixed):
    return [r for r in rows if all(str(r[k]) in {str(x) for x in v} for k, v in fixed.items())]


def build_report(results_dir: str, reference: str = "softmax", paper: str = "vq-K1024") -> str:
    def load(name):
        path = os.path.join(results_dir, name)
        return read_rows(path) if os.path.exists(path) else []

    headline, sweep = load("headline.csv"), load("cpu-sweep.csv")
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
    for name, title, text, _ in METHODS:
        parts += [f"**{title}** (`{name}`). {text}", ""]
    parts += ["References: `results/REFERENCES.bib`.", "", "## Paper claims vs measured", "",
              "VQ-Logits [shao2025vqlogits] claims up to 99% fewer output-layer parameters, 6x faster logit "
              "computation and +4% perplexity against full softmax.", "",
              claims_table(headline, sweep, quality, reference, paper), ""]
    if headline:
        parts += ["## Headline configuration", "", "From `results/headline.csv`.", "",
                  render(build_tables(select(headline, metric=["params", "time", "peak_memory"])
                                      + select(headline, status=["skipped"])), "github")]
    if sweep:
        parts += ["## Sweep: speed-ups over full softmax at d=1024, N=2048", "",
                  "From `results/cpu-sweep.csv`; the full tables are in `results/cpu-sweep.md`.", ""]
        chosen = select(sweep, d=[1024], N=[2048], metric=["time"], op=["logits", "loss", "train"])
        parts += [render([t for t in build_tables(chosen) if t["key"][-1] == "ratio"], "github")]
        parts += ["## Skipped configurations", "", skip_summary(sweep), ""]
    if quality:
        parts += ["## Quality on WikiText-2", "",
                  "From `results/quality/quality.csv` (`python -m vqbench.quality table`; protocol, commands and "
                  "every run in `results/quality/quality.md`). Ratios pair runs of the same seed.", "",
                  markdown_table(aggregate(quality, reference)), "",
                  "![quality vs parameters](quality/pareto.png)", ""]
    figures = sorted(glob.glob(os.path.join(results_dir, "figures", "*.png")))
    if figures:
        parts += ["## Figures", "", "From `python -m vqbench.plot`.", ""]
        parts += [f"![{os.path.basename(f)}]({os.path.relpath(f, results_dir)})" for f in figures]
        parts.append("")
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results folder (default results/)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results):
        p.error(f"--results: no folder {args.results}")
    report = build_report(args.results)
    with open(os.path.join(args.results, "REPORT.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.results, "REFERENCES.bib"), "w") as f:
        f.write(BIBTEX)
    print(os.path.join(args.results, "REPORT.md"))
    print(os.path.join(args.results, "REFERENCES.bib"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
