"""The transformer track's speed tables keep every measurement, and the provenance tells CPUs apart that a
virtual machine gives one model name."""

import csv
import json
import os

import pytest

from vqbench.measuring import provenance
from vqbench.reporting.speed_table import add_measurement, markdown, measurements, speed_rows

OLD_ROW = {"variant": "softmax", "head": "softmax:chunk=4096", "tokens_per_s": "1129.2", "autocast": "bfloat16",
           "cpu_model": "AMD EPYC", "torch_version": "2.13.0+cpu", "git_commit": "bc9c878f4832",
           "speed_vs_first": "1.0"}


def write_summary(folder, head, tokens_per_s):
    os.makedirs(folder)
    summary = {"config": {"head": head, "layers": 4, "d_model": 128}, "threads": 2, "tokens_per_s": tokens_per_s,
               "output_share": 0.5, "output_params": 10, "total_params": 20, "autocast": "none",
               "cpu_model": "AMD EPYC", "cpu_id": "AuthenticAMD family 25 model 1 stepping 1, avx2",
               "torch_version": "2.13.0+cpu", "git_commit": "abc"}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)


def test_a_measurement_is_added_beside_the_earlier_ones_never_over_them(tmp_path):
    path = str(tmp_path / "speed.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(OLD_ROW))
        writer.writeheader()
        writer.writerow(OLD_ROW)
    scratch = tmp_path / "scratch"
    write_summary(str(scratch / "softmax"), "softmax:chunk=4096", 600.0)
    write_summary(str(scratch / "vq-K5013"), "vq:K=5013", 3000.0)
    os.utime(scratch / "softmax" / "summary.json", (1, 1))  # finished first: the reference
    new = speed_rows(str(scratch), 40, 2_400_000, plan="configs/x.json", measured="2026-12-05T22:30:00+00:00")
    assert [r["speed_vs_first"] for r in new] == [1.0, 5.0]
    every = add_measurement(path, new)
    with open(path, newline="") as f:
        on_disk = list(csv.DictReader(f))
    assert on_disk == every and len(on_disk) == 3
    assert {k: on_disk[0][k] for k in OLD_ROW} == OLD_ROW and on_disk[0]["measured"] == on_disk[0]["cpu_id"] == ""
    assert on_disk[2]["cpu_id"].endswith("avx2") and on_disk[2]["speed_vs_first"] == "5.0"
    assert [len(g) for g in measurements(on_disk)] == [1, 2]
    text = markdown(on_disk, "each variant", "PLAN=x bash scripts/size-transformer.sh", 2_400_000)
    sections = text.split("\n## ")[1:]
    assert len(sections) == 2
    assert sections[0].startswith("date not recorded: AMD EPYC (family and vector tier not recorded), "
                                  "autocast bfloat16")
    assert sections[1].startswith("2026-12-05T22:30:00+00:00: AMD EPYC (AuthenticAMD family 25 model 1 stepping 1, "
                                  "avx2), autocast none")
    assert "1129.2" in sections[0] and "3000" in sections[1] and "1129.2" not in sections[1]


def test_a_scratch_folder_without_summaries_says_so(tmp_path):
    with pytest.raises(SystemExit, match="scratch: no summary.json"):
        speed_rows(str(tmp_path), 40, 1000)


@pytest.mark.parametrize("flags, tier", [("fpu avx2 avx512f avx512_bf16", "avx512_bf16"), ("fpu avx2", "avx2"),
                                         ("fpu sse2", "")])
def test_cpu_id_names_family_model_stepping_and_the_best_vector_tier(monkeypatch, flags, tier):
    info = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "stepping": "1",
            "model name": "AMD EPYC", "flags": flags}
    monkeypatch.setattr(provenance, "_cpuinfo", info.get)
    provenance.cpu_id.cache_clear()
    provenance.cpu_flags.cache_clear()
    try:
        assert provenance.cpu_id() == "AuthenticAMD family 25 model 17 stepping 1" + (f", {tier}" if tier else "")
    finally:
        provenance.cpu_id.cache_clear()
        provenance.cpu_flags.cache_clear()


def test_cpuinfo_fields_match_whole_keys_so_model_is_not_model_name(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nmodel\t\t: 1\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    assert provenance._cpuinfo("model") == "1"
    assert provenance._cpuinfo("model name") == "AMD EPYC"
    assert provenance._cpuinfo("stepping") is None
