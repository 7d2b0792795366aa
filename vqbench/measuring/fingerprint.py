"""Which code measured a row: a digest of the code a timed call executes, and nothing else.

A row's fingerprint covers
  - the measuring code: inputs, timing, memory and counted FLOPs (vqbench/measuring/measure.py), the op callables
    (vqbench/measuring/op_calls.py) and the ceilings measured in the run (vqbench/measuring/ceilings.py);
  - the head's own code: the module of each class in its submodules' MRO, and every project module they
    import, transitively;
and not the registry (a head imports it only to name itself), the op records and their counts
(vqbench/measuring/ops.py), the floor model, the results schema, tables, figures or the report: a refactor of those
never stales a row, and a change in vq.py stales the VQ rows only.

The digest is over each file's code, not its text or place: docstrings, comments, import statements, the
head's counting methods (``COUNTING_METHODS``: parameter, FLOP and traffic counts feed floors, which are
derived at table time) and its descriptive metadata (``METADATA_ATTRIBUTES``: title, citations, examples) are
left out, and the files are combined without their paths, so moving a module,
rewording a docstring or correcting a count changes no fingerprint. Imports are edges of the closure instead.

A head defined outside the repository is covered by its own module's source (the module of each class in its
MRO that subclasses the head contract); when that source cannot be read, its rows carry ``UNCHECKABLE``.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
from functools import lru_cache
from typing import FrozenSet, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
PACKAGES = ("vqbench", "baselines")
#: the code every timed call runs, whatever the head
MEASURING = ("vqbench/measuring/measure.py", "vqbench/measuring/op_calls.py", "vqbench/measuring/ceilings.py")
#: project modules that a head imports but whose code no timed call runs
NOT_EXECUTED = frozenset({"vqbench/heads/registry.py"})
#: a head's analytic counts: read by vqbench.measuring.ops and the floors, never by a timed call (tests check it)
COUNTING_METHODS = frozenset({"num_parameters", "closed_form_num_parameters", "flops", "_matmul_flops",
                              "touched_parameters", "least_sampled_parameters", "least_predicted_parameters",
                              "largest_intermediate", "quality_metrics", "materialised_bytes"})
#: a head class's description (vqbench.heads.contract.OutputHead): read by the registry, README, report and tests only
METADATA_ATTRIBUTES = frozenset({"TITLE", "CITATIONS", "SUMMARY", "METHOD", "EXAMPLES", "SMALL_EXAMPLES",
                                 "COMPARED", "CAPABILITIES", "ORDER"})
#: a row's fingerprint when the code that measured it cannot be read back (a head from outside without source)
UNCHECKABLE = "uncheckable"


def _module_path(name: str) -> Optional[str]:
    """The repository-relative file of a project module (a module file or a package's __init__.py)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    for path in (os.path.join(*parts) + ".py", os.path.join(*parts, "__init__.py")):
        if os.path.isfile(os.path.join(ROOT, path)):
            return path.replace(os.sep, "/")
    return None


def _absolute_module(node: ast.ImportFrom, path: str) -> Optional[str]:
    if node.level == 0:
        return node.module
    package = path[:-3].split("/")[:-1] if not path.endswith("__init__.py") else path.split("/")[:-1]
    if node.level > 1:
        package = package[:-(node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def _imports(path: str) -> FrozenSet[str]:
    """Project files that ``path`` (relative to the repository) imports by name. An import of a baselines
    module inside a function picks a part at run time (hierarchical's tree): it adds no edge here, and
    head_files covers the part a head was built with."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    top_level = {id(node) for node in tree.body}
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            module = _absolute_module(node, path)
            target = _module_path(module) if module else None
            if target and not target.endswith("__init__.py"):
                targets.append(target)
            elif module:  # from vqbench import ops: a module, if it is one
                targets.extend(p for p in (_module_path(f"{module}.{a.name}") for a in node.names) if p)
        elif isinstance(node, ast.Import):
            targets.extend(p for p in (_module_path(a.name) for a in node.names) if p)
        nested = id(node) not in top_level
        # a package's __init__ only re-exports (importing it would pull in every head)
        found.update(t for t in targets if not (nested and t.startswith("baselines/"))
                     and not t.endswith("__init__.py"))
    return frozenset(found - NOT_EXECUTED)


def closure(paths) -> FrozenSet[str]:
    """The files in ``paths`` and every project file they import, transitively (NOT_EXECUTED left out)."""
    seen, todo = set(), [p for p in paths if p not in NOT_EXECUTED]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imports(path))
    return frozenset(seen)


def _head_classes(head):
    from vqbench.heads.contract import OutputHead
    for module in head.modules():
        for cls in type(module).__mro__:
            yield cls, isinstance(module, OutputHead) and issubclass(cls, OutputHead)


def head_files(head) -> FrozenSet[str]:
    """The project modules of the classes a head is made of (every submodule's MRO) and what they import:
    a head whose parts are chosen by an option (the trees) covers the part it built."""
    own = {_module_path(cls.__module__) for cls, _ in _head_classes(head)}
    return closure(own - {None})


def outside_files(head) -> FrozenSet[str]:
    """Absolute source files of the head's classes defined outside the repository (a third-party head)."""
    found = set()
    for cls, is_head in _head_classes(head):
        if is_head and _module_path(cls.__module__) is None:
            source = inspect.getsourcefile(cls)
            found.add(os.path.abspath(source) if source else "")
    return frozenset(found)


def files_for(spec: str) -> FrozenSet[str]:
    """Every file whose code a timed call of ``spec``'s head runs (outside ones as absolute paths)."""
    head = _small_head(spec)
    return closure(MEASURING) | head_files(head) | outside_files(head)


def _small_sizes(options: dict):
    """(V, d) candidates at which a head of these options can be built: its classes are those of any size."""
    numbers = [int(part) for value in options.values() for part in str(value).split("/") if part.isdigit()]
    bound = max([64, *(n + 1 for n in numbers)])
    return [(64, 8), (bound, 8), (bound, min(bound, 512))]


@lru_cache(maxsize=None)
def _small_head(spec: str):
    import torch
    from vqbench.heads.registry import make_head, parse_spec
    options = parse_spec(spec)[1]
    error = None
    for vocab, d in _small_sizes(options):
        extra = {"embeddings": torch.zeros(vocab, d)} if options.get("mapping") == "kmeans" else {}
        try:
            return make_head(spec, vocab, d, **extra)
        except (ValueError, TypeError) as e:
            error = e
    raise error


def normalized_code(source: str) -> str:
    """The code of a module as a canonical dump: no docstrings, comments, imports or counting methods."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        kept = [n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        if isinstance(node, ast.ClassDef):
            kept = [n for n in kept if not _counting_or_metadata(n)]
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and kept \
                and isinstance(kept[0], ast.Expr) and isinstance(kept[0].value, ast.Constant) \
                and isinstance(kept[0].value.value, str):
            kept = kept[1:]
        node.body = kept or [ast.Pass()]
    return ast.dump(tree, annotate_fields=True, include_attributes=False)


def _counting_or_metadata(node) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name in COUNTING_METHODS
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id in METADATA_ATTRIBUTES
    if isinstance(node, ast.Assign):
        return all(isinstance(t, ast.Name) and t.id in METADATA_ATTRIBUTES for t in node.targets)
    return False


def _read(path: str) -> str:
    with open(path if os.path.isabs(path) else os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def digest(files) -> str:
    """The fingerprint of these files' code (paths relative to ROOT, or absolute for code from outside)."""
    if "" in files:
        return UNCHECKABLE
    try:
        codes = sorted(normalized_code(_read(path)) for path in files)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return UNCHECKABLE
    h = hashlib.sha256()
    for code in codes:
        h.update(code.encode() + b"\0")
    return h.hexdigest()[:16]


def current_fingerprint(spec: str) -> str:
    """The fingerprint of ``spec``'s code in the working tree as it is now (no caching of file contents)."""
    return digest(files_for(spec))


@lru_cache(maxsize=None)
def code_fingerprint(spec: str) -> str:
    """The fingerprint of the code that measures ``spec`` (read once per process: the code it runs)."""
    return digest(files_for(spec))
