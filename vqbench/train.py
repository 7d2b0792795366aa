"""python -m vqbench.train: a small LSTM language model with any head as its output layer.

    python -m vqbench.train --head softmax --steps 3000 --out results/quality/runs/softmax
    python -m vqbench.train --head vq:K=1024 --protocol frozen --body-from results/quality/runs/softmax/checkpoint.pt
    torchrun --nproc_per_node=2 -m vqbench.train --head softmax ...      # DDP: gloo on CPU, nccl on CUDA

Protocols: ``joint`` trains body and head together from scratch (same body, seed, data order and
budget for every head). ``frozen`` loads a trained body, computes its hidden states once and trains
only the head on them. Evaluation uses the head's exact, normalised ``target_log_prob``. The run
folder gets log.jsonl, checkpoint.pt (``--resume`` continues from it) and summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from vqbench.data import batchify, bptt_batches, load_corpus
from vqbench.lm import LanguageModel, LSTMBody, detach_state
from vqbench.reassign import CodeReassigner
from vqbench.registry import make_head


@dataclass
class TrainConfig:
    head: str = "softmax"
    protocol: str = "joint"
    data: Optional[str] = None
    out: str = "results/quality/runs/run"
    steps: int = 3000
    batch_size: int = 20
    bptt: int = 35
    d_model: int = 256
    layers: int = 2
    dropout: float = 0.2
    lr: float = 2e-3
    clip: float = 0.25
    eval_every: int = 1000
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


def distributed():
    """(rank, world size); initialises torch.distributed when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def build_head(cfg: TrainConfig, corpus, d_model: int):
    options = {"token_counts": corpus.counts}
    if cfg.embeddings_from:
        options["embeddings"] = torch.load(cfg.embeddings_from, map_location="cpu")["head"]["weight"]
    torch.manual_seed(cfg.seed + 1)
    return make_head(cfg.head, corpus.vocab_size, d_model, **options)


def build_reassigner(cfg: TrainConfig, head, saved=None):
    """The learned-mapping rule of vqbench.reassign when --reassign-every > 0, else None."""
    if not cfg.reassign_every:
        return None
    reassigner = CodeReassigner(head, cfg.reassign_every)
    if saved is not None and "reassigner" in saved:
        reassigner.load_state_dict(saved["reassigner"])
    return reassigner


@torch.no_grad()
def perplexity(body, head, ids: torch.Tensor, bptt: int, batch_size: int = 10) -> float:
    """exp(mean NLL) of the split under the head's exact target_log_prob."""
    body.eval()
    head.eval()
    total, count, state = 0.0, 0, None
    for x, y in bptt_batches(batchify(ids, batch_size), bptt):
        hidden, state = body(x, state)
        lp = head.target_log_prob(hidden, y)
        total -= float(lp.double().sum())
        count += lp.numel()
    body.train()
    head.train()
    return math.exp(total / count)


def _windows(streams, bptt, start):
    """Endless (new_epoch, x, y) over BPTT windows, epoch after epoch, from window ``start``."""
    windows = list(bptt_batches(streams, bptt))
    index = start
    while True:
        yield index % len(windows) == 0, *windows[index % len(windows)]
        index += 1


def train_joint(cfg: TrainConfig, corpus, run: "Run"):
    rank, world = distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size: {cfg.batch_size} streams do not split over {world} processes")
    torch.manual_seed(cfg.seed)
    body = LSTMBody(corpus.vocab_size, cfg.d_model, cfg.layers, cfg.dropout)
    head = build_head(cfg, corpus, cfg.d_model)
    model = LanguageModel(body, head)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, state, saved = 0, None, None
    if cfg.resume and os.path.exists(run.checkpoint):
        saved = torch.load(run.checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, state = saved["step"], saved["state"]
        torch.set_rng_state(saved["rng"])
    reassigner = build_reassigner(cfg, head, saved)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def save(step, state):
        run.save(model=model.state_dict(), optimizer=optimizer.state_dict(), step=step, state=state,
                 rng=torch.get_rng_state(), body=body.state_dict(), head=head.state_dict(),
                 **({"reassigner": reassigner.state_dict()} if reassigner else {}))

    streams = batchify(run.train_ids, cfg.batch_size)
    per_rank = cfg.batch_size // world
    streams = streams[rank * per_rank:(rank + 1) * per_rank]
    windows = _windows(streams, cfg.bptt, step)
    tokens, elapsed, head_seconds, timed_steps = 0, 0.0, 0.0, 0
    while step < cfg.steps:
        new_epoch, x, y = next(windows)
        if new_epoch:
            state = None  # a new epoch starts the streams afresh
        start = time.perf_counter()
        loss, state, hidden = wrapped(x, y, state)
        state = detach_state(state)
        if reassigner:
            reassigner.observe(hidden, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        elapsed += time.perf_counter() - start
        tokens += y.numel() * world
        step += 1
        moved = reassigner.maybe_reassign(step) if reassigner else None
        if moved is not None:
            run.log(step=step, reassigned_tokens=moved)
        if step % cfg.log_every == 0:
            head_seconds += time_head(head, hidden.detach(), y)
            timed_steps += 1
            logged = loss.detach().clone()
            if world > 1:  # the global batch's mean loss, as one process would report it
                torch.distributed.all_reduce(logged)
                logged /= world
            run.log(step=step, loss=float(logged), tokens_per_s=tokens / elapsed,
                    output_share=output_share(head_seconds, timed_steps, elapsed, step - run.first_step))
        if rank == 0 and step % cfg.checkpoint_every == 0:
            save(step, state)
        if rank == 0 and step % cfg.eval_every == 0 and step < cfg.steps:
            run.log(step=step, valid_ppl=perplexity(body, head, run.valid_ids, cfg.bptt))
    if rank == 0:
        save(step, state)
    return body, head, {"tokens_per_s": tokens / max(elapsed, 1e-9),
                        "output_share": output_share(head_seconds, timed_steps, elapsed, step - run.first_step)}


def output_share(head_seconds, timed_steps, elapsed, steps):
    """Share of a training step spent in the output layer: mean head forward+backward time
    (timed on a step's hidden states every log_every steps) over the mean step time."""
    if not timed_steps or not steps or not elapsed:
        return float("nan")
    return (head_seconds / timed_steps) / (elapsed / steps)


def time_head(head, hidden, targets) -> float:
    """Seconds of the head's loss forward + backward on detached hidden states (gradients discarded)."""
    saved = [p.grad for p in head.parameters()]
    hidden = hidden.requires_grad_(True)
    start = time.perf_counter()
    head.loss(hidden, targets).backward()
    seconds = time.perf_counter() - start
    for p, g in zip(head.parameters(), saved):
        p.grad = g
    return seconds


@torch.no_grad()
def hidden_states(body, ids, bptt, batch_size):
    """All hidden states of a split: ([T, d], [T] targets), from a frozen body."""
    body.eval()
    hs, ts, state = [], [], None
    for x, y in bptt_batches(batchify(ids, batch_size), bptt):
        h, state = body(x, state)
        hs.append(h.reshape(-1, h.shape[-1]))
        ts.append(y.reshape(-1))
    return torch.cat(hs), torch.cat(ts)


def train_frozen(cfg: TrainConfig, corpus, run: "Run"):
    if not cfg.body_from:
        raise ValueError("body_from: the frozen protocol needs the checkpoint of a trained body")
    saved = torch.load(cfg.body_from, map_location="cpu", weights_only=False)
    d_model = saved["body"]["embedding.weight"].shape[1]
    body = LSTMBody(corpus.vocab_size, d_model, cfg.layers, cfg.dropout)
    body.load_state_dict(saved["body"])
    head = build_head(cfg, corpus, d_model)
    reassigner = build_reassigner(cfg, head)
    train_h, train_t = frozen_states(cfg, body, "train", run.train_ids, cfg.batch_size)
    valid_h, valid_t = frozen_states(cfg, body, "valid", run.valid_ids, 10)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens, elapsed = 0, 0.0
    for step in range(1, cfg.steps + 1):
        pick = torch.randint(0, train_t.numel(), (cfg.frozen_batch,), generator=generator)
        hidden, targets = train_h[pick], train_t[pick]
        start = time.perf_counter()
        loss = head.loss(hidden, targets)
        if reassigner:  # timed, as in the joint protocol: it is part of training a learned mapping
            reassigner.observe(hidden, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed += time.perf_counter() - start
        tokens += cfg.frozen_batch
        moved = reassigner.maybe_reassign(step) if reassigner else None
        if moved is not None:
            run.log(step=step, reassigned_tokens=moved)
        if step % cfg.log_every == 0:
            run.log(step=step, loss=float(loss.detach()), tokens_per_s=tokens / elapsed)
        if step % cfg.eval_every == 0 and step < cfg.steps:
            run.log(step=step, valid_ppl=frozen_ppl(head, valid_h, valid_t))
    run.save(body=body.state_dict(), head=head.state_dict(), step=cfg.steps)
    return body, head, {"tokens_per_s": tokens / max(elapsed, 1e-9), "output_share": 1.0}


def frozen_states(cfg: TrainConfig, body, split, ids, batch_size):
    """hidden_states of a frozen body, cached in a file beside its checkpoint (the ablations share them)."""
    stamp = os.stat(cfg.body_from).st_mtime_ns
    path = f"{cfg.body_from}.hidden-{split}-{stamp}-{len(ids)}-b{batch_size}-t{cfg.bptt}.pt"
    if os.path.exists(path):
        return torch.load(path)
    states = hidden_states(body, ids, cfg.bptt, batch_size)
    torch.save(states, path + ".tmp")
    os.replace(path + ".tmp", path)
    return states


@torch.no_grad()
def frozen_ppl(head, hidden, targets, chunk=8192):
    total = sum(-float(head.target_log_prob(hidden[i:i + chunk], targets[i:i + chunk]).double().sum())
                for i in range(0, targets.numel(), chunk))
    return math.exp(total / targets.numel())


class Run:
    """The run folder: log.jsonl, checkpoint.pt, summary.json."""

    def __init__(self, cfg: TrainConfig, corpus):
        self.cfg, self.dir = cfg, cfg.out
        os.makedirs(self.dir, exist_ok=True)
        self.checkpoint = os.path.join(self.dir, "checkpoint.pt")
        cut = lambda ids, n: ids[:n] if n else ids  # noqa: E731
        self.train_ids = cut(corpus.ids["train"], cfg.train_tokens)
        self.valid_ids = cut(corpus.ids["validation"], cfg.eval_tokens)
        self.test_ids = cut(corpus.ids["test"], cfg.eval_tokens)
        self.first_step = 0
        if cfg.resume and os.path.exists(self.checkpoint):
            self.first_step = torch.load(self.checkpoint, map_location="cpu", weights_only=False)["step"]

    def log(self, **record):
        if int(os.environ.get("RANK", "0")) == 0:
            with open(os.path.join(self.dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)

    def save(self, **payload):
        tmp = self.checkpoint + ".tmp"
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint)  # a kill never leaves half a checkpoint


def train(cfg: TrainConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = load_corpus(cfg.data)
    run = Run(cfg, corpus)
    started = time.time()
    if cfg.protocol == "joint":
        body, head, speed = train_joint(cfg, corpus, run)
    elif cfg.protocol == "frozen":
        body, head, speed = train_frozen(cfg, corpus, run)
    else:
        raise ValueError(f"protocol: unknown protocol {cfg.protocol!r}; expected joint or frozen")
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    if cfg.protocol == "frozen":
        valid = frozen_ppl(head, *frozen_states(cfg, body, "valid", run.valid_ids, 10))
        test = frozen_ppl(head, *frozen_states(cfg, body, "test", run.test_ids, 10))
    else:
        valid = perplexity(body, head, run.valid_ids, cfg.bptt)
        test = perplexity(body, head, run.test_ids, cfg.bptt)
    summary = {"head": cfg.head, "protocol": cfg.protocol, "output_params": head.num_parameters(),
               "valid_ppl": valid, "test_ppl": test, **within_code_share(head, run.test_ids), **speed,
               "seconds": time.time() - started,
               "torch_version": torch.__version__, "threads": torch.get_num_threads(), "config": asdict(cfg)}
    with open(os.path.join(run.dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    run.log(**{k: v for k, v in summary.items() if k != "config"})
    return summary


def within_code_share(head, targets) -> dict:
    """For VQ-Logits without bias: the mean over test targets of log n (n: tokens sharing the target's code),
    the nats each target pays for the uniform choice inside its code. Exactly, test perplexity = (perplexity
    of the codes) x exp(within_code_nats): no codebook can remove the second factor, only the mapping."""
    if not hasattr(head, "code_sizes") or head.bias is not None:
        return {}
    nats = float(head.code_sizes[head.mapping[targets]].double().log().mean())
    return {"within_code_nats": nats, "within_code_ppl_factor": math.exp(nats)}


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m vqbench.train", description=__doc__.split("\n\n")[0])
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", help=f"(default {value})")
        else:
            kind = type(value) if value is not None else str
            if name == "threads":
                kind = int
            p.add_argument(flag, type=kind, default=value, help=f"(default {value})")
    args = p.parse_args(argv)
    if args.protocol not in ("joint", "frozen"):
        p.error(f"--protocol: expected joint or frozen, got {args.protocol!r}")
    for name in ("steps", "batch_size", "bptt", "d_model", "layers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    return TrainConfig(**vars(args))


def main(argv=None) -> int:
    train(parse_args(argv))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
