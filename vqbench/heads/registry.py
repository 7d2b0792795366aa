"""Heads by name: the registry, spec strings and the factory.

A spec string is ``name`` or ``name:key=value,key=value``; list values use ``/``
(``adaptive:cutoffs=2000/10000``), booleans ``1``/``0``. Braces sweep an option: ``vq:K={256,1024}`` is
``vq:K=256`` and ``vq:K=1024`` (``expand_spec``). The same strings serve the Python API, the CLIs and asv.

Heads are found without a list: every module of the ``baselines`` package and ``vqbench.heads.vq`` (the built-in
heads), the entry-point group ``vqbench.heads`` (installed packages), and modules named with ``--import``
(``import_modules``). Each registers its classes with ``@register_head(name)``; an entry point may also
name an OutputHead subclass, registered under the entry point's name.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import re
import sys
from importlib import metadata
from typing import Dict, Iterable, List, Optional, Tuple, Type

#: registered head classes by name (``registered_heads()`` finds every head first)
HEADS: Dict[str, type] = {}
#: where the built-in heads live: every module of these packages, and these modules
BUILTIN_PACKAGES = ("baselines",)
BUILTIN_MODULES = ("vqbench.heads.vq",)
#: the entry-point group through which installed packages offer heads
ENTRY_POINT_GROUP = "vqbench.heads"
_found = False


def register_head(name: str):
    """Class decorator: register an OutputHead subclass under ``name``."""

    def decorate(cls):
        if name in HEADS and HEADS[name] is not cls and _qualname(HEADS[name]) != _qualname(cls):
            raise ValueError(f"name: a head named {name!r} is registered already")
        cls.name = name
        HEADS[name] = cls
        _document_options(cls)
        return cls

    return decorate


def _document_options(cls) -> None:
    """Append the declared options to the class docstring, so help(cls) lists them without a second copy."""
    lines = [f"        {o.describe()}" for o in cls.OPTIONS if o.in_spec]
    marker = "\n    Options (from OPTIONS):\n"
    if lines and marker not in (cls.__doc__ or ""):
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + marker + "\n".join(lines) + "\n"


def _qualname(cls) -> str:
    # a module imported again (a test re-running a plugin, importlib.reload) re-registers its own class
    return f"{cls.__module__}.{cls.__qualname__}"


def find_heads() -> None:
    """Import every built-in head module and load the ``vqbench.heads`` entry points (once per process)."""
    global _found
    if _found:
        return
    for package_name in BUILTIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package_name}.{info.name}")
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    load_entry_points()
    _found = True


def load_entry_points() -> List[str]:
    """Load the heads installed packages offer through the ``vqbench.heads`` group: an entry point names a
    module (which registers its heads) or an OutputHead subclass (registered under the entry point's name).
    A broken entry point is reported on stderr and skipped, so one bad package does not stop the others."""
    from vqbench.heads.contract import OutputHead
    loaded = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = entry.load()
        except Exception as error:  # a plugin's import error is its own; vqbench's heads still work
            print(f"vqbench: entry point {entry.name!r} ({entry.value}) failed to load: {error}", file=sys.stderr)
            continue
        if isinstance(target, type) and issubclass(target, OutputHead) and HEADS.get(entry.name) is not target:
            register_head(entry.name)(target)
        loaded.append(entry.name)
    return loaded


def import_modules(modules: Iterable[str]) -> None:
    """Import the modules named by ``--import`` (each registers its heads); ValueError names the module."""
    for module in modules:
        if not isinstance(module, str) or not module.strip():
            raise ValueError(f"--import: expected a module name, got {module!r}")
        try:
            importlib.import_module(module.strip())
        except ImportError as error:
            raise ValueError(f"--import: cannot import {module!r} ({error})") from None


def registered_heads() -> Dict[str, type]:
    """Every registered head class by name (built-in, entry points, imported), in ORDER."""
    find_heads()
    return dict(sorted(HEADS.items(), key=lambda item: (item[1].ORDER, item[0])))


def default_specs() -> Tuple[str, ...]:
    """The specs ``compare`` measures when none are named: each head's COMPARED (its bare name by default)."""
    specs = []
    for name, cls in registered_heads().items():
        specs.extend((name,) if cls.COMPARED is None else cls.COMPARED)
    return tuple(specs)


def head_class(name: str) -> Type:
    if name not in HEADS:
        find_heads()
    if name not in HEADS:
        raise ValueError(f"spec: unknown head {name!r}; registered heads: {', '.join(registered_heads())}")
    return HEADS[name]


def parse_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """'vq:K=1024,mapping=frequency' -> ('vq', {'K': '1024', 'mapping': 'frequency'})."""
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a string, got {type(spec).__name__}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"spec: missing head name in {spec!r}; expected 'name' or 'name:key=value,...'")
    if "{" in spec or "}" in spec:
        raise ValueError(f"spec: braces in {spec!r} sweep an option; expand them first (expand_spec)")
    options: Dict[str, str] = {}
    if sep and not rest.strip():
        raise ValueError(f"spec: nothing after ':' in {spec!r}; expected key=value pairs")
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key or not value:
                raise ValueError(
                    f"spec: malformed option {item!r} in {spec!r}; expected key=value pairs "
                    f"separated by commas")
            if key in options:
                raise ValueError(f"spec: option {key!r} given twice in {spec!r}")
            options[key] = value
    return name, options


_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_spec(spec: str) -> List[str]:
    """'vq:K={256,1024},bias={0,1}' -> every combination, in order: ['vq:K=256,bias=0', 'vq:K=256,bias=1',
    'vq:K=1024,bias=0', 'vq:K=1024,bias=1']; a spec without braces is returned alone."""
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a string, got {type(spec).__name__}")
    pieces = _BRACES.split(spec)  # text, set, text, set, ..., text
    texts, sets = pieces[0::2], [[v.strip() for v in s.split(",")] for s in pieces[1::2]]
    if any("{" in t or "}" in t for t in texts):
        raise ValueError(f"spec: unbalanced or nested braces in {spec!r}; expected e.g. vq:K={{256,1024}}")
    for values in sets:
        if not all(values):
            raise ValueError(f"spec: an empty value in a brace set of {spec!r}; expected e.g. K={{256,1024}}")
    out = []
    for combination in itertools.product(*sets):
        out.append("".join(t + v for t, v in zip(texts, combination)) + texts[-1])
    return list(dict.fromkeys(out))


def expand_specs(specs: Iterable[str]) -> List[str]:
    """Every spec of ``specs`` with its brace sets expanded, duplicates dropped, order kept."""
    return list(dict.fromkeys(s for spec in specs for s in expand_spec(spec)))


def spec_options(cls, spec_options_text: Dict[str, str]) -> dict:
    """A spec's option texts -> typed values, each checked against the class's OPTIONS."""
    declared = {o.name: o for o in cls.OPTIONS if o.in_spec}
    values = {}
    for key, text in spec_options_text.items():
        if key not in declared:
            raise ValueError(f"{key}: unknown option for head {cls.name!r} in a spec string; "
                             f"spec options: {', '.join(declared) or 'none'}")
        values[key] = declared[key].parse(text)
    return values


def canonical_spec(spec: str, vocab_size: int, d_model: int) -> str:
    """The spec a head built from ``spec`` at V, d reports as ``head.spec``, without building it."""
    name, options = parse_spec(spec)
    cls = head_class(name)
    return cls.spec_of(vocab_size, d_model, spec_options(cls, options))


def coerce_option(cls, key: str, text: str):
    """Convert a spec-string value to the option's declared type; errors name the option."""
    return spec_options(cls, {key: text})[key]


def option(cls, name: str):
    """The Option ``name`` of a head class."""
    for declared in cls.OPTIONS:
        if declared.name == name:
            return declared
    raise ValueError(f"{name}: no such option of head {cls.name!r}")


def check_spec(spec: str, vocab_size: Optional[int] = None, d_model: Optional[int] = None, **options) -> None:
    """Raise the ValueError/TypeError (naming the option) that building ``spec`` would raise for its head name
    and option types, and, given (V, d), for an option value, without building the head: a sweep checks every
    point of its grid before measuring."""
    cls, merged = _resolve(spec, options)
    check = getattr(cls, "check_options", None)
    if check is not None and vocab_size is not None and d_model is not None:
        check(vocab_size, d_model, **merged)


def estimate_parameters(spec: str, vocab_size: int, d_model: int, **options):
    """The parameter count ``make_head(spec, V, d)`` would build (None when its class cannot tell), from the
    class's closed form, without allocating anything."""
    cls, merged = _resolve(spec, options)
    check_spec(spec, vocab_size, d_model, **options)
    estimate = getattr(cls, "estimate_parameters", None)
    return None if estimate is None else estimate(vocab_size, d_model, **merged)


def _resolve(spec: str, options: dict):
    """(head class, every option from the spec string and the keywords, checked by name and type)."""
    name, texts = parse_spec(spec)
    cls = head_class(name)
    for key in texts:
        if key in options:
            raise ValueError(f"{key}: given both in the spec string and as a keyword")
    merged = spec_options(cls, texts)
    allowed = [o.name for o in cls.OPTIONS] + ["token_counts"]
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"{key}: unknown option for head {name!r}; known options: {', '.join(allowed)}")
        merged[key] = value
    return cls, merged


def make_head(spec: str, vocab_size: int, d_model: int, *, device=None, dtype=None, **options):
    """Build a registered head from a name or spec string plus keyword options.

    ``device`` and ``dtype`` move the finished head (parameters only; index buffers stay int64).
    """
    cls, merged = _resolve(spec, options)
    head = cls(vocab_size, d_model, **merged)
    if device is not None or dtype is not None:
        head = head.to(device=device, dtype=dtype)
    return head


def describe_heads() -> str:
    """Every registered head, its options and their docs: ``compare --list-heads``."""
    lines = []
    for name, cls in registered_heads().items():
        lines.append(f"{name}: {cls.TITLE or cls.__name__}. {cls.SUMMARY}".rstrip())
        for declared in cls.OPTIONS:
            if declared.in_spec:
                lines.append(f"    {declared.describe()}")
        if cls.EXAMPLES:
            lines.append(f"    e.g. {'  '.join(cls.EXAMPLES)}")
    return "\n".join(lines)


def readme_table() -> str:
    """README's head table, generated from each head's metadata (tests check that README holds it)."""
    lines = ["| head | spec | options | method |", "|---|---|---|---|"]
    for name, cls in registered_heads().items():
        examples = ", ".join(f"`{s}`" for s in (cls.EXAMPLES or (name,)))
        options = "; ".join(f"`{o.name}` (default {o.default_label()}): {o.doc}" for o in cls.OPTIONS
                            if o.in_spec) or "none"
        lines.append(f"| {cls.TITLE or name} | {examples} | {options} | {cls.SUMMARY} |")
    return "\n".join(lines)
