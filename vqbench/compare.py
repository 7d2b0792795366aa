"""python -m vqbench.compare: measure every head and print citable tables.

With no arguments: a small CPU grid (every head's default specs, V in {10000, 50257}, d=512, N=256,
all ops) that finishes in a few minutes on 2 cores; rows go to runs/compare.csv and the
tables to runs/compare.md (runs/ is ignored by git: a first run leaves the repository as it was).
Any option is swept by a brace set in a spec: ``--heads "vq:K={256,1024,4096}"``.
Heads from other modules: ``--import MODULE`` (repeatable) or the entry-point group ``vqbench.heads``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

import torch

from vqbench.heads.registry import check_spec, default_specs, describe_heads, expand_specs, import_modules, parse_spec
from vqbench.measuring import busy, shards
from vqbench.measuring.provenance import relative_argv, relative_path, use_cpu_allocator
from vqbench.measuring.sweep import DTYPES, Budget, Grid, check_grid, memory_budget, run_sweep
from vqbench.reporting.tables import build_tables, render
from vqbench.results import (ALL_OPS, COLUMNS, DEFAULT_OPS, ResultsFile, numeric_problem, path_component_problem,
                             read_rows, select_rows)



def add_file_flags(p: argparse.ArgumentParser) -> None:
    """Where results go and how an existing results file is treated."""
    p.add_argument("--out", default="runs", metavar="DIR",
                   help="folder for NAME.csv and NAME.md (default runs/, which git ignores)")
    p.add_argument("--name", default=None,
                   help="stem of the result files (default: compare); with --from, also writes DIR/NAME.md")
    p.add_argument("--format", default="github",
                   help="table format: github (markdown), latex, csv or any tabulate format "
                        "(tabulate.tabulate_formats)")
    p.add_argument("--from", dest="from_file", nargs="+", metavar="FILE",
                   help="re-render tables from stored results CSVs (several render as one) without measuring; "
                        "--heads, --vocab, --d-model, --tokens, --ops and --dtype then select rows (a bare head "
                        "name: all its specs)")
    p.add_argument("--resume", action="store_true",
                   help="keep NAME.csv and skip every (config, op) already complete in it")
    p.add_argument("--remeasure-stale", action="store_true",
                   help="with --resume: first move every unit measured by code that has changed since (its row's "
                        "code fingerprint is not the working tree's) to NAME.csv.stale-TIME, so that only those "
                        "units are measured again")
    p.add_argument("--remeasure", action="store_true",
                   help="with --resume: first move every unit of this run's grid that the file holds to "
                        "NAME.csv.superseded-TIME, so that this run measures them all again, side by side (both "
                        "sides of a speed-up from one session); the file's other units stay")
    p.add_argument("--overwrite", action="store_true",
                   help="start NAME.csv afresh; the old file is kept as NAME.csv.bak-TIME (never deleted)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vqbench.compare",
        description="Measure parameters, FLOPs, latency and peak memory of LM output layers "
                    "and print one table per (metric, op).")
    p.add_argument("--heads", nargs="+", default=None, metavar="SPEC",
                   help="head spec strings, e.g. softmax softmax:chunk=256 adaptive hierarchical:tree=huffman "
                        "lowrank vq:bias=1; a brace set sweeps an option: \"vq:K={256,1024,4096}\" (quote it "
                        "from the shell); rows store each head's canonical spec (--list-heads shows the options)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that the heads it registers can be named (repeatable)")
    p.add_argument("--list-heads", action="store_true", help="print every head, its options and examples, and exit")
    p.add_argument("--vocab", nargs="+", type=int, default=None, metavar="V",
                   help="vocabulary sizes (default 10000 50257)")
    p.add_argument("--d-model", nargs="+", type=int, default=None, metavar="D", help="hidden widths (default 512)")
    p.add_argument("--tokens", nargs="+", type=int, default=None, metavar="N", help="tokens per call (default 256)")
    p.add_argument("--ops", nargs="+", default=None, choices=ALL_OPS, metavar="OP",
                   help=f"ops to measure (default {' '.join(DEFAULT_OPS)}; on request: "
                        f"{' '.join(op for op in ALL_OPS if op not in DEFAULT_OPS)})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"],
                   help="cpu, cuda or all (cpu plus cuda when present)")
    p.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES),
                   help="parameter dtypes (default float32)")
    add_file_flags(p)
    p.add_argument("--ceilings", choices=["full", "small"], default="full",
                   help="full (default): ceilings on operands large enough to reach the machine's peak; small: "
                        "a 256-square GEMM and 8 MiB buffers, for smoke tests (floors are then not meaningful)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per op")
    p.add_argument("--memory-budget-gib", type=float, default=None,
                   help="skip configs whose analytic footprint exceeds this (default: 60%% of RAM or GPU memory)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="skip ops whose estimated single call exceeds this many seconds (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and head initialisation")
    p.add_argument("--order-seed", type=int, default=None, metavar="S",
                   help="measure the head configurations in an order shuffled with seed S (default: the grid's "
                        "order); runs in several orders show how much the order moves a ratio")
    p.add_argument("--cpu-allocator", choices=["thp", "default"], default="thp",
                   help="thp (default): PyTorch's THP_MEM_ALLOC_ENABLE=1, large CPU tensors on transparent huge "
                        "pages, so a fresh N x V output is not dominated by 4 KiB page faults (the role CUDA's "
                        "caching allocator plays on GPU); default: the plain allocator. Stored in every row")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    shards.add_compare_flags(p)
    return p


def parse_args(argv=None):
    """The flags, each checked before any work (errors name the flag); unset grid flags get defaults."""
    p = build_parser()
    args = p.parse_args(argv)
    try:  # before the specs are read: the modules register the heads they name
        import_modules(args.imports)
    except ValueError as error:
        p.error(str(error))
    if args.list_heads:
        print(describe_heads())
        p.exit(0)
    args.selection = {k: getattr(args, k) for k in ("heads", "vocab", "d_model", "tokens", "ops", "dtype")}
    defaults = dict(heads=list(default_specs()), vocab=[10000, 50257], d_model=[512], tokens=[256],
                    ops=list(DEFAULT_OPS), dtype=["float32"])
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args) -> None:
    try:  # every spec's name and option types, before any measurement; --from only selects rows by spec text,
        # so it renders heads this process cannot build (a module not imported)
        for spec in expand_specs(args.heads):
            parse_spec(spec) if args.from_file else check_spec(spec)
    except (ValueError, TypeError) as error:
        p.error(f"--heads: {error}")
    for flag, values in [("--vocab", args.vocab), ("--d-model", args.d_model), ("--tokens", args.tokens)]:
        if any(v < 1 for v in values):
            p.error(f"{flag}: sizes must be positive, got {values}")
    for flag, value in (("--min-run-time", args.min_run_time), ("--time-budget-s", args.time_budget_s),
                        ("--memory-budget-gib", args.memory_budget_gib)):
        if value is not None and not (0 < value < float("inf")):
            p.error(f"{flag}: must be a finite number > 0, got {value}")
    if not args.from_file:
        try:  # every option value at every (V, d) of the grid, before anything is built
            check_grid(Grid(heads=args.heads, vocab=args.vocab, d_model=args.d_model))
        except (ValueError, TypeError) as error:
            p.error(f"--heads: {error}")
    if args.seed < 0:
        p.error(f"--seed: must be >= 0, got {args.seed}")
    if args.order_seed is not None and args.order_seed < 0:
        p.error(f"--order-seed: must be >= 0, got {args.order_seed}")
    if args.name is not None:
        problem = path_component_problem(args.name, NAME_SUFFIX)
        if problem:
            p.error(f"--name: a file stem inside --out ({problem}), got {args.name[:80]!r}")
    if args.format not in FORMATS:
        p.error(f"--format: unknown table format {args.format[:80]!r}; choose github, latex, csv or one of "
                f"tabulate's ({', '.join(sorted(FORMATS - {'github', 'latex', 'csv'}))})")
    if args.resume and args.overwrite:
        p.error("--overwrite: cannot be combined with --resume")
    if args.remeasure_stale and not args.resume:
        p.error("--remeasure-stale: needs --resume (it re-measures part of an existing file)")
    if args.remeasure and not args.resume:
        p.error("--remeasure: needs --resume (it re-measures part of an existing file)")
    if args.remeasure and args.shards is not None:
        p.error("--remeasure: measures in one run, not with --shards (each shard resumes its own file)")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        p.error(f"--threads: must be between 1 and {MAX_THREADS}, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda requested but torch sees no CUDA device")
    shards.check_compare_args(p, args)


def _table_formats() -> frozenset:
    from tabulate import tabulate_formats
    return frozenset(["github", "latex", "csv", *tabulate_formats])


FORMATS = _table_formats()
MAX_THREADS = 4096  # torch takes a C int; more threads than this is a typo, not a machine
#: the longest suffix a stem gets (NAME.csv.incomplete-YYYYmmdd-HHMMSS-NNNN), within a 255-byte file name
NAME_SUFFIX = ".csv.incomplete-20260101-000000-9999"


def rows_selected(rows, selection):
    """Rows matching the flags given with --from (an unset flag selects everything; a bare head name selects
    every spec of that head, a brace set its expansions)."""
    criteria = {column: selection[flag] for flag, column in (("vocab", "V"), ("d_model", "d"), ("tokens", "N"),
                                                             ("dtype", "dtype")) if selection[flag] is not None}
    rows = select_rows(rows, **criteria)
    if selection["ops"] is not None:
        rows = select_rows(rows, op=[*selection["ops"], "params"])
    if selection["heads"] is not None:
        specs = set(expand_specs(selection["heads"]))
        rows = [r for r in rows if r["spec"] in specs or r["head"] in specs]
    return rows


def settings_clash(rows, args) -> str:
    """'' when the stored rows were measured with this run's threads, allocator, CPU and seed, else what differs."""
    from vqbench.measuring.provenance import cpu_allocator, cpu_model
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    now = {"threads": str(threads), "cpu_allocator": cpu_allocator(), "cpu_model": cpu_model(), "seed": str(args.seed)}
    for key, value in now.items():
        stored = sorted({r[key] for r in rows if r.get(key)} - {value})
        if stored:
            return f"{key}={stored[0]} (now {value})"
    return ""


def write_markdown(path, name, command, sources, tables, notes=""):
    """NAME.md: the command, the results files it was built from and the tables (plus the machine-load notes)."""
    rows_from = " ".join(relative_path(source) for source in sources)
    write_text(path, f"# vqbench compare: {name}\n\nRegenerate: `{command.strip()}`\n\n"
                     f"Rows: `{rows_from}`.\n\n{render(tables, 'github')}" + (f"\n{notes}" if notes else ""),
               sources)


def write_text(path: str, text: str, sources) -> None:
    """Write path whole through a fresh temporary file: a link planted at path is replaced, never followed,
    and a reader never sees half a file; an input (sources) is never the output."""
    for source in sources:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise Refused(f"--name: {path} is the input {source}; choose another --name or --out")
    directory, base = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    except OSError as error:
        raise Refused(f"--out: cannot write into {directory} ({error.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Refused(Exception):
    """A one-line reason to stop before measuring (its text names the flag)."""


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m vqbench.compare " + " ".join(relative_argv(sys.argv[1:] if argv is None else argv))
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f) then fails the write with EFBIG, not a core dump
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        if args.from_file:
            return render_stored(args, command)
        return measure_sharded(args, command) if args.shards and args.shard is None else measure(args, command)
    except Refused as reason:
        print(reason, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m vqbench.compare: interrupted; every finished unit is kept (measure the rest with "
              "--resume)", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"python -m vqbench.compare: cannot write {error.filename or 'a file'}: {error.strerror}; every "
              f"finished unit is kept (measure the rest with --resume)", file=sys.stderr)
        return 1


def render_stored(args, command: str) -> int:
    """--from: tables from stored results files (several as one), nothing measured; each file's machine
    load records close them."""
    try:
        rows, by_file = shards.merge_rows(args.from_file, args.allow_mixed)
    except ValueError as error:
        raise Refused(str(error)) from None
    rows = rows_selected(rows, args.selection)
    if not rows:
        raise Refused(f"--from: {' '.join(args.from_file)}: no rows (of this selection) to render")
    problem = numeric_problem(r for r in rows if r.get("status") == "ok")
    if problem:
        raise Refused(f"--from: {' '.join(args.from_file)}: {problem} (a cell edited by hand?)")
    tables = build_tables(rows)
    notes = busy.note({path: busy.records_for(path, r) for path, r in by_file.items()}, args.format)
    notes += shards.mixed_note(rows) if args.allow_mixed else ""
    if args.name:
        make_out(args.out)
        write_markdown(os.path.join(args.out, f"{args.name}.md"), args.name, command, args.from_file, tables,
                       notes)
    print(render(tables, args.format) + (f"\n{notes}" if notes else ""))
    return 0


def make_grid(args) -> Grid:
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: measuring on cpu only", file=sys.stderr)
        devices = ["cpu"]
    return Grid(heads=args.heads, vocab=args.vocab, d_model=args.d_model, tokens=args.tokens, ops=args.ops,
                devices=devices, dtypes=args.dtype)


def measure_sharded(args, command: str) -> int:
    """--shards N: every shard as a job (vqbench.measuring.shards), then their files rendered as one into NAME.md."""
    try:
        code, paths = shards.run_sharded(args, make_grid(args))
    except ValueError as error:
        raise Refused(str(error)) from None
    if paths is None:
        return code
    args.from_file, args.name = [p for p in paths if os.path.exists(p)], args.name or "compare"
    try:
        if not args.from_file:
            raise Refused(f"--shards: no shard wrote its results file (logs in {args.jobs_dir or args.out})")
        rendered = render_stored(args, command)
    except Refused as reason:
        if not code:
            raise
        print(reason, file=sys.stderr)  # a shard failed: that is the exit code, the rest is detail
        return code
    return code or rendered


def stale_row_test():
    """row -> True when the row was measured by code other than the working tree's (its stored fingerprint is
    not its spec's current one); a row whose code cannot be checked is never stale."""
    from vqbench.measuring.fingerprint import UNCHECKABLE, current_fingerprint
    current = {}

    def is_stale(row: dict) -> bool:
        spec = row.get("spec", "")
        if spec not in current:
            try:
                current[spec] = current_fingerprint(spec)
            except Exception:  # a head not importable here: its rows cannot be checked
                current[spec] = UNCHECKABLE
        stored = row.get("code_fingerprint", "")
        return UNCHECKABLE not in (stored, current[spec]) and stored != current[spec]
    return is_stale


def measure(args, command: str) -> int:
    use_cpu_allocator(args.cpu_allocator)
    grid = make_grid(args)
    devices, configs = grid.devices, None
    if args.shard is not None:  # one shard of a split grid, into its own file
        try:
            args.name, configs = shards.worker_shard(args, grid)
        except ValueError as error:
            raise Refused(str(error)) from None
    memory = args.memory_budget_gib * 2**30 if args.memory_budget_gib else memory_budget(devices)
    budget = Budget(memory_bytes=memory, seconds_per_call=args.time_budget_s, min_run_time=args.min_run_time)
    csv_path = open_results_path(args)
    try:
        results = ResultsFile(csv_path, overwrite=args.overwrite)
    except ValueError as error:
        raise Refused(f"--name: {error}") from None
    if results.backup:
        print(f"--overwrite: the old rows are kept in {results.backup}", file=sys.stderr)
    with results:
        clash = settings_clash(read_rows(csv_path), args) if args.resume else ""
        if clash:
            raise Refused(f"--resume: {csv_path} holds rows measured with {clash}; a resumed file must be "
                          f"measured alike (measure into another --name)")
        aside = results.set_aside_stale(stale_row_test()) if args.remeasure_stale else None
        if aside:
            print(f"--remeasure-stale: the stale units' rows are kept in {aside}", file=sys.stderr)
        superseded = results.set_aside_units(grid.unit_keys()) if args.remeasure else None
        if superseded:
            print(f"--remeasure: the grid's earlier rows are kept in {superseded}", file=sys.stderr)
        meter = busy.LoadMeter(args.threads or torch.get_num_threads()).start()
        stats = run_sweep(grid, results, budget, threads=args.threads, resume=args.resume,
                          progress=not args.no_progress, seed=args.seed, ceilings=args.ceilings, configs=configs,
                          order_seed=args.order_seed)
        rows = read_rows(csv_path)
        load = meter.stop(rows, shard=args.name if configs is not None else "")
        busy.append_record(csv_path, load)
    tables, records = build_tables(rows), {csv_path: busy.records_for(csv_path, rows)}
    write_markdown(os.path.join(args.out, f"{args.name}.md"), args.name, command, [csv_path], tables,
                   busy.note(records))
    notes = busy.note(records, args.format)
    if args.format not in ("github",):
        suffix = {"latex": "tex", "csv": "tables.csv"}.get(args.format, f"{args.format}.txt")
        write_text(os.path.join(args.out, f"{args.name}.{suffix}"), render(tables, args.format) + notes,
                   [csv_path])
    print(render(tables, args.format) + (f"\n{notes}" if notes else ""))
    print(f"measured {stats.measured}, skipped {stats.skipped}, resumed {stats.resumed}; "
          f"rows in {csv_path}", file=sys.stderr)
    print(f"machine {busy.sentence(load)}", file=sys.stderr)
    return 3 if load["busy"] and args.strict else 0


def make_out(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise Refused(f"--out: cannot create {out!r} ({error.strerror})") from None
    if not os.access(out, os.W_OK):
        raise Refused(f"--out: {out!r} is not writable")


def header_only(path: str) -> bool:
    """True when path is a results file that holds its header and nothing else (a run stopped before its first
    unit): measuring into it loses nothing, so it does not block a rerun."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return os.path.isfile(path) and head.decode("utf-8", "replace").strip() == ",".join(COLUMNS)


def open_results_path(args) -> str:
    """OUT/NAME.csv: an existing file is resumed, or with --overwrite moved to a backup once its lock is held
    (ResultsFile); without either it is left alone and the run refused."""
    make_out(args.out)
    args.name = args.name or "compare"
    csv_path = os.path.join(args.out, f"{args.name}.csv")
    if os.path.lexists(csv_path) and not args.resume and not args.overwrite and not header_only(csv_path):
        raise Refused(f"--name: {csv_path} exists; pass --resume to add to it, or --overwrite to start afresh "
                      f"(the old file is then kept as a backup); nothing was changed")
    return csv_path


if __name__ == "__main__":
    sys.exit(main())
