"""Which code measured a row: a hash of the source files a head and the measurement depend on.

A row's fingerprint covers the measuring code (the sweep and every project module it imports) and
the head's own modules (the module of each class in its MRO and every project module they import),
so that changing the Huffman tree stales the Huffman rows only. Imports are read from the source
(``from vqbench.x import ...``, ``from baselines.y import ...``); ``import vqbench`` alone and the
registry's on-first-use loading of built-in heads add no edge.
"""

from __future__ import annotations

import ast
import hashlib
import os
from functools import lru_cache
from typing import FrozenSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("vqbench", "baselines")
MEASURING = "vqbench/sweep.py"  # the measurement's entry point; its imports follow


def _module_path(name: str):
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    path = os.path.join(*parts) + ".py"
    return path if os.path.isfile(os.path.join(ROOT, path)) else None


@lru_cache(maxsize=None)
def _imports(path: str) -> FrozenSet[str]:
    """Project files that ``path`` (relative to the repository) imports by name. An import of a baselines
    module inside a function picks a part at run time (hierarchical's tree): it adds no edge here, and
    head_files covers the part a head was built with."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    top_level = {id(node) for node in tree.body}
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            target = _module_path(node.module)
            if target:
                targets.append(target)
            elif node.module in PACKAGES:  # from vqbench import ops: a module, if it is one
                targets.extend(p for p in (_module_path(f"{node.module}.{a.name}") for a in node.names) if p)
        elif isinstance(node, ast.Import):
            targets.extend(p for p in (_module_path(a.name) for a in node.names) if p)
        nested = id(node) not in top_level
        found.update(t for t in targets if not (nested and t.startswith("baselines/")))
    return frozenset(found)


def closure(paths) -> FrozenSet[str]:
    """The files in ``paths`` and every project file they import, transitively."""
    seen, todo = set(), list(paths)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imports(path))
    return frozenset(seen)


def head_files(head) -> FrozenSet[str]:
    """The modules of the classes a head is made of (every submodule's MRO within the project) and what
    they import: a head whose parts are chosen by an option (the trees) covers the part it built."""
    own = {_module_path(cls.__module__) for module in head.modules() for cls in type(module).__mro__}
    return closure(own - {None})


def files_for(spec: str) -> FrozenSet[str]:
    return closure([MEASURING]) | head_files(_small_head(spec))


@lru_cache(maxsize=None)
def _small_head(spec: str):
    """The head of ``spec`` at a small size: its classes are those of any size."""
    import torch
    from vqbench.registry import make_head, parse_spec
    options = parse_spec(spec)[1]
    vocab = max(64, int(options.get("K", 0)) + 1)
    extra = {"embeddings": torch.zeros(vocab, 8)} if options.get("mapping") == "kmeans" else {}
    return make_head(spec, vocab, 8, **extra)


def current_fingerprint(spec: str) -> str:
    """The fingerprint of ``spec``'s code in the working tree as it is now (no caching)."""
    return _digest(files_for(spec))


def _digest(files) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        with open(os.path.join(ROOT, path), "rb") as f:
            digest.update(path.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def code_fingerprint(spec: str) -> str:
    """The fingerprint of the code that measures ``spec`` (read once per process: the code it runs)."""
    return _digest(files_for(spec))
