"""The transformer track: the GPT body is causal, cl100k_base tokenises WikiText-2 with the LLM's whole
vocabulary, a tied softmax shares one matrix and says so, AdamW decays matrices only, warm-up and cosine
decay set each step's rate, and bf16 autocast is recorded."""

import json
import math
import os

import pytest
import torch

from vqbench import train
from vqbench.training.data import default_corpus_dir
from vqbench.training.lm import GPTBody

needs_corpus = pytest.mark.skipif(not os.path.isdir(default_corpus_dir()),
                                  reason=f"no WikiText-2 at {default_corpus_dir()}")

TINY = ["--body", "gpt", "--d-model", "16", "--layers", "1", "--heads", "2", "--bptt", "16", "--batch-size", "4",
        "--train-tokens", "600", "--eval-tokens", "200", "--optimizer", "adamw", "--lr", "0.003", "--threads", "1",
        "--log-every", "1", "--checkpoint-every", "1000"]


def records(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_the_gpt_body_is_causal_and_refuses_windows_beyond_its_context():
    torch.manual_seed(0)
    body = GPTBody(50, 16, layers=2, heads=2, context=8, dropout=0.0).eval()
    ids = torch.randint(0, 50, (2, 8))
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 50
    hidden, state = body(ids)
    other, _ = body(changed)
    assert hidden.shape == (2, 8, 16) and state is None
    assert torch.equal(hidden[:, :5], other[:, :5])  # no position sees a later token
    assert not torch.allclose(hidden[:, 5:], other[:, 5:])
    with pytest.raises(ValueError, match="^ids: windows of 9 tokens exceed the context of 8"):
        body(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="^heads:"):
        GPTBody(50, 16, heads=3)


@needs_corpus
def test_cl100k_base_keeps_the_whole_llm_vocabulary_ranked_by_training_count():
    pytest.importorskip("tiktoken")
    from vqbench.training.data import cl100k_encoding, load_corpus
    corpus = load_corpus(vocabulary="cl100k_base")
    assert corpus.vocab_size == 100_277 and corpus.label == "cl100k_base-100277"
    assert bool((corpus.counts[:-1] >= corpus.counts[1:]).all())  # ids by decreasing training count
    assert int(corpus.counts.sum()) == corpus.ids["train"].numel()
    assert corpus.counts[-1] == 0  # tokens never seen in training keep their ids
    encoding = cl100k_encoding()
    first = "".join(corpus.itos[int(i)] for i in corpus.ids["test"][:12])
    with open(os.path.join(default_corpus_dir(), "test.txt")) as f:
        assert f.read().startswith(first)
    assert encoding.n_vocab == corpus.vocab_size


@needs_corpus
def test_a_tied_softmax_shares_the_embedding_and_counts_it_once(tmp_path):
    runs = {}
    for tied in (False, True):
        out = str(tmp_path / f"tied-{tied}")
        runs[tied] = train.train(train.parse_args(TINY + ["--steps", "3", "--out", out]
                                                  + (["--tie-embeddings"] if tied else [])))
    untied, tied = runs[False], runs[True]
    shared = 33_278 * 16
    assert tied["shared_params"] == shared and tied["tied"] == "output weight = input embedding"
    assert untied["shared_params"] == 0 and untied["tied"] == ""
    assert tied["output_params"] == untied["output_params"] == shared
    assert untied["total_params"] - tied["total_params"] == shared
    assert tied["body"] == "gpt-1x16" and tied["vocabulary"] == "word-33278"
    saved = torch.load(tmp_path / "tied-True" / "checkpoint.pt", weights_only=True)
    assert torch.equal(saved["model"]["head.weight"], saved["model"]["body.embedding.weight"])
    resumed = train.train(train.parse_args(TINY + ["--steps", "5", "--tie-embeddings", "--resume",
                                                   "--out", str(tmp_path / "tied-True")]))
    assert resumed["total_params"] == tied["total_params"]


def test_tying_needs_a_softmax_head_and_cuda_needs_a_device(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(TINY + ["--head", "vq:K=8", "--tie-embeddings", "--out", "x"])
    assert "--tie-embeddings: ties a softmax head's weight" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            train.parse_args(TINY + ["--device", "cuda", "--out", "x"])
        assert "--device: 'cuda' asked for, but this torch sees no CUDA device" in capsys.readouterr().err


def test_adamw_decays_matrices_only():
    cfg = train.TrainConfig(optimizer="adamw", weight_decay=0.1)
    body = GPTBody(20, 8, layers=1, heads=2, context=4)
    groups = train.make_optimizer(cfg, body, 1e-3).param_groups
    assert groups[0]["weight_decay"] == 0.1 and all(p.dim() == 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.dim() == 1 for p in groups[1]["params"])
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(body.parameters()))


@needs_corpus
def test_warmup_then_cosine_decay_set_each_steps_rate_and_bf16_is_recorded(tmp_path):
    out = str(tmp_path / "run")
    summary = train.train(train.parse_args(TINY + ["--warmup", "4", "--cosine-epochs", "1", "--epochs", "1",
                                                   "--autocast", "bf16", "--out", out]))
    rates = [r["lr"] for r in records(out) if "loss" in r]
    steps = len(rates)  # one epoch: 600 tokens in 4 streams of 16-token windows
    assert steps == summary["steps"] == math.ceil((600 // 4 - 1) / 16)
    assert rates[:4] == pytest.approx([0.003 * k / 4 for k in (1, 2, 3, 4)])
    assert rates[-1] == pytest.approx(0.003 * train.MIN_LR_RATIO)  # the cosine's end at the epoch's last step
    assert all(a > b for a, b in zip(rates[3:], rates[4:]))
    assert summary["autocast"] == "bfloat16" and summary["invocations"][-1]["autocast"] == "bfloat16"
    assert summary["precision"] == "float32" and math.isfinite(summary["test_ppl"])


def test_auto_autocast_follows_the_cpus_native_bf16():
    from vqbench.measuring.provenance import cpu_flags
    from vqbench.train import native_bf16
    cfg = train.TrainConfig(autocast="auto")
    expected = torch.bfloat16 if cpu_flags() & {"avx512_bf16", "amx_bf16"} else None
    assert train.autocast_dtype(cfg, torch.device("cpu")) == expected
    assert native_bf16("cpu") == (expected is not None)
    assert train.autocast_dtype(train.TrainConfig(), torch.device("cpu")) is None


@needs_corpus
def test_a_checkpoint_written_before_the_new_settings_resumes(tmp_path):
    args = ["--d-model", "16", "--layers", "1", "--bptt", "8", "--batch-size", "4", "--train-tokens", "600",
            "--eval-tokens", "200", "--threads", "1", "--checkpoint-every", "1000", "--out", str(tmp_path)]
    train.train(train.parse_args(args + ["--steps", "2"]))
    path = tmp_path / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    for key in ("body", "heads", "vocabulary", "tie_embeddings", "weight_decay", "warmup", "cosine_epochs",
                "autocast", "reassign_margin"):
        del saved["config"][key]  # as an LSTM checkpoint of the previous version stores it
    torch.save(saved, path)
    assert train.train(train.parse_args(args + ["--steps", "4", "--resume"]))["steps"] == 4


@needs_corpus
def test_a_learned_run_logs_the_share_of_tokens_moved_at_each_reassignment(tmp_path):
    out = str(tmp_path / "run")
    train.train(train.parse_args(["--head", "vq:K=64", "--d-model", "16", "--layers", "1", "--bptt", "8",
                                  "--batch-size", "4", "--train-tokens", "600", "--eval-tokens", "200",
                                  "--threads", "1", "--steps", "6", "--reassign-every", "2",
                                  "--reassign-margin", "0.01", "--out", out]))
    moves = [r for r in records(out) if "reassigned_tokens" in r]
    assert [r["step"] for r in moves] == [2, 4, 6]
    for r in moves:
        assert r["reassigned_share"] == pytest.approx(r["reassigned_tokens"] / 33_278)
        assert 0 < r["seen_tokens"] <= 64 and r["reassigned_share_of_seen"] == pytest.approx(
            r["reassigned_tokens"] / r["seen_tokens"])


@needs_corpus
def test_a_tied_gpt_run_with_warmup_and_cosine_resumes_exactly(tmp_path):
    common = TINY + ["--tie-embeddings", "--warmup", "3", "--cosine-epochs", "2", "--epochs", "2",
                     "--checkpoint-every", "4"]
    straight = str(tmp_path / "straight")
    train.train(train.parse_args(common + ["--steps", "14", "--out", straight]))
    halves = str(tmp_path / "halves")
    train.train(train.parse_args(common + ["--steps", "6", "--out", halves]))
    train.train(train.parse_args(common + ["--steps", "14", "--out", halves, "--resume"]))
    curve = lambda folder, key: [r[key] for r in records(folder) if "loss" in r]  # noqa: E731
    assert curve(halves, "lr") == pytest.approx(curve(straight, "lr"), rel=1e-12)
    assert curve(halves, "loss") == pytest.approx(curve(straight, "loss"), rel=1e-6)


@needs_corpus
def test_a_vq_head_trains_on_a_frozen_gpt_body(tmp_path):
    """The estimate's premise is tested on frozen bodies: the frozen protocol rebuilds a GPT body too."""
    body_run = tmp_path / "softmax"
    train.train(train.parse_args(TINY + ["--steps", "4", "--out", str(body_run)]))
    frozen = train.train(train.parse_args(TINY + ["--head", "vq:K=64", "--protocol", "frozen", "--body-from",
                                                  str(body_run / "checkpoint.pt"), "--steps", "6", "--frozen-batch",
                                                  "64", "--out", str(tmp_path / "vq")]))
    assert frozen["protocol"] == "frozen" and math.isfinite(frozen["test_ppl"]) and frozen["steps"] == 6
