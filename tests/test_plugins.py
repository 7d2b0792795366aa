"""A head from outside the repository: one file, picked up by ``--import`` or the entry-point group
``vqbench.heads``, measured, tabled and reported with no other edit."""

import csv
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vqbench.heads import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a sixth head, as a user would write it: one class, its options and metadata declared once
HEAD_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    from vqbench.heads.contract import LogitsHead, Option
    from vqbench.heads.registry import register_head


    class ScaledSoftmax(LogitsHead):
        """Softmax over scaled logits s h W^T.

        Shapes: hidden [N, d] -> logits [N, V]; weight W [V, d]. Parameters (closed form): V * d.
        """

        OPTIONS = (Option("scale", float, 1.0, "multiplies every logit"),)
        TITLE = "scaled softmax"
        SUMMARY = "a full softmax whose logits are scaled"
        METHOD = "A test head: full softmax with its logits multiplied by a constant."
        SMALL_EXAMPLES = ("{name}", "{name}:scale=2")
        CAPABILITIES = frozenset({{"label_smoothing", "logits"}})

        def __init__(self, vocab_size, d_model, *, scale=1.0, token_counts=None):
            super().__init__(vocab_size, d_model, token_counts)
            self.scale = float(scale)
            self.weight = nn.Parameter(torch.empty(self.vocab_size, self.d_model))
            self.reset_parameters()

        @torch.no_grad()
        def reset_parameters(self):
            self.weight.uniform_(-self.d_model ** -0.5, self.d_model ** -0.5)

        def _spec_values(self):
            return {{"scale": self.scale}}

        def closed_form_num_parameters(self):
            return self.vocab_size * self.d_model

        def _logits(self, hidden):
            return self.scale * (hidden @ self.weight.T)

        def _matmul_flops(self, num_tokens, op, target):
            return 2 * num_tokens * self.d_model * self.vocab_size
''')


def write_module(folder, module, name, decorated=True):
    source = HEAD_SOURCE.format(name=name)
    if decorated:
        source = source.replace("class ScaledSoftmax", f"@register_head({name!r})\nclass ScaledSoftmax")
    (folder / f"{module}.py").write_text(source)


def run(args, pythonpath):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), ROOT])}
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_head_in_a_module_outside_the_repository_is_measured_tabled_and_reported(tmp_path):
    plugins, out = tmp_path / "plugins", tmp_path / "results"
    plugins.mkdir()
    write_module(plugins, "my_heads_cli", "scaled")
    run(["vqbench.compare", "--import", "my_heads_cli", "--heads", "scaled:scale={1,2}", "softmax:bias=0",
         "--vocab", "2000", "--d-model", "32", "--tokens", "32", "--ops", "loss", "log_probs", "--threads", "1",
         "--min-run-time", "0.01", "--ceilings", "small", "--out", str(out), "--name", "headline",
         "--no-progress"], plugins)
    with open(out / "headline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # canonical specs: scale=1 is the default, bias=0 softmax's
    assert {r["spec"] for r in rows} == {"scaled", "scaled:scale=2", "softmax"}
    assert {(r["spec"], r["op"]) for r in rows if r["metric"] == "time" and r["status"] == "ok"} == \
        {(s, op) for s in ("scaled", "scaled:scale=2", "softmax") for op in ("loss", "log_probs")}
    tables = run(["vqbench.compare", "--from", str(out / "headline.csv"), "--heads", "scaled"], plugins)
    assert "| scaled:scale=2 " in tables and "| softmax " not in tables
    run(["vqbench.report", "--results", str(out)], plugins)
    report = (out / "REPORT.md").read_text()
    assert "| scaled:scale=2 " in report and "**`scaled`**: a head from a module outside vqbench" in report
    run(["vqbench.report", "--results", str(out), "--import", "my_heads_cli"], plugins)
    assert "**Scaled softmax** (`scaled`). A test head" in (out / "REPORT.md").read_text()


def test_import_of_a_missing_module_is_one_line_before_any_work(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-m", "vqbench.compare", "--import", "no_such_module_here",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--import: cannot import 'no_such_module_here'" in done.stderr
    assert os.listdir(tmp_path) == []


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as a new process finds it; heads registered during the test are removed afterwards."""
    before = dict(registry.HEADS)
    monkeypatch.setattr(registry, "_found", False)
    yield
    registry.HEADS.clear()
    registry.HEADS.update(before)


def test_a_head_offered_through_the_entry_point_group_is_found(tmp_path, monkeypatch, fresh_registry):
    write_module(tmp_path, "my_heads_ep", "ep_scaled", decorated=False)
    info = tmp_path / "my_heads_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-heads-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vqbench.heads]\nep_scaled = my_heads_ep:ScaledSoftmax\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    heads = registry.registered_heads()
    assert "ep_scaled" in heads and heads["ep_scaled"].name == "ep_scaled"
    head = registry.make_head("ep_scaled:scale=2", 50, 8)
    assert head.spec == "ep_scaled:scale=2" and head.log_probs(torch.randn(3, 8)).shape == (3, 50)
    assert "ep_scaled: scaled softmax" in registry.describe_heads()
    listing = run(["vqbench.compare", "--list-heads"], tmp_path)
    assert "ep_scaled: scaled softmax" in listing and "scale (float, default 1): multiplies every logit" in listing


def test_a_broken_entry_point_is_reported_and_the_other_heads_still_work(tmp_path, monkeypatch, fresh_registry,
                                                                         capsys):
    info = tmp_path / "broken_heads-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-heads\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vqbench.heads]\nbroken = no_such_module_xyz:Head\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "softmax" in registry.registered_heads() and "broken" not in registry.HEADS
    assert "entry point 'broken' (no_such_module_xyz:Head) failed to load" in capsys.readouterr().err


def test_profile_and_train_take_import(tmp_path, monkeypatch, fresh_registry):
    from vqbench import profile, train
    write_module(tmp_path, "my_heads_flags", "flag_scaled")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = profile.parse_args(["--import", "my_heads_flags", "--head", "flag_scaled:scale=3", "--vocab", "50",
                               "--d-model", "8"])
    assert args.head == "flag_scaled:scale=3"
    cfg = train.parse_args(["--import", "my_heads_flags", "--head", "flag_scaled", "--data", str(tmp_path)])
    assert cfg.head == "flag_scaled" and not hasattr(cfg, "imports")
    for parse in (profile.parse_args, train.parse_args):
        with pytest.raises(SystemExit):
            parse(["--import", "no_such_module_abc", "--head", "softmax"])
