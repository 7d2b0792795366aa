"""python -m vqbench.train: a small LSTM language model with any head as its output layer.

    python -m vqbench.train --head softmax --seed 0 --out results/quality/runs/joint-softmax-s0
    python -m vqbench.train --head vq:K=1024 --protocol frozen --body-from RUN/best.pt --out ...
    torchrun --nproc_per_node=2 -m vqbench.train --head softmax ...      # DDP: gloo on CPU, nccl on CUDA

Protocols: ``joint`` trains body and head together from scratch; ``frozen`` loads a trained body,
computes its hidden states once and trains only the head on them. Both run the same loop and the
same schedule: up to ``--epochs`` passes over the training split; after each epoch the validation
perplexity is measured, the learning rate divided by ``--lr-decay`` when the epoch improved it by
less than ``--plateau`` (relative), and training stops once ``--patience`` epochs in a row did so.
The best-validation model (best.pt) is the one evaluated on test. ``--steps`` caps the number of
optimiser steps (short runs, tests); a run stopped by it is evaluated as it stands.

A seed sets the body's and the head's initialisation, the dropout stream and the data order (the
training stream is rotated by an offset drawn from the seed and the epoch), identically for every
head. The run folder gets log.jsonl and summary.json; checkpoint.pt and best.pt go to
``--checkpoint-dir`` (default: the run folder). ``--resume`` continues exactly from checkpoint.pt
and refuses a checkpoint written with another head, corpus, model, optimiser, schedule or seed.
``--stop-at TIME`` (ISO 8601, UTC unless it names a zone) stops at the first checkpoint after TIME
without evaluating or writing a summary, so that a run longer than a session ends cleanly and resumes.

Bodies: ``--body lstm`` (the default) or ``--body gpt`` (a pre-LayerNorm decoder, vqbench/training/lm.py,
with ``--heads`` and a context of ``--bptt`` tokens); ``--vocabulary cl100k_base`` tokenises the
corpus with that LLM vocabulary (vqbench/training/data.py); ``--tie-embeddings`` makes the softmax head's
weight the input embedding. ``--optimizer adamw`` with ``--weight-decay`` (matrices only),
``--warmup`` steps of linear warm-up and ``--cosine-epochs`` of cosine decay (to a tenth) is the
transformer recipe; the plateau rule still divides the rate by ``--lr-decay`` and stops the run.
``--autocast bf16`` trains in bfloat16 autocast, ``auto`` only where the device computes bfloat16
natively (recorded per invocation); evaluation is always float32. ``--device cuda`` puts the model
and batches on the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Tuple

import torch

from vqbench.training.data import batchify, bptt_batches, corpus_fingerprint, load_corpus
from vqbench.training.evaluate import EVAL_BATCH, hidden_states, perplexity, state_perplexity
from vqbench.training.data import VOCABULARIES
from vqbench.training.lm import BODIES, LanguageModel, detach_state, make_body
from vqbench.measuring.provenance import (cpu_flags, cpu_id, cpu_model, device_name, git_commit, relative_argv,
                                          relative_path)
from vqbench.heads.contract import _TRUE
from vqbench.heads.registry import import_modules, make_head, parse_spec

CHECKPOINT_FORMAT = 2
OPTIMIZERS = ("sgd", "adam", "adamw")
PROTOCOLS = ("joint", "frozen")
AUTOCAST = ("none", "bf16", "auto")
MIN_LR_RATIO = 0.1  # where cosine decay ends, as a share of the peak rate


@dataclass
class TrainConfig:
    head: str = "softmax"
    protocol: str = "joint"
    data: Optional[str] = None
    out: str = "results/quality/runs/run"
    checkpoint_dir: Optional[str] = None
    epochs: int = 20
    steps: int = 0
    batch_size: int = 20
    bptt: int = 35
    d_model: int = 200
    layers: int = 2
    dropout: float = 0.2
    optimizer: str = "sgd"
    lr: float = 20.0
    lr_decay: float = 4.0
    plateau: float = 0.01
    patience: int = 2
    clip: float = 0.25
    eval_every: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    train_tokens: int = 0
    eval_tokens: int = 0
    body_from: Optional[str] = None
    embeddings_from: Optional[str] = None
    frozen_batch: int = 2048
    reassign_every: int = 0
    threads: Optional[int] = None
    resume: bool = False
    body: str = "lstm"
    heads: int = 4
    vocabulary: str = "word"
    tie_embeddings: bool = False
    weight_decay: float = 0.0
    warmup: int = 0
    cosine_epochs: int = 0
    autocast: str = "none"
    device: str = "cpu"
    reassign_margin: float = 0.0
    stop_at: str = ""  # a time (ISO 8601, UTC unless it names a zone): stop at the first checkpoint after it


# Settings a run may change between invocations: where files go, how often it reports, how long it
# trains. Every other field decides the trained model, so a resume must match it exactly.
FREE_FIELDS = ("out", "checkpoint_dir", "epochs", "steps", "eval_every", "checkpoint_every", "log_every",
               "threads", "resume", "device", "stop_at")
POSITIVE_INT = ("epochs", "batch_size", "bptt", "d_model", "layers", "patience", "checkpoint_every",
                "log_every", "frozen_batch", "heads")
NON_NEGATIVE_INT = ("steps", "eval_every", "seed", "train_tokens", "eval_tokens", "reassign_every", "warmup",
                    "cosine_epochs")
CHOICES = {"protocol": PROTOCOLS, "optimizer": OPTIMIZERS, "body": BODIES, "vocabulary": VOCABULARIES,
           "autocast": AUTOCAST}


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError naming the setting when one is out of range (before any work is done)."""
    for name in POSITIVE_INT:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(cfg, name)}")
    for name in NON_NEGATIVE_INT:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}: must be >= 0, got {getattr(cfg, name)}")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    checks = {"lr": cfg.lr > 0, "clip": cfg.clip > 0, "lr_decay": cfg.lr_decay >= 1,
              "plateau": 0 <= cfg.plateau < 1, "dropout": 0 <= cfg.dropout < 1, "weight_decay": cfg.weight_decay >= 0,
              "reassign_margin": cfg.reassign_margin >= 0}
    for name, ok in checks.items():
        if not (ok and math.isfinite(getattr(cfg, name))):
            raise ValueError(f"{name}: out of range ({getattr(cfg, name)!r}; lr and clip > 0, lr_decay >= 1, "
                             f"0 <= plateau < 1, 0 <= dropout < 1, weight_decay and reassign_margin >= 0)")
    validate_model(cfg)
    stop_time(cfg.stop_at)
    if cfg.threads is not None and not 1 <= cfg.threads <= 4096:  # torch takes a C int
        raise ValueError(f"threads: must be between 1 and 4096, got {cfg.threads}")
    if cfg.protocol == "frozen" and not cfg.body_from:
        raise ValueError("body_from: the frozen protocol needs the checkpoint of a trained body")
    for name in ("body_from", "embeddings_from"):
        path = getattr(cfg, name)
        if path and not os.path.isfile(path):
            raise ValueError(f"{name}: no checkpoint file {path!r}")


def validate_model(cfg: TrainConfig) -> None:
    """The body, tying and device settings that only make sense together."""
    if cfg.body == "gpt" and cfg.d_model % cfg.heads:
        raise ValueError(f"heads: d_model {cfg.d_model} does not split into {cfg.heads} heads")
    if cfg.tie_embeddings and (cfg.protocol != "joint" or cfg.head.partition(":")[0] != "softmax"):
        raise ValueError("tie_embeddings: ties a softmax head's weight to the input embedding; needs --head "
                         "softmax[:...] and the joint protocol")
    if not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ValueError(f"device: expected cpu or cuda[:N], got {cfg.device!r}")
    if parse_spec(cfg.head)[1].get("sparse_grad", "0").strip().lower() in _TRUE:
        raise ValueError(f"head: {cfg.head!r} gives sparse gradients, which this trainer's clipping and Adam(W) "
                         "do not take; train it with sparse_grad=0 (the same model and loss)")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {cfg.device!r} asked for, but this torch sees no CUDA device")


def identity(cfg: TrainConfig) -> dict:
    """The settings that decide the trained model (all but FREE_FIELDS)."""
    return {k: v for k, v in asdict(cfg).items() if k not in FREE_FIELDS}


def load_checkpoint(path: str, what: str) -> dict:
    """A checkpoint written by this module, loaded without running code (weights_only)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{what}: no checkpoint file {path!r}") from None
    except Exception as error:  # torch raises many types for a foreign or damaged file
        raise ValueError(f"{what}: {path!r} is not a readable vqbench checkpoint ({type(error).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{what}: {path!r} is not a vqbench checkpoint of format {CHECKPOINT_FORMAT}")
    return saved


def seeded(seed: int, purpose: int) -> None:
    """Seed the global generator for one purpose (0 body, 1 head, 2 dropout) of one run seed."""
    torch.manual_seed(1000 * seed + purpose)


# --------------------------------------------------------------------------- schedule

@dataclass
class Schedule:
    """Learning rate, best validation perplexity, the epochs-without-progress count, and the seconds spent
    in training steps over every invocation (no evaluation, checkpoint or speed probe): each epoch's
    history entry carries them, for perplexity at equal training time."""
    lr: float
    best_valid: float = math.inf
    best_epoch: int = 0
    slow_epochs: int = 0
    history: List[dict] = field(default_factory=list)
    train_seconds: float = 0.0

    def end_epoch(self, epoch: int, step: int, valid: float, cfg: TrainConfig) -> bool:
        """Record epoch ``epoch`` (1-based); returns True when its model is the best so far."""
        gain = (self.best_valid - valid) / self.best_valid if math.isfinite(self.best_valid) else 1.0
        improved = valid < self.best_valid
        self.history.append({"epoch": epoch, "step": step, "valid_ppl": valid, "lr": self.lr,
                             "relative_gain": gain, "train_seconds": round(self.train_seconds, 1)})
        if improved:
            self.best_valid, self.best_epoch = valid, epoch
        if gain < cfg.plateau:
            self.lr /= cfg.lr_decay
            self.slow_epochs += 1
        else:
            self.slow_epochs = 0
        return improved

    def stopped(self, cfg: TrainConfig) -> bool:
        return self.slow_epochs >= cfg.patience


# --------------------------------------------------------------------------- the two protocols

class JointTask:
    """Body and head trained together on BPTT windows of the training streams (the LSTM state carries
    over from window to window and starts afresh each epoch; a GPT's windows are each their own context,
    taken in an order shuffled per epoch)."""

    def __init__(self, cfg: TrainConfig, corpus, rank: int, world: int, device: torch.device):
        if cfg.batch_size % world:
            raise ValueError(f"batch_size: {cfg.batch_size} streams do not split over {world} processes")
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.train_ids, self.valid_ids, self.test_ids = split_ids(cfg, corpus)
        seeded(cfg.seed, 0)
        self.body = make_body(cfg.body, corpus.vocab_size, cfg.d_model, cfg.layers, cfg.dropout, cfg.heads, cfg.bptt)
        self.head = build_head(cfg, corpus, cfg.d_model)
        if cfg.tie_embeddings:  # one [V, d] matrix: the input embedding is the output weight
            self.head.weight = self.body.embedding.weight
        self.model = LanguageModel(self.body, self.head).to(device)
        ids = [device.index or 0] if device.type == "cuda" else None
        self.wrapped = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids) if world > 1
                        else self.model)
        self.lstm_state = None

    def trainable(self) -> torch.nn.Module:
        return self.model

    def epoch_batches(self, epoch: int) -> list:
        """This process's (x [B, L], y [B, L]) windows of epoch ``epoch`` (0-based)."""
        offset = int(torch.randint(0, self.train_ids.numel(), (1,), generator=data_generator(self.cfg, epoch)))
        streams = batchify(self.train_ids.roll(-offset), self.cfg.batch_size)
        per_rank = self.cfg.batch_size // self.world
        windows = list(bptt_batches(streams[self.rank * per_rank:(self.rank + 1) * per_rank], self.cfg.bptt))
        if self.cfg.body == "lstm":
            return windows
        order = torch.randperm(len(windows), generator=data_generator(self.cfg, epoch))
        return [windows[i] for i in order]

    def begin_epoch(self) -> None:
        self.lstm_state = None

    def loss(self, batch):
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        loss, state, hidden = self.wrapped(x, y, self.lstm_state)
        self.lstm_state = detach_state(state)
        return loss, hidden, y

    def logged_loss(self, loss) -> float:
        """The global batch's mean loss, as one process would report it."""
        value = loss.detach().clone()
        if self.world > 1:
            torch.distributed.all_reduce(value)
            value /= self.world
        return float(value)

    def evaluate(self, split: str) -> float:
        ids = {"validation": self.valid_ids, "test": self.test_ids}[split]
        return perplexity(self.body, self.head, ids, self.cfg.bptt)

    def test_targets(self) -> torch.Tensor:
        return self.test_ids

    def state_dict(self) -> dict:
        return {"lstm_state": self.lstm_state}

    def load_state_dict(self, saved: dict) -> None:
        self.lstm_state = saved["lstm_state"]


class FrozenTask:
    """Only the head trains, on the hidden states of a trained body computed once (cached beside the
    body's checkpoint): each epoch is a pass over a permutation of the training positions."""

    def __init__(self, cfg: TrainConfig, corpus, rank: int, world: int, device: torch.device):
        if world > 1:
            raise ValueError("protocol: the frozen protocol runs in one process")
        self.cfg, self.device = cfg, device
        saved = load_checkpoint(cfg.body_from, "body_from")
        body_cfg = saved["config"]
        if saved["corpus"] != corpus_fingerprint(corpus):
            raise ValueError(f"body_from: {cfg.body_from!r} was trained on another corpus")
        self.body = body_of(body_cfg, corpus.vocab_size)
        self.body.load_state_dict(model_states(saved, cfg.body_from, "body_from")[0])
        self.body.to(device)
        self.head = build_head(cfg, corpus, body_cfg["d_model"]).to(device)
        train_ids, valid_ids, test_ids = split_ids(cfg, corpus)
        self.states = {"train": self.cached_states("train", train_ids, cfg.batch_size),
                       "validation": self.cached_states("valid", valid_ids, EVAL_BATCH),
                       "test": self.cached_states("test", test_ids, EVAL_BATCH)}

    def cached_states(self, split: str, ids, batch_size: int):
        """hidden_states of the frozen body, cached in a file beside its checkpoint (runs share them)."""
        stamp = os.stat(self.cfg.body_from).st_mtime_ns
        path = f"{self.cfg.body_from}.hidden-{split}-{stamp}-{len(ids)}-b{batch_size}-t{self.cfg.bptt}.pt"
        if os.path.exists(path):
            try:
                return tuple(torch.load(path, map_location="cpu", weights_only=True))
            except Exception:  # a damaged cache is recomputed, never trusted
                pass
        states = tuple(t.cpu() for t in hidden_states(self.body, ids, self.cfg.bptt, batch_size))
        # a temporary of this writer's own: two lanes training heads on one body write the same cache at once,
        # and a shared temporary name would let the other's rename take this one's file away
        fd, partial = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".",
                                       suffix=".tmp")
        os.close(fd)
        try:
            torch.save(states, partial)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return states

    def trainable(self) -> torch.nn.Module:
        return self.head

    def epoch_batches(self, epoch: int) -> list:
        targets = self.states["train"][1]
        order = torch.randperm(targets.numel(), generator=data_generator(self.cfg, epoch))
        return list(order.split(self.cfg.frozen_batch))

    def begin_epoch(self) -> None:
        pass

    def loss(self, batch):
        hidden = self.states["train"][0][batch].to(self.device)
        targets = self.states["train"][1][batch].to(self.device)
        return self.head.loss(hidden, targets), hidden, targets

    def logged_loss(self, loss) -> float:
        return float(loss.detach())

    def evaluate(self, split: str) -> float:
        return state_perplexity(self.head, *self.states[split])

    def test_targets(self) -> torch.Tensor:
        return self.states["test"][1]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, saved: dict) -> None:
        pass


TASKS = {"joint": JointTask, "frozen": FrozenTask}


def model_states(saved: dict, path: str, argument: str) -> Tuple[dict, dict]:
    """(body state, head state) of a joint run's best.pt (body, head) or checkpoint.pt (model: body.*, head.*):
    the frozen protocol and the oracle read a trained body from either."""
    if "body" in saved and "head" in saved:
        return saved["body"], saved["head"]
    model = saved.get("model", {})
    body = {k[len("body."):]: v for k, v in model.items() if k.startswith("body.")}
    head = {k[len("head."):]: v for k, v in model.items() if k.startswith("head.")}
    if not body or not head:
        raise ValueError(f"{argument}: {path!r} holds no body and head (a joint run's best.pt or checkpoint.pt)")
    return body, head


def body_of(body_cfg: dict, vocab_size: int) -> torch.nn.Module:
    """The body a checkpoint's config describes (configs written before --body describe an LSTM)."""
    return make_body(body_cfg.get("body", "lstm"), vocab_size, body_cfg["d_model"], body_cfg["layers"],
                     body_cfg["dropout"], body_cfg.get("heads", 4), body_cfg["bptt"])


def body_label(cfg) -> str:
    """quality.csv's body column: 'lstm', or 'gpt-{layers}x{d_model}'."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    body = get("body", "lstm") or "lstm"
    return body if body == "lstm" else f"{body}-{get('layers')}x{get('d_model')}"


def split_ids(cfg: TrainConfig, corpus):
    cut = lambda ids, n: ids[:n] if n else ids  # noqa: E731
    return (cut(corpus.ids["train"], cfg.train_tokens), cut(corpus.ids["validation"], cfg.eval_tokens),
            cut(corpus.ids["test"], cfg.eval_tokens))


def data_generator(cfg: TrainConfig, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s data order: a function of the seed and the epoch only."""
    return torch.Generator().manual_seed(1_000_003 * cfg.seed + epoch)


def build_head(cfg: TrainConfig, corpus, d_model: int):
    options = {"token_counts": corpus.counts}
    if cfg.embeddings_from:
        options["embeddings"] = load_checkpoint(cfg.embeddings_from, "embeddings_from")["head"]["weight"]
    seeded(cfg.seed, 1)
    return make_head(cfg.head, corpus.vocab_size, d_model, **options)


def make_optimizer(cfg: TrainConfig, module: torch.nn.Module, lr: float):
    if cfg.optimizer == "adamw":  # decay on matrices only, never on biases and LayerNorm gains
        params = list(module.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(module.parameters(), lr=lr)
    return torch.optim.SGD(module.parameters(), lr=lr)


def distributed(cfg: TrainConfig):
    """(rank, world size, device); initialises torch.distributed when started by torchrun: NCCL with one
    GPU per process (LOCAL_RANK) on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = cfg.device.startswith("cuda")
    device = torch.device(cfg.device)
    if world > 1:
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        return torch.distributed.get_rank(), world, device
    return 0, 1, device



def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a GPU that torch says supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 (elsewhere bf16 autocast is emulated and slower than float32)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """bfloat16 for --autocast bf16, or auto where the device computes it natively; None: float32."""
    if cfg.autocast == "bf16" or (cfg.autocast == "auto" and native_bf16(device.type)):
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- the run's files

class Run:
    """The run folder (log.jsonl, summary.json) and the checkpoint folder (checkpoint.pt, best.pt)."""

    def __init__(self, cfg: TrainConfig, rank: int):
        self.cfg, self.dir, self.rank = cfg, cfg.out, rank
        self.checkpoint_dir = cfg.checkpoint_dir or cfg.out
        self.checkpoint = os.path.join(self.checkpoint_dir, "checkpoint.pt")
        self.best = os.path.join(self.checkpoint_dir, "best.pt")
        self.log_path = os.path.join(self.dir, "log.jsonl")
        if rank == 0:
            for folder, what in ((self.dir, "out"), (self.checkpoint_dir, "checkpoint_dir")):
                try:
                    os.makedirs(folder, exist_ok=True)
                except OSError as error:
                    raise ValueError(f"{what}: cannot create {folder!r} ({error.strerror})") from None
                if not os.access(folder, os.W_OK):
                    raise ValueError(f"{what}: {folder!r} is not writable")
            if not cfg.resume and (os.path.exists(self.log_path) or os.path.exists(self.checkpoint)):
                raise ValueError(f"out: {self.dir!r} already holds a run; pass --resume to continue it, "
                                 f"or choose another --out (nothing was changed)")

    def log(self, **record) -> None:
        if self.rank == 0:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)

    def set_aside_log_after(self, step: int) -> None:
        """On resume: the records a killed process wrote after the checkpoint's step will be written
        again; they move to log.superseded.jsonl so that log.jsonl holds each step once (all of them,
        invocations included, with step -1: a restart from nothing)."""
        if self.rank or not os.path.exists(self.log_path):
            return
        with open(self.log_path) as f:
            lines = [line for line in f if line.strip()]
        keep, later = [], []
        for line in lines:
            try:
                record_step = json.loads(line).get("step", 0)
            except ValueError:
                record_step = math.inf  # a torn last line
            (later if record_step > step else keep).append(line)
        if later:
            with open(os.path.join(self.dir, "log.superseded.jsonl"), "a") as f:
                f.writelines(later)
            tmp = self.log_path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, self.log_path)

    def save(self, path: str, payload: dict) -> None:
        if self.rank == 0:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, path + ".tmp")
            os.replace(path + ".tmp", path)  # a kill never leaves half a checkpoint


# --------------------------------------------------------------------------- the loop

def log_records(path: str) -> List[dict]:
    """The records of a run's log.jsonl ([] when there is none), without a line cut short when a run was
    stopped mid-write."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class Trainer:
    """One training loop for both protocols: epochs of optimiser steps, evaluation at epoch ends,
    the plateau schedule, checkpoints that resume exactly."""

    def __init__(self, cfg: TrainConfig):
        # an invocation's wall time counts from here: loading the corpus and a frozen body's feature pass are
        # part of what a run costs
        self.started = time.time()
        validate(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.rank, self.world, self.device = distributed(cfg)
        self.autocast = autocast_dtype(cfg, self.device)
        self.corpus = load_corpus(cfg.data, vocabulary=cfg.vocabulary)
        self.run = Run(cfg, self.rank)
        self.task = TASKS[cfg.protocol](cfg, self.corpus, self.rank, self.world, self.device)
        self.head = self.task.head
        self.schedule = Schedule(cfg.lr)
        self.epoch, self.window, self.step, self.steps_per_epoch = 0, 0, 0, 0
        self.invocations: List[dict] = []
        self.optimizer = make_optimizer(cfg, self.task.trainable(), cfg.lr)
        self.reassigner = None
        if cfg.reassign_every:  # the learned VQ mapping: only a run that asks for it loads the VQ-only rule
            from vqbench.training.reassign import CodeReassigner
            self.reassigner = CodeReassigner(self.head, cfg.reassign_every, cfg.reassign_margin)
        if cfg.resume and os.path.exists(self.run.checkpoint):
            self.restore(load_checkpoint(self.run.checkpoint, "resume"))
            self.run.set_aside_log_after(self.step)
        else:
            seeded(cfg.seed, 2)  # the dropout stream, the same for every head
            # --resume with no checkpoint (it was lost) starts over: nothing of an earlier log continues
            self.run.set_aside_log_after(-1)
        self.invocation = {"argv": relative_argv(sys.argv[1:]), "git_commit": git_commit(), "cpu_model": cpu_model(),
                           "cpu_id": cpu_id(), "torch_version": str(torch.__version__),
                           "threads": torch.get_num_threads(),
                           "world_size": self.world, "epochs": cfg.epochs, "steps": cfg.steps,
                           "device": str(self.device), "device_name": device_name(str(self.device)),
                           "autocast": str(self.autocast).replace("torch.", "") if self.autocast else "none",
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                           "from_step": self.step,
                           "to_step": self.step}
        self.run.log(step=self.step, invocation=self.invocation)
        self.tokens, self.elapsed, self.head_seconds, self.timed_steps = 0, 0.0, 0.0, 0
        self.deadline, self.out_of_time = stop_time(cfg.stop_at), False

    def restore(self, saved: dict) -> None:
        # a setting added after the checkpoint was written had its default then
        mine, theirs = identity(self.cfg), {**identity(TrainConfig()), **saved["config"]}
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            shown = ", ".join(f"{k}={theirs.get(k)!r} (now {mine.get(k)!r})" for k in differ)
            raise ValueError(f"resume: {self.run.checkpoint!r} was written with other settings: {shown}")
        if saved["corpus"] != corpus_fingerprint(self.corpus):
            raise ValueError(f"resume: {self.run.checkpoint!r} was trained on another corpus")
        if saved["world_size"] != self.world:
            raise ValueError(f"resume: {self.run.checkpoint!r} was written by {saved['world_size']} processes, "
                             f"not {self.world}")
        self.task.trainable().load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.task.load_state_dict(saved["task"])
        self.schedule = Schedule(**saved["schedule"])
        self.epoch, self.window, self.step = saved["epoch"], saved["window"], saved["step"]
        self.invocations = list(saved["invocations"])
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        if self.reassigner is not None:
            self.reassigner.load_state_dict(saved["reassigner"])

    def payload(self) -> dict:
        return {"config": identity(self.cfg), "corpus": corpus_fingerprint(self.corpus),
                "world_size": self.world, "model": self.task.trainable().state_dict(),
                "optimizer": self.optimizer.state_dict(), "task": self.task.state_dict(),
                "schedule": asdict(self.schedule), "epoch": self.epoch, "window": self.window,
                "step": self.step, "invocations": self.invocations + [self.invocation],
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                **({"reassigner": self.reassigner.state_dict()} if self.reassigner else {})}

    def checkpoint(self) -> None:
        # an invocation stopped later resumes from here, so its record ends here: steps and wall seconds
        self.invocation["to_step"] = self.step
        self.invocation["seconds"] = round(time.time() - self.started, 1)
        self.run.save(self.run.checkpoint, self.payload())
        if self.deadline is not None:  # past --stop-at: stop right after this checkpoint, so no step is lost
            late = torch.tensor([time.time() >= self.deadline], dtype=torch.int32, device=self.device)
            if self.world > 1:  # rank 0's clock decides for every process
                torch.distributed.broadcast(late, 0)
            self.out_of_time = bool(late.item())

    def save_best(self) -> None:
        self.run.save(self.run.best, {"config": identity(self.cfg), "corpus": corpus_fingerprint(self.corpus),
                                      "epoch": self.epoch + 1, "step": self.step,
                                      "valid_ppl": self.schedule.best_valid,
                                      "body": self.task.body.state_dict(), "head": self.head.state_dict()})

    def capped(self) -> bool:
        return bool(self.cfg.steps) and self.step >= self.cfg.steps

    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.schedule.stopped(self.cfg)

    def fit(self) -> None:
        while not self.finished() and not self.capped() and not self.out_of_time:
            batches = self.task.epoch_batches(self.epoch)
            self.steps_per_epoch = len(batches)
            if self.window == 0:
                self.task.begin_epoch()
            while self.window < len(batches) and not self.capped() and not self.out_of_time:
                self.train_step(batches[self.window])
            if self.window == len(batches):
                self.end_epoch()
        if not self.out_of_time:  # else the checkpoint that noticed the time is the last step's
            self.checkpoint()

    def lr_factor(self) -> float:
        """The step's share of the schedule's rate: linear warm-up over --warmup steps, then cosine decay
        to MIN_LR_RATIO at the end of --cosine-epochs epochs (1 without them): a function of the step."""
        step, warmup = self.step + 1, self.cfg.warmup
        factor = min(1.0, step / warmup) if warmup else 1.0
        if self.cfg.cosine_epochs:
            total = max(1, self.cfg.cosine_epochs * self.steps_per_epoch - warmup)
            progress = min(1.0, max(0.0, (step - warmup) / total))
            factor *= MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))
        return factor

    def autocast_context(self):
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None)

    def synchronize(self) -> None:
        if self.device.type == "cuda":  # kernels run asynchronously: time them once they have finished
            torch.cuda.synchronize(self.device)

    def train_step(self, batch) -> None:
        start = time.perf_counter()
        with self.autocast_context():
            loss, hidden, targets = self.task.loss(batch)
        if self.reassigner:  # timed: observing is part of training a learned mapping
            self.reassigner.observe(hidden.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.task.trainable().parameters(), self.cfg.clip)
        rate = self.schedule.lr * self.lr_factor()
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.optimizer.step()
        self.step += 1
        self.window += 1
        moved = self.reassigner.maybe_reassign(self.step) if self.reassigner else None  # timed, as observing
        self.synchronize()
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        self.schedule.train_seconds += seconds
        self.tokens += targets.numel() * self.world
        if moved is not None:  # the share of the vocabulary, and of the tokens seen, that changed code
            seen = self.reassigner.last_seen
            self.run.log(step=self.step, reassigned_tokens=moved, reassigned_share=moved / self.head.vocab_size,
                         seen_tokens=seen, reassigned_share_of_seen=moved / seen if seen else 0.0)
        if self.step % self.cfg.log_every == 0:
            with self.autocast_context():
                self.head_seconds += time_head(self.head, hidden.detach(), targets, self.synchronize,
                                               hidden_grad=self.cfg.protocol != "frozen")
            self.timed_steps += 1
            self.run.log(step=self.step, epoch=self.epoch + 1, loss=self.task.logged_loss(loss),
                         lr=rate, tokens_per_s=self.tokens / self.elapsed, **self.speed())
        if self.rank == 0 and self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            self.run.log(step=self.step, valid_ppl=self.task.evaluate("validation"))
        if self.step % self.cfg.checkpoint_every == 0:
            self.checkpoint()

    def end_epoch(self) -> None:
        valid = self.task.evaluate("validation") if self.rank == 0 else 0.0
        if self.world > 1:  # every process must take the same schedule decision
            shared = torch.tensor([valid], dtype=torch.float64)
            torch.distributed.broadcast(shared, 0)
            valid = float(shared)
        if self.schedule.end_epoch(self.epoch + 1, self.step, valid, self.cfg):
            self.save_best()
        self.run.log(**self.schedule.history[-1])
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr
        self.epoch, self.window = self.epoch + 1, 0
        self.checkpoint()

    def speed(self) -> dict:
        """tokens/s and the output layer's share of a step in this invocation."""
        steps = self.step - self.invocation["from_step"]
        share = float("nan")
        if self.timed_steps and steps and self.elapsed:
            share = (self.head_seconds / self.timed_steps) / (self.elapsed / steps)
        return {"output_share": share}

    def run_speed(self) -> dict:
        """tokens/s and output share of this invocation; of the last training line in log.jsonl when this one
        trained nothing (a run resumed only to finish its evaluation), so that no run reports 0 tokens/s."""
        if self.tokens:
            return {"tokens_per_s": self.tokens / self.elapsed, **self.speed()}
        last = {"tokens_per_s": math.nan, "output_share": math.nan}
        for record in log_records(self.run.log_path):
            if "tokens_per_s" in record:
                last = {k: record.get(k, math.nan) for k in last}
        return last

    def evaluated_model(self) -> str:
        """Load the best-validation model when the schedule ended the run; 'best' or 'last'."""
        if self.finished() and os.path.exists(self.run.best):
            best = load_checkpoint(self.run.best, "best")
            self.task.body.load_state_dict(best["body"])
            self.head.load_state_dict(best["head"])
            return "best"
        return "last"

    def summary(self) -> dict:
        evaluated = self.evaluated_model()
        # the best model's validation perplexity was measured when it was saved (same weights): not again,
        # since one pass over a V-wide split costs minutes at V=100k
        best = evaluated == "best" and math.isfinite(self.schedule.best_valid)
        valid = self.schedule.best_valid if best else self.task.evaluate("validation")
        test = self.task.evaluate("test")
        history = self.schedule.history
        return {
            "head": self.cfg.head, "protocol": self.cfg.protocol, "seed": self.cfg.seed,
            "output_params": self.head.num_parameters(), "valid_ppl": valid, "test_ppl": test,
            "evaluated": evaluated, "best_epoch": self.schedule.best_epoch, "epochs": self.epoch,
            "steps": self.step, "stop": self.stop_reason(),
            "last_epoch_gain": history[-1]["relative_gain"] if history else None,
            "history": history, **self.head.quality_metrics(self.task.test_targets()),
            **self.run_speed(),
            "precision": str(next(self.head.parameters()).dtype).replace("torch.", ""),
            "autocast": self.invocation["autocast"], **self.parameter_counts(),
            "body": body_label(self.cfg), "vocabulary": self.corpus.label,
            "git_commit": git_commit(), "cpu_model": cpu_model(), "cpu_id": cpu_id(),
            "torch_version": str(torch.__version__), "threads": torch.get_num_threads(),
            "corpus": corpus_fingerprint(self.corpus),
            "config": {k: relative_path(v) for k, v in asdict(self.cfg).items()},
            "invocations": self.invocations + [self.invocation]}

    def parameter_counts(self) -> dict:
        """total_params: the model's distinct parameters (a tied matrix once); shared_params: those the
        output layer shares with the body, counted in output_params too; tied: what is shared."""
        model = self.task.trainable()
        total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
        shared = self.head.weight.numel() if self.cfg.tie_embeddings else 0
        return {"total_params": total, "shared_params": shared,
                "tied": "output weight = input embedding" if shared else ""}

    def stop_reason(self) -> str:
        if self.schedule.stopped(self.cfg):
            return f"plateau: {self.cfg.patience} epochs in a row improved validation by < {self.cfg.plateau:g}"
        if self.epoch >= self.cfg.epochs:
            return f"epochs: the budget of {self.cfg.epochs} epochs"
        return f"steps: the cap of {self.cfg.steps} steps"


def time_head(head, hidden, targets, synchronize=lambda: None, hidden_grad: bool = True) -> float:
    """Seconds of the head's loss forward + backward on detached hidden states (gradients discarded).
    hidden_grad: whether the backward computes the gradient of the hidden states, as a step does only when the
    body trains (without it a frozen body's step is the head alone, and the probe would time more than a step)."""
    saved = [p.grad for p in head.parameters()]
    hidden = hidden.requires_grad_(hidden_grad)
    synchronize()
    start = time.perf_counter()
    head.loss(hidden, targets).backward()
    synchronize()
    seconds = time.perf_counter() - start
    for p, g in zip(head.parameters(), saved):
        p.grad = g
    return seconds


def train(cfg: TrainConfig) -> dict:
    """Train (or continue) a run; returns its summary (empty on processes other than rank 0)."""
    trainer = Trainer(cfg)
    trainer.fit()
    if trainer.out_of_time and not trainer.finished() and not trainer.capped():
        trainer.run.log(step=trainer.step, stopped_at=cfg.stop_at)  # no summary: the run is not over
        if trainer.rank == 0:
            print(f"python -m vqbench.train: stopped at step {trainer.step}, the first checkpoint after "
                  f"--stop-at {cfg.stop_at}; continue with --resume (--out {cfg.out})", file=sys.stderr)
        return {}
    if trainer.rank != 0:
        return {}
    summary = trainer.summary()
    trainer.invocation["seconds"] = round(time.time() - trainer.started, 1)
    path = os.path.join(trainer.run.dir, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)  # whole or absent: a runner's other lanes read it while it is written
    trainer.run.log(step=trainer.step, summary={k: v for k, v in summary.items()
                                                if k not in ("config", "history", "invocations")})
    return summary


def stop_time(text: str) -> Optional[float]:
    """--stop-at as seconds since the epoch (None when empty): ISO 8601, UTC unless it names a zone."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"stop_at: expected an ISO 8601 time such as 2026-12-05T03:15, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m vqbench.train", description=__doc__.split("\n\n")[0])
    for item in fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        default = item.default
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=f"(default {default})")
            continue
        kind = {"threads": int}.get(item.name, type(default) if default is not None else str)
        p.add_argument(flag, type=kind, default=default, help=f"(default {default})")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that the heads it registers can be named (repeatable)")
    args = vars(p.parse_args(argv))
    try:  # not part of the run's config: a resumed run names its modules again
        import_modules(args.pop("imports"))
    except ValueError as error:
        p.error(str(error))
    cfg = TrainConfig(**args)
    try:
        validate(cfg)
    except ValueError as error:
        name, _, why = str(error).partition(": ")
        p.error(f"--{name.replace('_', '-')}: {why}")
    return cfg


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (ValueError, OSError) as error:
        print(f"python -m vqbench.train: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # checkpoints are written whole (temporary file, then rename): nothing to undo
        print(f"python -m vqbench.train: interrupted; continue from the last checkpoint with --resume "
              f"(--out {cfg.out})", file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
