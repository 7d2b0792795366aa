"""Hostile figures and the files they are drawn from (issue 32): `report --check` reads only regular files
inside the results folder, a damaged PNG is a stale figure not a crash; `plot` draws what a user edited
('$' in a spec, missing provenance columns) or says in one line what it cannot (a non-numeric cell, an
--out that is a file), and replaces a planted link instead of following it.
"""

import csv
import hashlib
import io
import os
import signal
import struct
import zlib

import pytest

from vqbench import plot, report
from vqbench.plot import SOURCE_KEY
from vqbench.results import COLUMNS

from conftest import one_line_error, run_main


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(path, text=None, itxt=None):
    """A minimal PNG at path with a tEXt (text: str) or uncompressed iTXt (itxt: bytes) source note."""
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    if text is not None:
        body += chunk(b"tEXt", SOURCE_KEY.encode() + b"\0" + text.encode("latin-1"))
    if itxt is not None:
        body += chunk(b"iTXt", SOURCE_KEY.encode() + b"\0\0\0\0\0" + itxt)
    body += chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")
    path.write_bytes(body)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def results_dir(tmp_path):
    folder = tmp_path / "results"
    (folder / "figures").mkdir(parents=True)
    return folder


def stale(results_dir):
    """report.stale_figures, failing (not hanging) when it blocks on a FIFO."""
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("report --check blocked reading a file"))
    signal.alarm(10)
    try:
        return report.stale_figures(str(results_dir))
    finally:
        signal.alarm(0)


def test_a_fresh_figure_is_not_stale(results_dir):
    source = results_dir / "sweep.csv"
    source.write_text("rows\n")
    png(results_dir / "figures" / "f.png", f"../sweep.csv sha256={sha(source)}")
    assert stale(results_dir) == []


@pytest.mark.parametrize("where", ["absolute", "relative", "link"])
def test_a_source_outside_the_results_folder_is_never_read(results_dir, tmp_path, where):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours\n")
    if where == "absolute":
        rel = str(outside)
    elif where == "relative":
        rel = "../../secret.txt"
    else:
        os.symlink(outside, results_dir / "inside.csv")
        rel = "../inside.csv"
    png(results_dir / "figures" / "f.png", f"{rel} sha256={sha(outside)}")
    [line] = stale(results_dir)
    assert "outside" in line and "f.png" in line


def test_a_source_that_is_a_fifo_is_not_read(results_dir):
    os.mkfifo(results_dir / "sweep.csv")
    png(results_dir / "figures" / "f.png", "../sweep.csv sha256=00")
    [line] = stale(results_dir)
    assert "regular file" in line


def test_a_figure_that_is_a_fifo_is_not_read(results_dir):
    os.mkfifo(results_dir / "figures" / "f.png")
    [line] = stale(results_dir)
    assert "f.png" in line and "regular file" in line


@pytest.mark.parametrize("content", [b"", b"not a png at all", b"\x89PNG\r\n\x1a\n\xff\xff\xff\xfftEXt"])
def test_a_figure_that_is_not_a_png_is_reported_not_a_crash(results_dir, content):
    (results_dir / "figures" / "f.png").write_bytes(content)
    lines = stale(results_dir)
    assert len(lines) == 1 and "f.png" in lines[0]


def test_a_figure_with_non_utf8_text_is_reported_not_a_crash(results_dir):
    png(results_dir / "figures" / "f.png", itxt=b"../sweep.csv sha256=\xff\xfe")
    [line] = stale(results_dir)
    assert "UTF-8" in line


def test_a_figure_over_the_size_limit_is_not_read(results_dir, monkeypatch):
    png(results_dir / "figures" / "f.png", "../sweep.csv sha256=00")
    monkeypatch.setattr(report, "PNG_LIMIT", 16)
    [line] = stale(results_dir)
    assert "more than" in line


def test_report_check_on_a_damaged_png_exits_1_in_lines(results_dir, capsys):
    (results_dir / "figures" / "f.png").write_text("a text file with a png name\n")
    assert run_main(report.main, ["--results", str(results_dir), "--check"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "f.png: not a readable figure" in err


def test_report_into_a_folder_it_cannot_write_is_one_line(results_dir, capsys):
    (results_dir / "REPORT.md").mkdir()
    assert run_main(report.main, ["--results", str(results_dir)]) == 2
    one_line_error(capsys, "--results", "REPORT.md")


# ----------------------------------------------------------------------------- plot

def results_file(path, specs=("softmax", "vq$^^$:K=8"), drop=(), **cells):
    """A small results file: params and loss time rows for each spec at V in {50, 100}."""
    columns = [c for c in COLUMNS if c not in drop]
    rows = []
    for spec in specs:
        for vocab in ("50", "100"):
            for op, metric in (("params", "params"), ("loss", "time"), ("train", "peak_memory")):
                row = dict.fromkeys(columns, "")
                row.update(head=spec.split(":")[0].split("$")[0], spec=spec, op=op, metric=metric, V=vocab, d="8",
                           N="4", device="cpu", dtype="float32", value="2.5", status="ok")
                row.update({k: v for k, v in cells.items() if k in columns})
                rows.append({k: row[k] for k in columns})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path


def test_a_dollar_in_a_spec_is_drawn_literally(tmp_path, capsys):
    source = results_file(tmp_path / "r.csv", device_name="$^^$ CPU")
    assert run_main(plot.main, [str(source), "--out", str(tmp_path / "fig")]) == 0
    assert any(name.endswith(".png") for name in os.listdir(tmp_path / "fig"))


def test_a_dollar_in_a_quality_variant_name_is_drawn_literally(tmp_path):
    summary = [dict(name=name, head=head, ratio_mean=r, ratio_std=0.01, output_params=p, seeds=2, fewer_params=f)
               for name, head, r, p, f in (("softmax", "softmax", 1.0, 1e6, 0.0), ("vq$^^$", "vq", 1.1, 1e4, 0.99))]
    plot.plot_quality_pareto(summary, str(tmp_path / "pareto.png"))
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_a_file_without_provenance_columns_is_drawn(tmp_path):
    source = results_file(tmp_path / "r.csv", drop=("device_name", "threads", "torch_version", "timestamp"))
    assert run_main(plot.main, [str(source), "--out", str(tmp_path / "fig")]) == 0


@pytest.mark.parametrize("cell", [dict(value="fast"), dict(V="fifty"), dict(spread="n/a")])
def test_a_non_numeric_cell_is_one_line(tmp_path, capsys, cell):
    source = results_file(tmp_path / "r.csv", specs=("softmax",), **cell)
    assert run_main(plot.main, [str(source), "--out", str(tmp_path / "fig")]) == 2
    one_line_error(capsys, "not a number")


def test_plot_into_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    source = results_file(tmp_path / "r.csv", specs=("softmax",))
    (tmp_path / "fig").write_text("a file")
    assert run_main(plot.main, [str(source), "--out", str(tmp_path / "fig")]) == 2
    one_line_error(capsys, "--out")


def test_plot_into_an_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch):
    source = results_file(tmp_path / "r.csv", specs=("softmax",))

    def refused(*args, **kwargs):  # root ignores chmod: a read-only mount
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plot.tempfile, "mkstemp", refused)
    assert run_main(plot.main, [str(source), "--out", str(tmp_path / "fig")]) == 2
    one_line_error(capsys, "--out", "Permission denied")


def test_plot_replaces_a_planted_link_instead_of_following_it(tmp_path):
    source = results_file(tmp_path / "r.csv", specs=("softmax",))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "fig").mkdir()
    os.symlink(victim, tmp_path / "fig" / "params_d8.png")
    assert run_main(plot.main, [str(source), "--out", str(tmp_path / "fig")]) == 0
    assert victim.read_text() == "keep me\n"
    assert (tmp_path / "fig" / "params_d8.png").read_bytes()[:4] == b"\x89PNG"
