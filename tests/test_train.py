"""Training each head on a slice of WikiText-2: the loss falls, perplexity is finite, resume
continues exactly, frozen training works, and 2-process DDP matches one process."""

import json
import math
import os
import subprocess
import sys

import pytest

from vqbench import train
from vqbench.data import default_corpus_dir

pytestmark = pytest.mark.skipif(not os.path.isdir(default_corpus_dir()),
                                reason=f"no WikiText-2 at {default_corpus_dir()}")

SMALL = ["--d-model", "32", "--layers", "1", "--bptt", "20", "--batch-size", "8", "--train-tokens", "40000",
         "--eval-tokens", "4000", "--lr", "0.005", "--threads", "1"]


def losses(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r and "valid_ppl" not in r]


@pytest.mark.parametrize("head", ["softmax", "softmax:chunk=64", "adaptive", "hierarchical",
                                  "hierarchical:tree=huffman", "lowrank:rank=16", "vq:K=256"])
def test_every_head_learns(tmp_path, head):
    out = str(tmp_path / "run")
    summary = train.train(train.parse_args(SMALL + ["--head", head, "--steps", "200", "--log-every", "20",
                                                     "--eval-every", "1000", "--out", out]))
    curve = losses(out)
    assert len(curve) == 10
    assert sum(curve[-3:]) / 3 < sum(curve[:2]) / 2 - 0.5, curve
    assert math.isfinite(summary["valid_ppl"]) and math.isfinite(summary["test_ppl"])
    assert summary["valid_ppl"] < 33278
    assert 0 < summary["output_share"] <= 1.5 and summary["tokens_per_s"] > 0
    assert os.path.exists(os.path.join(out, "summary.json")) and os.path.exists(os.path.join(out, "checkpoint.pt"))


@pytest.mark.parametrize("learned", [False, True], ids=["fixed-mapping", "learned-mapping"])
def test_resume_continues_exactly(tmp_path, learned):
    common = SMALL + ["--head", "vq:K=64", "--log-every", "5", "--checkpoint-every", "10", "--eval-every", "1000"]
    if learned:
        common += ["--reassign-every", "4"]
    straight = str(tmp_path / "straight")
    train.train(train.parse_args(common + ["--steps", "20", "--out", straight]))
    halves = str(tmp_path / "halves")
    train.train(train.parse_args(common + ["--steps", "10", "--out", halves]))
    train.train(train.parse_args(common + ["--steps", "20", "--out", halves, "--resume"]))
    assert losses(halves)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-6)
    if learned:
        with open(os.path.join(straight, "log.jsonl")) as f:
            moves = [r["reassigned_tokens"] for r in map(json.loads, f) if "reassigned_tokens" in r]
        assert len(moves) == 5 and moves[0] > 0


def test_frozen_protocol_trains_the_head_on_a_trained_body(tmp_path):
    body = str(tmp_path / "body")
    train.train(train.parse_args(SMALL + ["--head", "softmax", "--steps", "60", "--out", body]))
    out = str(tmp_path / "frozen")
    summary = train.train(train.parse_args(SMALL + [
        "--head", "vq:K=128,mapping=kmeans", "--protocol", "frozen", "--body-from", f"{body}/checkpoint.pt",
        "--embeddings-from", f"{body}/checkpoint.pt", "--steps", "60", "--log-every", "10",
        "--frozen-batch", "256", "--out", out]))
    curve = losses(out)
    assert curve[-1] < curve[0]
    assert math.isfinite(summary["valid_ppl"]) and summary["protocol"] == "frozen"
    cached = [name for name in os.listdir(body) if ".hidden-" in name]
    assert sorted(name.split("-")[1] for name in cached) == ["test", "train", "valid"]

    learned = str(tmp_path / "learned")  # same hidden states from the cache, learned mapping
    again = train.train(train.parse_args(SMALL + [
        "--head", "vq:K=128", "--protocol", "frozen", "--body-from", f"{body}/checkpoint.pt",
        "--steps", "60", "--log-every", "10", "--frozen-batch", "256", "--reassign-every", "20", "--out", learned]))
    assert math.isfinite(again["valid_ppl"])
    with open(os.path.join(learned, "log.jsonl")) as f:
        assert sum("reassigned_tokens" in r for r in map(json.loads, f)) == 3


def test_bad_arguments():
    with pytest.raises(SystemExit):
        train.parse_args(["--protocol", "sideways"])
    with pytest.raises(ValueError, match="body_from"):
        train.train(train.parse_args(SMALL + ["--protocol", "frozen", "--steps", "1", "--out", "/tmp/x"]))


def test_two_process_ddp_matches_one_process(tmp_path):
    common = SMALL + ["--head", "softmax", "--steps", "6", "--log-every", "1", "--dropout", "0",
                      "--eval-every", "1000", "--batch-size", "4", "--threads", "1"]
    single = str(tmp_path / "single")
    train.train(train.parse_args(common + ["--out", single]))
    ddp = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                    "-m", "vqbench.train", *common, "--out", ddp], check=True, env=env, timeout=300,
                   capture_output=True)
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-4)
