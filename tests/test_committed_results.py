"""The committed results keep their promises: every result was measured by today's code, no committed latency
sits below the floor that is meant to bound it, and README's claims table is the one REPORT.md was built with."""

import glob
import os

from vqbench.results import read_rows, select_rows

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


# Rows whose floor is known not to bound them, each with the reason; the test fails if one of them stops being
# below (the entry must then go) as well as for any other row below. softmax's predict at V=10000, N=2048 in the
# cpu-sweep re-measured at 0dc60d6 runs at 0.94x its floor: its product [2048, 1024] x [1024, 10000] ran 6% above
# the GEMM ceiling the same run measured on its square operands (the ceiling is a measurement too, not a bound).
# vq:K=256's logits_into and log_probs_into at V=128000, N=2048 in cpu-floors re-measured at 1db1eb5 run at
# 0.90-0.92x theirs: the row gather into a reused [V, N] buffer (1 GB in float32) wrote 8-11% faster than the
# fill bandwidth the same run measured with a torch fill_, which the floor prices its writes at.
KNOWN_BELOW = {("cpu-sweep.csv", "softmax", "predict", "2048", "derived"):
               "a GEMM 6% above the GEMM ceiling measured in the same run"}


def test_no_committed_latency_is_below_its_floor():
    """The floors `report --floors` derives now (vqbench.reporting.floors), for every committed latency row."""
    from vqbench.report import floor_rows
    below, known = [], set()
    rows = floor_rows(RESULTS)
    assert len(rows) > 1000
    for r in rows:
        if float(r["ratio"]) < 0.95:
            key = (r["file"], r["spec"], r["op"], r["N"], r["floor_source"])
            if key in KNOWN_BELOW:
                known.add(key)
                continue
            below.append(f"{r['file']}: {r['spec']} {r['op']} V={r['V']} N={r['N']} {r['dtype']}: "
                         f"{float(r['ratio']):.2f}x its floor ({r['floor_source']})")
    assert not below, "\n".join(below)
    assert known == set(KNOWN_BELOW), f"no longer below their floors, drop from KNOWN_BELOW: {set(KNOWN_BELOW) - known}"


def test_every_headline_row_over_twice_its_floor_has_its_profile():
    """Each CPU headline row over 2x its floor has the measured breakdown behind its stated reason: the table
    scripts/run-profiles.sh writes for it (results/profiles/<spec>_V<V>_<op>_<dtype>_<allocator>.md, named by the
    script's rule), which results/profiles/README.md cites beside the reason."""
    from vqbench.report import floor_rows
    missing, over = [], 0
    for r in floor_rows(RESULTS):
        if r["file"] not in ("headline.csv", "headline-thp.csv") or float(r["ratio"]) <= 2:
            continue
        over += 1
        name = f"{r['spec']}_V{r['V']}_{r['op']}_{r['dtype']}_{r['cpu_allocator']}".translate(str.maketrans(":=,", "-__"))
        if not os.path.isfile(os.path.join(RESULTS, "profiles", name + ".md")):
            missing.append(f"{r['file']}: {r['spec']} {r['op']} {r['dtype']} {r['cpu_allocator']} at "
                           f"{float(r['ratio']):.2f}x: no results/profiles/{name}.md")
    assert over > 0, "no headline row over 2x its floor: the profiles folder and its README can go"
    assert not missing, "\n".join(missing)


def claims_table(text: str) -> list:
    """The lines of the first markdown table after the heading or sentence that introduces the claims."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| claim | paper | measured by vqbench"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_the_readme_claims_table_is_the_reports():
    root = os.path.dirname(RESULTS)
    with open(os.path.join(RESULTS, "REPORT.md")) as f:
        report_table = claims_table(f.read())
    with open(os.path.join(root, "README.md")) as f:
        readme_table = claims_table(f.read())
    assert len(report_table) > 3 and readme_table == report_table


def test_every_committed_result_was_measured_by_todays_code(capsys):
    """`report --check` on the committed results: a change to the code a timed call runs (a head, the op
    callables, the timing) fails CI until the results it stales are measured again (and figures and REPORT.md
    rebuilt from them), or are listed, with the reason, in results/pending-remeasurement.json, which REPORT.md
    then shows; a listed file that is fresh fails too."""
    from vqbench import report
    code = report.main(["--results", RESULTS, "--check"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err


def _git(*args):
    import subprocess
    root = os.path.dirname(RESULTS)
    done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
    return done.returncode, done.stdout


def _asv_measured_files():
    """The files whose change moves an asv number: today's suite, the asv configuration, and each suite
    head's code with the measuring code it uses (the fingerprint closure of every head the suite runs)."""
    import importlib.util
    from vqbench.measuring.fingerprint import closure, files_for
    root = os.path.dirname(RESULTS)
    suite = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "benchmarks", "*.py")))
    spec = importlib.util.spec_from_file_location("asv_suite_common", os.path.join(root, "benchmarks", "common.py"))
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    files = set(closure(suite)) | {"asv.conf.json"}
    for head in common.HEADS:
        files |= files_for(head)
    return sorted(files)


def test_the_asv_history_covers_todays_code():
    """results/asv/ holds, for one machine, every commit benchmarks/history.txt lists and a commit whose suite,
    heads and measuring code are the working tree's: a head rewrite fails CI until `asv run <commit>^!` (or
    scripts/run-asv-history.sh) adds the commit that carries it."""
    import pytest
    from vqbench.report import pending_remeasurement
    code, _ = _git("rev-parse", "--verify", "HEAD")
    if code != 0:
        pytest.skip("not a git checkout: the commits results/asv/ names cannot be resolved")
    with open(os.path.join(os.path.dirname(RESULTS), "benchmarks", "history.txt")) as f:
        listed = [line.split()[0] for line in f if line.strip() and not line.startswith("#")]
    machines = {}
    for path in glob.glob(os.path.join(RESULTS, "asv", "*", "*-*.json")):
        machines.setdefault(os.path.basename(os.path.dirname(path)), set()).add(os.path.basename(path)[:8])
    complete = {m: hashes for m, hashes in machines.items()
                if all(any(h.startswith(c[:8]) or c.startswith(h) for h in hashes) for c in listed)}
    assert complete, f"no machine in results/asv/ has every commit of benchmarks/history.txt ({', '.join(listed)})"
    files = _asv_measured_files()
    for machine, hashes in complete.items():
        for short in hashes:
            code, full = _git("rev-parse", "--verify", "--quiet", short + "^{commit}")
            if code != 0 or _git("merge-base", "--is-ancestor", full.strip(), "HEAD")[0] != 0:
                continue
            code, changed = _git("diff", "--name-only", full.strip(), "--", *files)
            if code == 0 and not changed.strip():
                assert "asv" not in pending_remeasurement(RESULTS), \
                    "the asv history covers today's code: drop asv from results/pending-remeasurement.json"
                return
    if "asv" in pending_remeasurement(RESULTS):
        return  # waits, with its reason shown in REPORT.md
    assert False, (f"no asv result in results/asv/{{{','.join(complete)}}} was measured by today's suite and heads; "
                   "run `asv run HEAD^! --machine NAME` on a quiet machine (or scripts/run-asv-history.sh)")
