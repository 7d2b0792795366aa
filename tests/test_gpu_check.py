"""python -m vqbench.gpu_check --dry-run: the GPU self-check's code path on the CPU (tiny sizes)."""

import json
import os

import pytest
import torch

from vqbench import gpu_check



def test_dry_run_writes_every_precision_at_both_widths(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run"]) == 0
    data = json.loads((tmp_path / "cuda-selfcheck.json").read_text())
    got = {(r["precision"], r["V"]) for r in data["records"]}
    assert got == {(p, v) for p in ("bfloat16", "float32", "tf32") for v in (301, 320)}
    assert all(r["seconds"] > 0 and 0 < r["share_of_ceiling"] for r in data["records"])
    text = (tmp_path / "cuda-selfcheck.md").read_text()
    assert "| tf32 | 16 | 32 | 320 |" in text
    shown = f"<outside>/{tmp_path.parent.name}/{tmp_path.name}"  # no machine path: tmp_path is outside the repository
    assert data["command"] == f"python -m vqbench.gpu_check --out {shown} --dry-run" and data["command"] in text
    assert torch.get_float32_matmul_precision() == "highest"  # TF32 left as it was


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_a_gpu_it_needs_dry_run(tmp_path):
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--out", str(tmp_path)])
    assert stop.value.code == 2 and not os.listdir(tmp_path)
