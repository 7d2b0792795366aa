"""python -m vqbench.quality: the WikiText-2 quality runs, their table and the paper-claims table.

    python -m vqbench.quality plan                 # every command, in order
    python -m vqbench.quality run [--phase joint]  # run what is missing (phases: joint, frozen, best)
    python -m vqbench.quality table                # results/quality/quality.{md,csv}

joint: the five heads trained with the same LSTM body from scratch. frozen: the VQ-Logits ablations,
each a head trained on the hidden states of the trained softmax model. best: the two VQ variants with
the lowest frozen validation perplexity, trained again under joint. Runs whose summary.json already
has the full budget are skipped; an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from tabulate import tabulate

QUALITY_DIR = os.path.join("results", "quality")
RUNS_DIR = os.path.join(QUALITY_DIR, "runs")
STEPS = 4000
COMMON = ("--steps", str(STEPS), "--threads", "1")
SOFTMAX_CHECKPOINT = os.path.join(RUNS_DIR, "joint-softmax", "checkpoint.pt")
BODY = ("--body-from", SOFTMAX_CHECKPOINT)
KMEANS = ("--embeddings-from", SOFTMAX_CHECKPOINT)  # k-means over the trained softmax's output weights
REASSIGN = ("--reassign-every", "500")


@dataclass(frozen=True)
class QualityRun:
    name: str
    head: str
    protocol: str
    flags: Tuple[str, ...] = ()
    varies: str = ""

    @property
    def out(self) -> str:
        return os.path.join(RUNS_DIR, self.name)

    def command(self) -> List[str]:
        return ["python", "-m", "vqbench.train", "--head", self.head, "--protocol", self.protocol,
                *COMMON, *self.flags, "--out", self.out, "--resume"]


JOINT = [
    QualityRun("joint-softmax", "softmax", "joint", varies="reference"),
    QualityRun("joint-adaptive", "adaptive", "joint"),
    QualityRun("joint-hierarchical", "hierarchical", "joint", varies="two-level, frequency-binned classes"),
    QualityRun("joint-huffman", "hierarchical:tree=huffman", "joint", varies="binary Huffman tree"),
    QualityRun("joint-lowrank", "lowrank", "joint"),
    QualityRun("joint-vq-K1024", "vq:K=1024", "joint", varies="the paper's formulation, frequency mapping"),
]

FROZEN = [
    QualityRun("frozen-vq-K256", "vq:K=256", "frozen", BODY, "K"),
    QualityRun("frozen-vq-K1024", "vq:K=1024", "frozen", BODY, "K (and mapping: frequency)"),
    QualityRun("frozen-vq-K4096", "vq:K=4096", "frozen", BODY, "K"),
    QualityRun("frozen-vq-K1024-random", "vq:K=1024,mapping=random", "frozen", BODY, "mapping"),
    QualityRun("frozen-vq-K1024-contiguous", "vq:K=1024,mapping=contiguous", "frozen", BODY, "mapping"),
    QualityRun("frozen-vq-K1024-kmeans", "vq:K=1024,mapping=kmeans", "frozen", BODY + KMEANS,
               "mapping; codebook from the k-means centroids"),
    QualityRun("frozen-vq-K1024-kmeans-scratch", "vq:K=1024,mapping=kmeans,codebook_init=random", "frozen",
               BODY + KMEANS, "codebook from scratch"),
    QualityRun("frozen-vq-K1024-learned", "vq:K=1024", "frozen", BODY + REASSIGN,
               "learned mapping from frequency init"),
    QualityRun("frozen-vq-K1024-kmeans-learned", "vq:K=1024,mapping=kmeans", "frozen", BODY + KMEANS + REASSIGN,
               "learned mapping from k-means init"),
    QualityRun("frozen-vq-K1024-bias", "vq:K=1024,bias=1", "frozen", BODY, "bias=1"),
]


def summary(run: QualityRun):
    path = os.path.join(run.out, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def finished(run: QualityRun) -> bool:
    done = summary(run)
    return done is not None and done["config"]["steps"] == STEPS


def best_joint(n: int = 2) -> List[QualityRun]:
    """The n frozen VQ variants with the lowest validation perplexity, as joint runs (needs the frozen runs)."""
    done = [(summary(r)["valid_ppl"], r) for r in FROZEN if finished(r)]
    if len(done) < len(FROZEN):
        raise RuntimeError(f"best: {len(FROZEN) - len(done)} frozen runs unfinished; run --phase frozen first")
    chosen = [r for _, r in sorted(done, key=lambda pair: pair[0])[:n]]
    return [QualityRun(r.name.replace("frozen-", "joint-", 1), r.head, "joint",
                       tuple(f for f in _drop_body(r.flags)), r.varies + " (best under frozen)") for r in chosen]


def _drop_body(flags: Sequence[str]):
    skip = False
    for f in flags:
        if skip:
            skip = False
            continue
        if f == "--body-from":
            skip = True
            continue
        yield f


def phase_runs(phase: str) -> List[QualityRun]:
    return {"joint": lambda: JOINT, "frozen": lambda: FROZEN, "best": best_joint}[phase]()


def run_all(runs: List[QualityRun], lanes: int) -> None:
    """Run the unfinished runs on ``lanes`` single-threaded lanes (pinned to one core each with taskset)."""
    todo = [r for r in runs if not finished(r)]
    pin = lanes > 1 and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= lanes
    queue, failures, lock = list(todo), [], threading.Lock()

    def lane(index):
        while True:
            with lock:
                if not queue:
                    return
                run = queue.pop(0)
            if finished(run):  # another runner may have finished it meanwhile
                continue
            command = (["taskset", "-c", str(index)] if pin else []) + run.command()
            print(" ".join(command), flush=True)
            os.makedirs(run.out, exist_ok=True)
            with open(os.path.join(run.out, "stdout.log"), "a") as log:
                if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode:
                    failures.append(run.name)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"runs failed (see their stdout.log): {', '.join(failures)}")


def all_runs() -> List[QualityRun]:
    runs = JOINT + FROZEN
    try:
        runs += [r for r in best_joint() if r.name not in {j.name for j in JOINT}]
    except RuntimeError:
        pass
    return runs


COLUMNS = ["run", "head", "protocol", "flags", "output_params", "valid_ppl", "test_ppl", "test_ppl_ratio",
           "within_code_ppl_factor", "tokens_per_s", "steps", "varies"]


def table_rows() -> List[dict]:
    reference = summary(JOINT[0])
    rows = []
    for run in all_runs():
        done = summary(run)
        if done is None:
            continue
        flags = " ".join(f for f in _drop_body(run.flags))
        rows.append({"run": run.name, "head": run.head, "protocol": run.protocol, "flags": flags,
                     "output_params": done["output_params"], "valid_ppl": done["valid_ppl"],
                     "test_ppl": done["test_ppl"],
                     "test_ppl_ratio": done["test_ppl"] / reference["test_ppl"] if reference else float("nan"),
                     "within_code_ppl_factor": done.get("within_code_ppl_factor", ""),
                     "tokens_per_s": done["tokens_per_s"], "steps": done["config"]["steps"],
                     "varies": run.varies})
    return rows


def write_table() -> str:
    rows = table_rows()
    if not rows:
        raise RuntimeError(f"table: no finished runs under {RUNS_DIR}; run `python -m vqbench.quality run` first")
    with open(os.path.join(QUALITY_DIR, "quality.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    shown = [{**r, "output_params": f"{r['output_params']:,}", "valid_ppl": f"{r['valid_ppl']:.1f}",
              "test_ppl": f"{r['test_ppl']:.1f}", "test_ppl_ratio": f"{r['test_ppl_ratio']:.3f}",
              "within_code_ppl_factor": f"{r['within_code_ppl_factor']:.2f}" if r["within_code_ppl_factor"] != "" else "",
              "tokens_per_s": f"{r['tokens_per_s']:,.0f}"} for r in rows]
    headers = ["run", "head", "protocol", "flags", "output params", "valid ppl", "test ppl", "test ppl / softmax",
               "within-code factor", "tokens/s", "steps", "varies"]
    body = tabulate([[r[c] for c in COLUMNS] for r in shown], headers=headers, tablefmt="github",
                    disable_numparse=True)
    commands = "\n".join(" ".join(r.command()) for r in all_runs())
    text = QUALITY_README.format(table=body, commands=commands, steps=STEPS)
    path = os.path.join(QUALITY_DIR, "quality.md")
    with open(path, "w") as f:
        f.write(text)
    plot_pareto(rows, os.path.join(QUALITY_DIR, "pareto.png"))
    return path


def plot_pareto(rows: List[dict], path: str) -> None:
    """Test perplexity against output-layer parameters, one point per run (joint filled, frozen hollow)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for r in rows:
        joint = r["protocol"] == "joint"
        colour = "#d62728" if r["head"].startswith("vq") else "#1f77b4"
        ax.scatter(r["output_params"], r["test_ppl"], s=36, color=colour if joint else "white",
                   edgecolors=colour, zorder=3)
        ax.annotate(r["run"], (r["output_params"], r["test_ppl"]), fontsize=6, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output-layer parameters")
    ax.set_ylabel("WikiText-2 test perplexity")
    ax.set_title("Quality vs size of the output layer (filled: joint, hollow: frozen body; red: VQ-Logits)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


QUALITY_README = """# Quality: WikiText-2 perplexity with each output layer

Regenerate: `python -m vqbench.quality run && python -m vqbench.quality table` (the runs take about two hours
on 2 CPU cores; each command below can also be run alone). Every run: a 2-layer LSTM body (d=256, dropout
0.2), Adam lr 2e-3, gradient clip 0.25, BPTT 35, batch 20 streams, {steps} steps, seed 0, one thread
(two runs side by side, one per core, so tokens/s are indicative; head speed is measured by
`python -m vqbench.compare`). Perplexities use each head's exact, normalised `target_log_prob` on the full
validation and test splits. `joint`: body and head trained together from scratch. `frozen`: the head alone,
trained for {steps} steps of 2048 positions drawn from the hidden states of the trained `joint-softmax`
body; its ratio is to the same softmax model's test perplexity. A frozen head sees 8.2M positions, 2.9x
the 2.8M of a joint run, and trains on dropout-free hidden states, so frozen ratios flatter the head:
compare frozen runs with each other, and read the paper's claim from the joint rows. A run extended
with `--resume` (the budget grew from 3000 to 4000 steps once the softmax model had not yet reached
validation perplexity 250) continues exactly; its tokens/s cover the last segment only.
`--reassign-every 500` is the learned
mapping of `vqbench/reassign.py`. "within-code factor" is exp(mean log n) over test targets, n the number
of tokens sharing the target's code: VQ-Logits perplexity is exactly (perplexity over codes) x this factor.

{table}

Commands (in order; the best two frozen variants are re-run under joint):

```
{commands}
```
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["plan", "run", "table"])
    p.add_argument("--phase", choices=["joint", "frozen", "best"], action="append",
                   help="phase(s) to run (default: all, in order)")
    p.add_argument("--lanes", type=int, default=2, help="runs at once, one core each (default 2)")
    p.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs of the phases (by name)")
    args = p.parse_args(argv)
    if args.lanes < 1:
        p.error("--lanes: must be >= 1")
    phases = args.phase or ["joint", "frozen", "best"]
    if args.action == "plan":
        for phase in phases:
            try:
                runs = phase_runs(phase)
            except RuntimeError as error:
                print(f"# {phase}: {error}")
                continue
            for run in runs:
                print(("# done: " if finished(run) else "") + " ".join(run.command()))
    elif args.action == "run":
        for phase in phases:
            runs = phase_runs(phase)
            if args.only:
                runs = [r for r in runs if r.name in args.only]
            run_all(runs, args.lanes)
    else:
        print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
