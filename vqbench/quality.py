"""python -m vqbench.quality: the WikiText-2 quality runs of a plan file, and their tables.

    python -m vqbench.quality plan                  # every command of configs/quality.json, in order
    python -m vqbench.quality run --checkpoints DIR # run or resume what is unfinished, two lanes
    python -m vqbench.quality table                 # results/quality/quality.{csv,md}, pareto.png, oracle.md
    python -m vqbench.quality run --executor slurm  # each run a submitit job (vqbench.measuring.shards, README)

The plan (``--plan``, default configs/quality.json) lists head variants, each with its seeds and a
group, and the epoch budget of every run; every run uses vqbench.train's schedule. A run is finished
when its summary.json says the schedule ended it: the plateau rule, or the plan's epoch budget (a run
that stopped at a smaller budget resumes: the budget only ends a run, it never changes one before its
end). An unfinished run resumes from its checkpoint. Checkpoints go to
``--checkpoints`` (default $VQBENCH_CHECKPOINTS, else beside the runs), since they are too large to
commit: run folders keep log.jsonl and summary.json.

A plan may hold a learning-rate sweep (``lr_sweep``: rates, an epoch budget and flags such as a shorter
``--train-tokens``): every variant whose flags set no ``--lr`` then first trains seed 0 once per rate under
the sweep's budget, and all its seeds train at the rate with the lowest validation perplexity; the same
sweep for every variant, chosen on validation, never on test (lr-sweep.csv, and a table in quality.md).

A plan may test the oracle's premise (``premise``: {"variants": [VQ variant names]}): each named variant's head,
flags and rate trained on the frozen body of each reference (softmax) seed once that seed's run has finished
(``--protocol frozen --body-from CHECKPOINTS/<reference run>/best.pt``, the plan's budget; a run waits while
the body's best.pt is not there); ``"bodies": [softmax variant names]`` puts the heads on those variants'
bodies instead (runs named VARIANT-on-BODY, except on the reference's). Those runs are no quality.csv rows:
premise.csv sets each beside the oracle's estimate from the same softmax model (oracle.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from tabulate import tabulate

from vqbench.measuring import shards
from vqbench.results import path_component_problem
from vqbench.train import TrainConfig, log_records
from vqbench.reporting.quality_stats import (LSTM_TRACK, REFERENCE_LONG_GROUP, _pm, aggregate, describe_body,
                                             describe_vocabulary, markdown_table, mean_std, ratio_cell, setting, t_interval,
                                             t_quantile, typed_quality_row, variant_summary)

DEFAULT_PLAN = os.path.join("configs", "quality.json")
TRANSFORMER_PLAN = os.path.join("configs", "quality-transformer.json")
# the transformer track's main variants trained to the validation plateau (the verdict on the paper's +4% needs it)
PLATEAU_PLAN = os.path.join("configs", "quality-transformer-plateau.json")
# each track's softmax trained again with VQ heads on its frozen bodies, for the estimate's premise
PREMISE_PLANS = (os.path.join("configs", "premise-lstm.json"), os.path.join("configs", "premise-transformer.json"))
DEFAULT_RESULTS = os.path.join("results", "quality")
SWEEP_GROUP = "lr-sweep"  # the group of a plan's learning-rate sweep runs: never a row of quality.csv
PREMISE_GROUP = "premise"  # the group of a plan's frozen-body runs (the oracle's premise): never a quality.csv row
PREMISE_COLUMNS = ["track", "body", "vocabulary", "schedule", "name", "head", "mapping", "K", "seed", "run", "body_run",
                   "epochs", "best_epoch", "stop", "valid_ppl", "test_ppl", "reference_test_ppl", "tokens_per_s",
                   "device", "cpu_model", "cpu_id", "git_commit"]
SWEEP_COLUMNS = ["track", "name", "head", "lr", "valid_ppl", "chosen", "epochs", "train_tokens", "tokens_per_s",
                 "run", "device", "cpu_model", "git_commit"]
CSV_COLUMNS = ["run", "name", "head", "mapping", "body", "vocabulary", "schedule", "protocol", "seed", "group", "epochs",
               "best_epoch", "stop", "valid_ppl", "test_ppl", "last_epoch_gain", "output_params", "total_params",
               "shared_params", "within_code_ppl_factor", "tokens_per_s", "output_share", "threads", "precision",
               "autocast", "device", "cpu_model", "cpu_id", "git_commit", "varies"]


@dataclass(frozen=True)
class PlannedRun:
    name: str
    head: str
    protocol: str
    seed: int
    group: str
    flags: Tuple[str, ...]
    varies: str
    epochs: int
    track: str = ""
    variant: str = ""  # the plan entry's name: a sweep run's variant is the one it chooses a rate for
    body_run: str = ""  # a frozen run's trained body: the (softmax) run folder whose best.pt it loads

    def wanted(self, only) -> bool:
        """True when ``only`` (run folders or variant names; empty: all) selects this run."""
        return not only or self.run in only or self.name in only or self.variant in only

    @property
    def run(self) -> str:
        """The run's folder name: protocol, the plan's track (when it names one), variant and seed."""
        return f"{self.protocol}-{self.track + '-' if self.track else ''}{self.name}-s{self.seed}"

    def body_checkpoint(self, checkpoints: str) -> str:
        """The best.pt a frozen run loads its body from ('' for a run that trains its own)."""
        return os.path.join(checkpoints, self.body_run, "best.pt") if self.body_run else ""

    def command(self, runs_dir: str, checkpoints: str, common: Tuple[str, ...]) -> List[str]:
        body = ("--body-from", self.body_checkpoint(checkpoints)) if self.body_run else ()
        return ["python", "-m", "vqbench.train", "--head", self.head, "--protocol", self.protocol,
                "--seed", str(self.seed), "--epochs", str(self.epochs), *common, *self.flags, *body,
                "--out", os.path.join(runs_dir, self.run),
                "--checkpoint-dir", os.path.join(checkpoints, self.run), "--resume"]

    def startable(self, checkpoints: str) -> bool:
        """False while a frozen run's body checkpoint is missing (kept outside git: another machine may lack it)."""
        return not self.body_run or os.path.exists(self.body_checkpoint(checkpoints))


class Plan:
    """The plan file: variants (name, head, group, seeds, flags, varies), the epoch budget, the variants
    whose seeds all run first (the longest runs, so that the lanes finish together) and the best-seeds rule."""

    def __init__(self, path: str):
        try:
            with open(path) as f:
                data = json.load(f)
            self.protocol = data.get("protocol", "joint")
            self.track = str(data.get("track", ""))  # prefixes run folders: tracks share one runs folder
            self.description = str(data.get("description", ""))
            # a phrase naming the schedule where it differs from the track's usual budget ("to the validation
            # plateau"): part of every row's setting, so that its runs pair only with their own reference
            self.schedule = str(data.get("schedule", ""))
            self.common = tuple(data.get("common_flags", ()))
            self.epochs = data.get("epochs", TrainConfig.epochs)
            self.first = tuple(data.get("first", ()))
            self.best_seeds = tuple(data.get("best_seeds", {}).get("seeds", ()))
            self.best_groups = tuple(data.get("best_seeds", {}).get("groups", ()))
            self.entries = [dict(e) for e in data["runs"]]
            self.sweep_rates, self.sweep_flags, self.sweep_epochs, self.sweep_extend = read_sweep(
                data.get("lr_sweep"))
            self.premise, bodies = read_premise(data.get("premise"))
            for e in self.entries:
                missing = [k for k in ("name", "head", "group", "seeds") if k not in e]
                if missing or not all(isinstance(s, int) and s >= 0 for s in e["seeds"]):
                    raise ValueError(f"run {e.get('name', '?')!r}: needs name, head, group and seeds >= 0")
        except OSError as error:
            raise ValueError(f"plan: cannot read {path!r} ({error.strerror})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"plan: {path!r} is not a quality plan ({type(error).__name__}: {error})") from None
        names = [e["name"] for e in self.entries]
        for name in names:  # each becomes a folder's name, PROTOCOL-NAME-sSEED, under the runs folder
            problem = path_component_problem(name, f"{self.protocol}--s9999")
            if problem:
                raise ValueError(f"plan: {path!r}: run name {str(name)[:80]!r} must be one folder name ({problem})")
        if len(set(names)) != len(names) or [e for e in self.entries if e["group"] == "reference"][:1] == []:
            raise ValueError(f"plan: {path!r} needs unique run names and one entry of group 'reference'")
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"plan: {path!r}: epochs must be an integer >= 1, got {self.epochs!r}")
        if "--epochs" in self.common:
            raise ValueError(f"plan: {path!r}: give the epoch budget as \"epochs\", not in common_flags")
        unknown = [name for name in self.first if name not in names]
        if unknown:
            raise ValueError(f"plan: {path!r}: first names no run {', '.join(map(repr, unknown))}")
        if {SWEEP_GROUP, PREMISE_GROUP} & {e["group"] for e in self.entries}:
            raise ValueError(f"plan: {path!r}: the groups {SWEEP_GROUP!r} and {PREMISE_GROUP!r} are the "
                             f"learning-rate sweep's and the premise runs'")
        by_name = {e["name"]: e for e in self.entries}
        for name in self.premise:
            if name not in by_name or not by_name[name]["head"].startswith("vq"):
                raise ValueError(f"plan: {path!r}: premise names {name!r}, which is no VQ variant of the plan")
        # the softmax variants whose trained bodies carry the frozen heads (the oracle scores softmax models)
        self.premise_bodies = bodies or (self.reference()["name"],)
        for name in self.premise_bodies:
            if name not in by_name or not by_name[name]["head"].startswith("softmax"):
                raise ValueError(f"plan: {path!r}: premise bodies names {name!r}, which is no softmax variant "
                                 f"of the plan")

    @property
    def label(self) -> str:
        """The track's name in text: a plan that names no track trains the LSTM body (no --body flag)."""
        return self.track or LSTM_TRACK[0]

    @property
    def run_pattern(self) -> str:
        """The folder names of the plan's runs, as globs: PlannedRun.run with any variant and seed (a plan
        without a track shares its glob with the other trackless plans)."""
        prefix = self.track + "-" if self.track else ""
        frozen = f", frozen-{prefix}* for its heads on frozen bodies" if self.premise else ""
        return f"{self.protocol}-{prefix}*{frozen}"

    def planned(self, entry: dict, seed: int, lr: str = "") -> PlannedRun:
        """Seed ``seed`` of ``entry``, trained at ``lr`` (its swept rate) when given."""
        flags = tuple(entry.get("flags", ())) + (("--lr", lr) if lr else ())
        return PlannedRun(entry["name"], entry["head"], self.protocol, seed, entry["group"], flags,
                          entry.get("varies", ""), self.epochs, self.track, entry["name"])

    def swept(self, entry: dict) -> bool:
        """True when ``entry``'s learning rate comes from the plan's sweep (it has one; the entry sets no --lr)."""
        return bool(self.sweep_rates) and "--lr" not in entry.get("flags", ())

    def sweep_run(self, entry: dict, rate: float) -> PlannedRun:
        """Seed 0 of ``entry`` at ``rate``, under the sweep's epoch budget and flags."""
        return PlannedRun(f"{entry['name']}-lr{rate:g}", entry["head"], self.protocol, 0, SWEEP_GROUP,
                          tuple(entry.get("flags", ())) + ("--lr", f"{rate:g}") + self.sweep_flags,
                          f"learning-rate sweep of {entry['name']}", self.sweep_epochs, self.track, entry["name"])

    def swept_rates(self, entry: dict, runs_dir: Optional[str] = None) -> List[float]:
        """The rates ``entry`` is swept at: the plan's, and (``extend`` in the sweep, given runs_dir) while every
        one has finished and the best lies at an edge, one more step of the grid's ratio beyond that edge (to one
        significant digit: 0.01 after 0.003 and 0.01 gives 0.03), at most ``extend`` times per side: a rate chosen
        at the grid's edge may not be the best."""
        rates = list(self.sweep_rates)
        added = {"low": 0, "high": 0}
        while runs_dir is not None:
            scored = self._scored(entry, rates, runs_dir)
            if scored is None:
                break
            best = min(scored)[1]
            if best == rates[-1] and added["high"] < self.sweep_extend:
                rates.append(float(f"{rates[-1] * rates[-1] / rates[-2]:.1g}"))
                added["high"] += 1
            elif best == rates[0] and added["low"] < self.sweep_extend:
                rates.insert(0, float(f"{rates[0] * rates[0] / rates[1]:.1g}"))
                added["low"] += 1
            else:
                break
        return rates

    def sweep_runs(self, entry: dict, runs_dir: Optional[str] = None) -> List[PlannedRun]:
        """Seed 0 of ``entry`` once per swept rate (``swept_rates``), under the sweep's epoch budget and flags."""
        return [self.sweep_run(entry, rate) for rate in self.swept_rates(entry, runs_dir)]

    def _scored(self, entry: dict, rates: List[float], runs_dir: str) -> Optional[List[Tuple[float, float]]]:
        """[(validation perplexity, rate)] of ``entry``'s sweep runs at ``rates`` (a diverged run counts as worst),
        or None while one has not finished."""
        scored = []
        for rate in rates:
            run = self.sweep_run(entry, rate)
            summary = summary_of(runs_dir, run.run)
            if not finished(summary, run.epochs):
                return None
            ppl = summary.get("valid_ppl")
            scored.append((ppl if isinstance(ppl, (int, float)) and math.isfinite(ppl) else math.inf, rate))
        return scored

    def chosen_lr(self, entry: dict, runs_dir: str) -> Optional[str]:
        """The swept rate of ``entry`` with the lowest validation perplexity (a diverged run counts as worst),
        once every rate (the extensions beyond an edge included) has finished; None before."""
        scored = self._scored(entry, self.swept_rates(entry, runs_dir), runs_dir)
        return None if scored is None else f"{min(scored)[1]:g}"

    def reference(self) -> dict:
        return next(e for e in self.entries if e["group"] == "reference")

    def finished(self, runs_dir: str, run: PlannedRun) -> bool:
        return finished(summary_of(runs_dir, run.run), run.epochs)

    def runs(self, runs_dir: str) -> List[PlannedRun]:
        """Every run in queue order: the learning-rate sweep (the ``first`` variants' first), every seed of
        the ``first`` variants, then by seed and plan order; a swept variant's runs once its rate is chosen,
        the best-seeds runs once decidable."""
        seeds = sorted({s for e in self.entries for s in e["seeds"]})
        firsts = [e for name in self.first for e in self.entries if e["name"] == name]
        ordered = firsts + [e for e in self.entries if e not in firsts]
        queue = [run for e in ordered if self.swept(e) for run in self.sweep_runs(e, runs_dir)]
        rates = {e["name"]: self.chosen_lr(e, runs_dir) if self.swept(e) else "" for e in self.entries}
        ready = [e for e in ordered if rates[e["name"]] is not None]
        queue += [self.planned(e, s, rates[e["name"]]) for e in firsts if e in ready for s in e["seeds"]]
        queue += [self.planned(e, s, rates[e["name"]]) for s in seeds for e in ready
                  if s in e["seeds"] and e not in firsts]
        for entry in self.best_entries(runs_dir).values():
            queue += [self.planned(entry, s, rates[entry["name"]]) for s in self.best_seeds
                      if s not in entry["seeds"]]
        return queue + self.premise_runs(runs_dir, rates)

    def premise_runs(self, runs_dir: str, rates: Dict[str, Optional[str]]) -> List[PlannedRun]:
        """The frozen-body runs: each premise variant (at its chosen rate, once chosen) on the body of each
        seed of each premise body variant (default: the reference) whose run has finished. A run on the
        reference's body is named after its variant; on another body, VARIANT-on-BODY (their seeds overlap)."""
        reference = self.reference()["name"]
        out = []
        for body_entry in (e for name in self.premise_bodies for e in self.entries if e["name"] == name):
            for seed in body_entry["seeds"]:
                body = self.planned(body_entry, seed, rates.get(body_entry["name"]) or "")
                if not self.finished(runs_dir, body):
                    continue
                for name in self.premise:
                    entry = next(e for e in self.entries if e["name"] == name)
                    if rates[name] is None:
                        continue
                    run = self.planned(entry, seed, rates[name])
                    run_name = name if body_entry["name"] == reference else f"{name}-on-{body_entry['name']}"
                    out.append(PlannedRun(run_name, run.head, "frozen", seed, PREMISE_GROUP, run.flags,
                                          f"{name}'s head trained on the frozen body of {body.run}", self.epochs,
                                          self.track, PREMISE_GROUP, body.run))
        return out

    def best_entries(self, runs_dir: str) -> Dict[str, dict]:
        """{group: entry} with the lowest seed-0 validation perplexity, for groups whose seed-0 runs are all
        finished (selection on validation, never on test)."""
        chosen = {}
        for group in self.best_groups:
            members = [e for e in self.entries if e["group"] == group]
            done = [(summary_of(runs_dir, self.planned(e, 0).run), e) for e in members]
            if members and all(finished(s, self.epochs) for s, _ in done):
                chosen[group] = min(done, key=lambda pair: pair[0]["valid_ppl"])[1]
        return chosen


def read_sweep(sweep) -> Tuple[Tuple[float, ...], Tuple[str, ...], int, int]:
    """(rates, flags, epochs, extend) of a plan's ``lr_sweep`` ({"rates": [...], "epochs": 1, "flags": [...],
    "extend": 1}: rates in increasing order; extend, default 0: how many rates a variant whose best lies at an
    edge may add beyond it); empty rates when the plan has none. ValueError on a malformed one."""
    if sweep is None:
        return (), (), 1, 0
    rates, flags, epochs = sweep.get("rates"), sweep.get("flags", []), sweep.get("epochs", 1)
    extend = sweep.get("extend", 0)
    if not (isinstance(rates, list) and len(rates) >= 2 and len(set(rates)) == len(rates)
            and all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf for r in rates)):
        raise ValueError(f"lr_sweep: rates must be two or more distinct numbers > 0, got {rates!r}")
    if not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)) or "--lr" in flags:
        raise ValueError(f"lr_sweep: flags must be a list of strings without --lr, got {flags!r}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"lr_sweep: epochs must be an integer >= 1, got {epochs!r}")
    if rates != sorted(rates):
        raise ValueError(f"lr_sweep: rates must be in increasing order, got {rates!r}")
    if not isinstance(extend, int) or isinstance(extend, bool) or extend < 0:
        raise ValueError(f"lr_sweep: extend must be an integer >= 0, got {extend!r}")
    return tuple(float(r) for r in rates), tuple(flags), epochs, extend


def read_premise(premise) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(VQ variant names, softmax body variant names) of a plan's ``premise`` ({"variants": [...], and
    optionally "bodies": [...]}); ((), ()) when the plan has none, () bodies when it names none."""
    if premise is None:
        return (), ()
    variants = premise.get("variants") if isinstance(premise, dict) else None
    bodies = premise.get("bodies", []) if isinstance(premise, dict) else None
    for key, names in (("variants", variants), ("bodies", bodies)):
        if not (isinstance(names, list) and (names or key == "bodies") and all(isinstance(v, str) for v in names)
                and len(set(names)) == len(names)):
            raise ValueError(f"premise: {key} must be a list of distinct variant names, got {names!r}")
    return tuple(variants), tuple(bodies)


def summary_of(runs_dir: str, run: str) -> Optional[dict]:
    path = os.path.join(runs_dir, run, "summary.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"runs: cannot read {path!r} ({error})") from None


def finished(summary: Optional[dict], epochs: int) -> bool:
    """True when the schedule ended the run: the plateau rule, or a budget of ``epochs`` epochs (or more);
    not a --steps cap, a smaller budget or a kill."""
    if summary is None:
        return False
    stop = str(summary.get("stop", "steps"))
    return stop.startswith("plateau") or (stop.startswith("epochs") and summary.get("epochs", 0) >= epochs)


def default_checkpoints(runs_dir: str) -> str:
    return os.environ.get("VQBENCH_CHECKPOINTS") or runs_dir


def pick_next(plan: Plan, runs_dir: str, checkpoints: str, taken=(), only=None) -> Optional[PlannedRun]:
    """The run a free lane takes: the first unfinished run in queue order that has a checkpoint (so after a
    stop the runs in progress resume first), else the first unfinished run; None when none is left."""
    return next_of([plan], runs_dir, checkpoints, taken, only)[1]


def next_of(plans: List[Plan], runs_dir: str, checkpoints: str, taken=(), only=None):
    """(plan, run) for pick_next over several plans, in their order: a run of any plan that resumes from a
    checkpoint first, else the first startable run of the first plan that has one; (None, None) when none."""
    waiting = [(plan, run) for plan in plans for run in plan.runs(runs_dir) if run.run not in taken
               and run.wanted(only) and not plan.finished(runs_dir, run) and run.startable(checkpoints)]
    started = [pair for pair in waiting if os.path.exists(os.path.join(checkpoints, pair[1].run, "checkpoint.pt"))]
    return (started or waiting or [(None, None)])[0]


def run_all(plans, runs_dir: str, checkpoints: str, lanes: int, only=None, poll_s: float = 10.0,
            stop_at: str = "") -> None:
    """Run the unfinished runs of ``plans`` (a Plan or a list of them) on ``lanes`` lanes (pinned to a core
    each with taskset), each lane taking the next run of any plan (``next_of``) when it is free, so that a plan
    with fewer runs than lanes leaves none idle. A lane with nothing to take waits while another lane runs,
    since a run that ends may decide more (a swept rate, the best seeds). With ``stop_at`` (vqbench.train's
    --stop-at), each run stops at its first checkpoint after that time and no lane takes a run after it."""
    from vqbench.train import stop_time
    deadline = stop_time(stop_at)
    plans = [plans] if isinstance(plans, Plan) else list(plans)
    pin = lanes > 1 and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= lanes
    lock, failures, taken, running = threading.Lock(), [], set(), set()
    stop, children = threading.Event(), {}  # an interrupt: no lane takes another run, each child is ended

    def next_run(index):
        while not stop.is_set() and (deadline is None or time.time() < deadline):
            with lock:
                running.discard(index)
                plan, run = next_of(plans, runs_dir, checkpoints, taken, only)
                if run is not None:
                    taken.add(run.run)
                    running.add(index)
                    return plan, run
                if not running:
                    return None
            stop.wait(poll_s)
        return None

    def lane(index):
        while (picked := next_run(index)) is not None:
            plan, run = picked
            command = run.command(runs_dir, checkpoints, plan.common)
            command = (["taskset", "-c", str(index)] if pin else []) + [sys.executable] + command[1:]
            command += ["--stop-at", stop_at] if stop_at else []
            print(" ".join(command), flush=True)
            os.makedirs(os.path.join(runs_dir, run.run), exist_ok=True)
            with open(os.path.join(checkpoints, f"{run.run}.stdout.log"), "a") as log:
                with lock:
                    if stop.is_set():
                        return
                    children[index] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                if children[index].wait() and not stop.is_set():
                    failures.append(run.run)

    os.makedirs(checkpoints, exist_ok=True)
    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:  # a time limit's SIGINT: the runs resume from their last checkpoint next time
        stop.set()
        end_children(children, lock)
        for t in threads:
            t.join()
        raise
    if failures:
        raise RuntimeError(f"runs failed (see their stdout.log under {checkpoints}): {', '.join(failures)}")


def end_children(children: dict, lock) -> None:
    """Terminate the lanes' runs still going ({lane: Popen}) and wait on each (a join cut by an interrupt may
    return before they have ended)."""
    with lock:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
    for child in list(children.values()):
        child.wait()


# --------------------------------------------------------------------------- tables

def table_rows(plan: Plan, runs_dir: str) -> List[dict]:
    """One row per finished run, in queue order."""
    rows = []
    for run in plan.runs(runs_dir):
        s = summary_of(runs_dir, run.run)
        if run.group in (SWEEP_GROUP, PREMISE_GROUP) or not finished(s, run.epochs):
            continue
        rows.append({"run": run.run, "name": run.name, "head": run.head,
                     "mapping": vq_mapping(run.head, s.get("config", {})),
                     "body": s.get("body") or LSTM_TRACK[0], "vocabulary": s.get("vocabulary") or LSTM_TRACK[1],
                     "schedule": plan.schedule, "protocol": run.protocol,
                     "seed": run.seed, "group": run.group, "epochs": s["epochs"], "best_epoch": s["best_epoch"],
                     "stop": s["stop"], "valid_ppl": s["valid_ppl"], "test_ppl": s["test_ppl"],
                     "last_epoch_gain": s["last_epoch_gain"], "output_params": s["output_params"],
                     "total_params": s.get("total_params", ""), "shared_params": s.get("shared_params", ""),
                     "output_share": s.get("output_share", ""), "autocast": s.get("autocast", "none"),
                     "within_code_ppl_factor": s.get("within_code_ppl_factor", ""),
                     "tokens_per_s": s["tokens_per_s"], "threads": run_threads(s), "precision": s["precision"],
                     "device": run_device(s), "cpu_model": s["cpu_model"], "cpu_id": run_cpu_ids(s),
                     "git_commit": s["git_commit"], "varies": run.varies})
    return rows


def premise_rows(plan: Plan, runs_dir: str) -> List[dict]:
    """One row per finished frozen-body run of ``plan``, with its body's (the softmax run's) test perplexity."""
    from vqbench.heads.registry import parse_spec
    rows = []
    for run in (r for r in plan.runs(runs_dir) if r.group == PREMISE_GROUP):
        s, body = summary_of(runs_dir, run.run), summary_of(runs_dir, run.body_run)
        if not finished(s, run.epochs):
            continue
        rows.append({"track": plan.track, "body": s.get("body") or LSTM_TRACK[0],
                     "vocabulary": s.get("vocabulary") or LSTM_TRACK[1], "schedule": plan.schedule,
                     "name": run.name, "head": run.head,
                     "mapping": vq_mapping(run.head, s.get("config", {})), "K": parse_spec(run.head)[1]["K"],
                     "seed": run.seed, "run": run.run, "body_run": run.body_run, "epochs": s["epochs"],
                     "best_epoch": s["best_epoch"], "stop": s["stop"], "valid_ppl": s["valid_ppl"],
                     "test_ppl": s["test_ppl"], "reference_test_ppl": body["test_ppl"],
                     "tokens_per_s": s["tokens_per_s"], "device": run_device(s), "cpu_model": s["cpu_model"],
                     "cpu_id": run_cpu_ids(s), "git_commit": s["git_commit"]})
    return rows


def write_premise(plans, runs_dir: str, results_dir: str) -> Optional[str]:
    """premise.csv under results_dir from the finished frozen-body runs of ``plans`` (None, and no file, when no
    plan has a premise)."""
    if not any(p.premise for p in plans):
        return None
    path = os.path.join(results_dir, "premise.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PREMISE_COLUMNS)
        writer.writeheader()
        writer.writerows(row for p in plans for row in premise_rows(p, runs_dir))
    return path


def sweep_rows(plan: Plan, runs_dir: str) -> List[dict]:
    """One row per finished learning-rate sweep run of ``plan``; chosen: "yes" on each variant's rate."""
    rows = []
    for entry in (e for e in plan.entries if plan.swept(e)):
        chosen = plan.chosen_lr(entry, runs_dir)
        for rate, run in zip(plan.swept_rates(entry, runs_dir), plan.sweep_runs(entry, runs_dir)):
            s = summary_of(runs_dir, run.run)
            if not finished(s, run.epochs):
                continue
            config = s.get("config", {})
            rows.append({"track": plan.track, "name": entry["name"], "head": entry["head"], "lr": f"{rate:g}",
                         "valid_ppl": s["valid_ppl"], "chosen": "yes" if chosen == f"{rate:g}" else "",
                         "epochs": s["epochs"], "train_tokens": config.get("train_tokens", ""),
                         "tokens_per_s": s["tokens_per_s"], "run": run.run, "device": run_device(s),
                         "cpu_model": s["cpu_model"],
                         "git_commit": s["git_commit"]})
    return rows


def sweep_section(plans, runs_dir: str, results_dir: str) -> str:
    """Write lr-sweep.csv (every finished sweep run of ``plans``) and return quality.md's section on it, one
    table per plan with a sweep: a variant per line, validation perplexity per rate, the chosen one in bold;
    '' when no plan has a sweep."""
    swept = [(p, path) for p, path in plans if p.sweep_rates]
    if not swept:
        return ""
    rows = [row for p, _ in swept for row in sweep_rows(p, runs_dir)]
    with open(os.path.join(results_dir, "lr-sweep.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    parts = []
    for plan, path in swept:
        rates = [f"{r:g}" for r in sorted({r for e in plan.entries if plan.swept(e)
                                           for r in plan.swept_rates(e, runs_dir)})]
        table = []
        for entry in (e for e in plan.entries if plan.swept(e)):
            found = {r["lr"]: r for r in rows if r["track"] == plan.track and r["name"] == entry["name"]}
            cells = [(f"**{found[r]['valid_ppl']:.2f}**" if found[r]["chosen"] else f"{found[r]['valid_ppl']:.2f}")
                     if r in found else "" for r in rates]
            table.append([entry["name"], entry["head"], *cells])
        flags = " ".join(plan.sweep_flags) or "none"
        parts.append(f"\n\n## Learning rates, track {plan.label}\n\nThe same sweep for every variant "
                     f"of `{path}` whose flags set no rate: seed 0 trained for {plan.sweep_epochs} epoch(s) at "
                     f"each rate, with `{flags}` after the plan's flags; validation perplexity, the chosen rate "
                     f"(lowest) in bold; all of a variant's seeds train at it (results/quality/lr-sweep.csv). "
                     + (f"A variant whose best rate lies at the grid's edge is swept one step of the grid's ratio "
                        f"beyond it, at most {plan.sweep_extend} time(s) per side. " if plan.sweep_extend else "")
                     + f"Blank: not swept at that rate, or not finished yet.\n\n"
                     + tabulate(table, headers=["variant", "head", *[f"lr {r}" for r in rates]], tablefmt="github",
                                    disable_numparse=True))
    return "".join(parts)


def best_within(history: List[dict], seconds: float) -> Optional[float]:
    """The lowest validation perplexity of the epochs that ended within ``seconds`` of training; None when
    the first epoch took longer (or the history predates its training seconds)."""
    within = [h["valid_ppl"] for h in history if "train_seconds" in h and h["train_seconds"] <= seconds]
    return min(within) if within else None


def equal_time_section(plan: Plan, runs_dir: str) -> str:
    """quality.md's table of perplexity at equal training time for ``plan``: each finished run's best
    validation perplexity within the training seconds its seed's reference (softmax) took to reach its best
    epoch, beside its best at any time, its tokens/s and the output layer's share of a step; '' when no
    reference run records its training seconds."""
    reference = plan.reference()["name"]
    rows, budgets = [], {}
    finished_runs = [(run, summary_of(runs_dir, run.run)) for run in plan.runs(runs_dir)
                     if run.group not in (SWEEP_GROUP, PREMISE_GROUP)]
    # seconds on a shared GPU depend on what else ran beside each run: only CPU runs compare by time
    shared = [run for run, s in finished_runs if finished(s, run.epochs) and on_gpu(s)]
    finished_runs = [(run, s) for run, s in finished_runs if finished(s, run.epochs) and not on_gpu(s)]
    for run, s in finished_runs:
        best = [h for h in s.get("history", []) if h.get("epoch") == s.get("best_epoch") and "train_seconds" in h]
        if run.name == reference and best:
            budgets[run.seed] = best[0]["train_seconds"]
    for run, s in finished_runs:
        if run.seed not in budgets:
            continue
        within = best_within(s.get("history", []), budgets[run.seed])
        rows.append([run.name, run.seed, run_threads(s) or "not recorded", f"{s['tokens_per_s']:,.0f}",
                     f"{s.get('output_share', math.nan):.2f}",
                     f"{min(h['valid_ppl'] for h in s['history']):.2f}", f"{budgets[run.seed] / 60:.0f}",
                     f"{within:.2f}" if within is not None else "no epoch ended by then"])
    if not rows:
        if not shared:
            return ""
        return (f"\n\n## Equal training time, track {plan.label}\n\nNot given: its {len(shared)} "
                "finished runs trained on a GPU shared with other runs, whose training seconds are no fair clock.")
    return (f"\n\n## Equal training time, track {plan.label}\n\nEach run's best validation "
            f"perplexity within the training time its seed's {reference} run took to reach its best epoch "
            "(seconds in training steps, no evaluation; CPU runs only"
            + (f", {len(shared)} runs on a shared GPU left out" if shared else "") + "), beside its best at any time. "
            "threads: each run's torch threads, by invocation (seconds compare only between runs with the same "
            "count). "
            "tokens/s: training tokens per second of training; output share: the head's loss forward and backward "
            "over a whole step, timed on some steps.\n\n"
            + tabulate(rows, headers=["variant", "seed", "threads", "tokens/s", "output share", "best valid ppl",
                                      f"{reference} minutes", "best valid ppl within them"], tablefmt="github",
                       disable_numparse=True))


def run_threads(summary: dict) -> str:
    """The torch thread counts a run trained with, in the order its invocations used them ("1", "1+2");
    tokens/s of a run that changed its thread count on a resume mixes both speeds."""
    counts = [str(i["threads"]) for i in summary.get("invocations", []) if "threads" in i]
    if not counts and "threads" in summary:
        counts = [str(summary["threads"])]
    return "+".join(dict.fromkeys(counts))


def run_cpu_ids(summary: dict) -> str:
    """The CPUs a run trained on by family, model and vector tier (provenance.cpu_id), in the order its
    invocations used them, joined by " + " ("" where no invocation recorded one): a model name such as "AMD
    EPYC" covers CPUs on which one seed takes different trajectories, so runs pair exactly only on one cpu_id."""
    ids = [i["cpu_id"] for i in summary.get("invocations", []) if i.get("cpu_id")]
    return " + ".join(dict.fromkeys(ids))


SETTLED_SHARE = 0.01  # a learned map has settled when its last re-assignment moved under 1% of the tokens it saw


def learned_map_section(plan: Plan, runs_dir: str) -> str:
    """quality.md's table of how each finished learned-map run's re-assignments moved tokens: the first, the
    last and the fewest moved (tokens, and their share of the distinct tokens seen in the window), and whether
    the map settled (its last re-assignment moved under SETTLED_SHARE of them); '' when no run has one. Every
    re-assignment's count is in the run's log.jsonl."""
    rows = []
    for run in plan.runs(runs_dir):
        s = summary_of(runs_dir, run.run)
        if run.group in (SWEEP_GROUP, PREMISE_GROUP) or not finished(s, run.epochs):
            continue
        moves = [r for r in log_records(os.path.join(runs_dir, run.run, "log.jsonl")) if "reassigned_tokens" in r]
        if not moves:
            continue
        vocab = int((s.get("vocabulary") or LSTM_TRACK[1]).rpartition("-")[2])

        def share(r):  # of the tokens seen; a log from before that count has the share of the vocabulary only
            return r.get("reassigned_share_of_seen", r["reassigned_tokens"] / vocab)

        def cell(r):
            of = "" if "reassigned_share_of_seen" in r else " of V"
            return f"{r['reassigned_tokens']:,} ({100 * share(r):.1f}%{of}) at step {r['step']:,}"
        fewest = min(moves, key=share)
        rows.append([run.run, len(moves), cell(moves[0]), cell(moves[-1]), cell(fewest),
                     "yes" if share(moves[-1]) < SETTLED_SHARE else "no"])
    if not rows:
        return ""
    return (f"\n\n## Learned maps, track {plan.label}\n\nTokens moved to another code at each "
            "re-assignment (and their share of the distinct tokens seen in its window): the first, the last and "
            f"the fewest; settled: the last moved under {100 * SETTLED_SHARE:.0f}% of them (of V, for a log from before "
            "the count of tokens seen). Every re-assignment is a line of the run's log.jsonl.\n\n"
            + tabulate(rows, headers=["run", "re-assignments", "first", "last", "fewest", "settled"],
                       tablefmt="github", disable_numparse=True))


def run_device(summary: dict) -> str:
    """Where a run trained, in the order its invocations used them: "cpu", a GPU's name, or both joined by
    "+" after a resume elsewhere; "cpu" for a run whose invocations predate the device record."""
    names = [(i.get("device_name") or i["device"]) if i.get("device", "cpu") != "cpu" else "cpu"
             for i in summary.get("invocations", [])]
    return "+".join(dict.fromkeys(names)) or "cpu"


def on_gpu(row_or_summary: dict) -> bool:
    """True when a quality.csv row (its device) or a run's summary (its invocations) trained on a GPU."""
    device = row_or_summary["device"] if "device" in row_or_summary else run_device(row_or_summary)
    return device != "cpu"


def threads_sentence(rows: List[dict]) -> str:
    """quality.md's line on how the runs shared their machine: CPU runs by threads, naming every run that did
    not use one thread; GPU runs by device, since several share one GPU (their tokens/s are no head speed)."""
    cpu_rows = [r for r in rows if not on_gpu(r)]
    others = [f"{r['run']} ({r['threads']} threads, by invocation)" for r in cpu_rows if r["threads"] not in ("1", "")]
    text = "CPU runs: one thread per run, two runs side by side"
    text += f", except {', '.join(others)}" if others else ""
    gpus = sorted({r["device"] for r in rows if on_gpu(r)})
    if gpus:
        text += (f". GPU runs ({sum(on_gpu(r) for r in rows)}, on {', '.join(gpus)}): several runs share the GPU "
                 "at once (scripts/run-cuda-quality.sh, LANES runs at a time), so their tokens/s and training "
                 "seconds measure throughput under sharing, not a head's speed, and no equal-time comparison uses them")
    return text


def vq_mapping(head: str, config: dict) -> str:
    """The token-to-code map a VQ run ends with: "learned" when training reassigned it (--reassign-every),
    else its spec's mapping (the VQ head's default when not given); "" for any other head."""
    from vqbench.heads.registry import head_class, option, parse_spec
    name, options = parse_spec(head)
    if name != "vq":
        return ""
    if config.get("reassign_every", 0):
        return "learned"
    default = option(head_class("vq"), "mapping").default
    return options.get("mapping", default)


def progress(runs_dir: str, run: str) -> str:
    """'run (step S, validation ppl after each epoch: a / b)' from an unfinished run's log.jsonl, or 'run (not
    started)': how far the committed log of a run in progress has got; and, where it started over with no
    checkpoint to resume from (one lost with its machine), how often (its earlier attempts' logs are in
    log.superseded.jsonl)."""
    path = os.path.join(runs_dir, run, "log.jsonl")
    restarts = restart_count(os.path.join(runs_dir, run, "log.superseded.jsonl"))
    times = {1: "once", 2: "twice"}.get(restarts, f"{restarts} times")
    restarted = (f"; started over from step 0 {times} with no checkpoint to resume from, earlier attempts in "
                 f"log.superseded.jsonl" if restarts else "")
    if not os.path.exists(path):
        return f"{run} (not started{restarted})"
    step, valid = 0, []
    for entry in log_records(path):
        step = max(step, entry.get("step", 0))
        if "valid_ppl" in entry:
            valid.append(f"{entry['valid_ppl']:.1f}")
    epochs = f", validation ppl after each epoch: {' / '.join(valid)}" if valid else ""
    return f"{run} (step {step:,}{epochs}{restarted})"


def restart_count(superseded: str) -> int:
    """How often a run started over from nothing (--resume without its checkpoint): the invocations from
    step 0 in its log.superseded.jsonl, where such a restart moves the whole earlier log (a resume from a
    checkpoint moves only the steps past it, which hold no invocation)."""
    return sum(1 for entry in log_records(superseded)
               if isinstance(entry.get("invocation"), dict) and entry["invocation"].get("from_step") == 0)


def write_tables(plan: Plan, runs_dir: str, results_dir: str, plan_path: str, more=()) -> str:
    """quality.csv, quality.md, pareto.png (and oracle.md) from the finished runs of ``plan`` and of the
    (Plan, path) pairs in ``more``, the other tracks, whose runs share runs_dir under their track's names."""
    plans = [(plan, plan_path), *more]
    rows = [row for p, _ in plans for row in table_rows(p, runs_dir)]
    if not rows:
        raise ValueError(f"table: no finished runs under {runs_dir!r}; run `python -m vqbench.quality run` first")
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "quality.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = aggregate(rows, plan.reference()["name"])
    from vqbench.plot import plot_quality_pareto
    settings = list(dict.fromkeys(v["setting"] for v in summary))
    for index, where in enumerate(settings):  # one figure per setting: ratios are to that setting's softmax
        first = [v for v in summary if v["setting"] == where][0]
        schedule = re.sub(r"[^A-Za-z0-9_]+", "-", first["schedule"]).strip("-")
        name = ("pareto.png" if index == 0 else
                f"pareto-{first['body']}-{first['vocabulary']}{'-' + schedule if schedule else ''}.png")
        # a reference trained longer than the budget is no point of an equal-budget frontier
        plot_quality_pareto([v for v in summary if v["setting"] == where and v["group"] != REFERENCE_LONG_GROUP],
                            os.path.join(results_dir, name), sources=[os.path.join(results_dir, "quality.csv")])
    commands = "\n".join(" ".join(r.command(runs_dir, "$VQBENCH_CHECKPOINTS", p.common))
                         for p, _ in plans for r in p.runs(runs_dir))
    unfinished = [progress(runs_dir, r.run) for p, _ in plans for r in p.runs(runs_dir)
                  if not p.finished(runs_dir, r)]
    tracks = "".join(f"\n\nTrack {p.label} (plan `{path}`, its runs named {p.run_pattern}): "
                     f"{p.description}" for p, path in more)
    cpus = sorted({r["cpu_model"] for r in rows if not on_gpu(r)})
    sweeps = sweep_section(plans, runs_dir, results_dir) + "".join(
        equal_time_section(p, runs_dir) + learned_map_section(p, runs_dir) for p, _ in plans)
    text = QUALITY_MD.format(plan=plan_path, table=markdown_table(summary) + sweeps, commands=commands,
                             epochs=plan.epochs, cpus=", ".join(cpus), precision=", ".join(sorted({r["precision"] for r in rows})),
                             unfinished=", ".join(unfinished) or "none", unfinished_title=UNFINISHED,
                             threads=threads_sentence(rows), tracks=tracks)
    path = os.path.join(results_dir, "quality.md")
    with open(path, "w") as f:
        f.write(text)
    write_premise([p for p, _ in plans], runs_dir, results_dir)
    from vqbench.oracle import oracle_files, write_markdown
    for oracle_csv in oracle_files(results_dir):  # oracle.md sets the measured VQ runs next to their estimate
        write_markdown(oracle_csv)
    return path


UNFINISHED = "Runs not finished yet"  # quality.md's sentence on the plan's unfinished runs (the report quotes it)

QUALITY_MD = """# Quality: WikiText-2 perplexity with each output layer

Regenerate: `python -m vqbench.quality run --checkpoints DIR && python -m vqbench.quality table` (plan:
`{plan}`). Every run of that plan trains a 2-layer LSTM body (d=200, dropout 0.2, BPTT 35, 20 streams) jointly with its
head under one schedule (`python -m vqbench.train --help`): SGD at learning rate 20 with gradient clipping
at 0.25 (the optimiser settings of PyTorch's word_language_model example, not its schedule: that divides
the rate only when validation does not improve at all and runs 40 epochs), the learning rate divided by 4
after an epoch that improves validation perplexity by less than 1%, training stopped after 2 such epochs in
a row or {epochs} epochs, and the best-validation model evaluated on test with the head's exact, normalised
`target_log_prob`. A seed sets the initialisation, the dropout stream and the data order, identically
for every head; ratios to softmax pair runs of the same seed (mean ± sample std over seeds, and the
95% Student-t interval of the mean; a single seed's ratio says so). "max last-epoch
gain": the largest relative validation improvement of a run's last epoch (under 1% for every run the
plateau rule stopped, by construction: a sign of a flat curve, not a proof of convergence).
CPU of the CPU runs: {cpus}; precision: {precision} (autocast per run in quality.csv); {threads} (tokens/s
in quality.csv are indicative; head speed is measured by `python -m vqbench.compare`; each run's
summary.json lists its invocations, with device and CPU).{tracks}

{table}

{unfinished_title} (from their logs so far): {unfinished}.

Commands (in queue order):

```
{commands}
```
"""


def check_only(plans: List[Plan], runs_dir: str, only) -> None:
    """Raise ValueError naming the first of ``only`` that selects nothing: a misspelt name would otherwise
    run (or print) nothing without a word."""
    known = {PREMISE_GROUP} | {e["name"] for plan in plans for e in plan.entries}
    known |= {n for plan in plans for r in plan.runs(runs_dir) for n in (r.run, r.name, r.variant)}
    for name in only or ():
        if name not in known:
            raise ValueError(f"--only: {name!r} names no variant or run of these plans (a run that is not queued "
                             "yet is selected by its variant's name)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqbench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["plan", "run", "table"])
    plans = [DEFAULT_PLAN, TRANSFORMER_PLAN, PLATEAU_PLAN, *PREMISE_PLANS]
    p.add_argument("--plan", nargs="+", default=plans,
                   help=f"plan files (default {' '.join(plans)}); table reads them all, plan and run go through "
                        "them in order")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"results folder (default {DEFAULT_RESULTS})")
    p.add_argument("--checkpoints", help="checkpoint folder (default $VQBENCH_CHECKPOINTS, else the runs folder)")
    p.add_argument("--lanes", type=int, default=2, help="runs at once, one core each (default 2)")
    p.add_argument("--only", nargs="+", metavar="RUN",
                   help="plan and run: only these runs or variants (by name; a name that selects none is an error)")
    shards.add_executor_flags(p, None, exclusive=False)  # --executor: each run a submitit job (vqbench.measuring.shards)
    p.add_argument("--stop-at", default="", metavar="TIME",
                   help="run: each run stops at its first checkpoint after TIME (ISO 8601, UTC unless it names a "
                        "zone) and no run starts after it; the next `run` resumes them")
    p.add_argument("--device", default="cpu",
                   help="where each run trains (vqbench.train --device; default cpu): a run may resume elsewhere")
    args = p.parse_args(argv)
    if args.lanes < 1:
        p.error("--lanes: must be >= 1")
    shards.check_executor_args(p, args, submits=args.action == "run" and bool(args.executor))
    if args.no_wait and not args.executor:
        p.error("--no-wait: only with --executor")
    if args.stop_at and args.executor:
        p.error("--stop-at: only for runs on this machine's lanes, not with --executor")
    from vqbench.train import stop_time
    try:
        stop_time(args.stop_at)
    except ValueError as error:
        p.error(f"--stop-at: {str(error).partition(': ')[2]}")
    try:
        plans = [Plan(path) for path in args.plan]
        for plan in plans if args.device != "cpu" else ():
            plan.common += ("--device", args.device)
        runs_dir = os.path.join(args.results, "runs")
        checkpoints = args.checkpoints or default_checkpoints(runs_dir)
        check_only(plans, runs_dir, args.only)
        if args.action == "plan":
            for plan in plans:
                for run in (r for r in plan.runs(runs_dir) if r.wanted(args.only)):
                    done = plan.finished(runs_dir, run)
                    print(("# done: " if done else "") + " ".join(run.command(runs_dir, checkpoints, plan.common)))
        elif args.action == "run" and args.executor:
            for plan in plans:
                shards.run_plan(plan, runs_dir, checkpoints, args)
        elif args.action == "run":
            try:
                run_all(plans, runs_dir, checkpoints, args.lanes, args.only, stop_at=args.stop_at)
            except KeyboardInterrupt:
                print("python -m vqbench.quality: run: interrupted, its runs ended; run it again to resume them "
                      "from their last checkpoints", file=sys.stderr)
                return 130
        else:
            print(write_tables(plans[0], runs_dir, args.results, args.plan[0], list(zip(plans[1:], args.plan[1:]))))
    except (ValueError, RuntimeError) as error:
        print(f"python -m vqbench.quality: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
