"""Heads by name: the registry, spec strings and the factory.

A spec string is ``name`` or ``name:key=value,key=value``; list values use ``/``
(``adaptive:cutoffs=2000/10000``), booleans ``1``/``0``. The same strings serve the Python
API, the ``compare`` command and asv.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Dict, Tuple, Type

#: registered head classes by name (``registered_heads()`` loads the built-in ones first)
HEADS: Dict[str, type] = {}
#: the built-in heads and the module that registers each: loaded when first asked for, so that no
#: package imports another at import time (baselines/ builds on vqbench/, never the reverse)
BUILTIN_HEADS = {"softmax": "baselines.softmax", "adaptive": "baselines.adaptive",
                 "hierarchical": "baselines.hierarchical", "lowrank": "baselines.lowrank", "vq": "vqbench.vq",
                 "peer": "baselines.peers"}
#: the head specs a comparison measures when none are named: every method, both trees, softmax chunked
DEFAULT_HEADS = ("softmax", "softmax:chunk=256", "adaptive", "hierarchical", "hierarchical:tree=huffman",
                 "lowrank", "vq")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def register_head(name: str):
    """Class decorator: register an OutputHead subclass under ``name``."""

    def decorate(cls):
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"name: a head named {name!r} is registered already")
        cls.name = name
        HEADS[name] = cls
        return cls

    return decorate


def parse_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """'vq:K=1024,mapping=frequency' -> ('vq', {'K': '1024', 'mapping': 'frequency'})."""
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a string, got {type(spec).__name__}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"spec: missing head name in {spec!r}; expected 'name' or 'name:key=value,...'")
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


def expand_codebook(spec: str, K: int) -> str:
    """A vq spec without K= gets K (vq specs sweep their codebook size); any other spec is returned as is."""
    name, options = parse_spec(spec)
    if name != "vq" or "K" in options:
        return spec
    rest = spec.partition(":")[2]
    return f"vq:K={K}" + (f",{rest}" if rest else "")


def check_spec(spec: str, vocab_size: int, d_model: int, **options) -> None:
    """Raise the ValueError/TypeError (naming the option) that building ``spec`` at (V, d) would raise for
    an option value, without building the head: a sweep checks every point of its grid before measuring."""
    cls, merged = _resolve(spec, options)
    check = getattr(cls, "check_options", None)
    if check is not None:
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
    name, spec_options = parse_spec(spec)
    cls = head_class(name)
    for key in spec_options:
        if key in options:
            raise ValueError(f"{key}: given both in the spec string and as a keyword")
    merged = {k: coerce_option(cls, k, v) for k, v in spec_options.items()}
    allowed = option_names(cls)
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(
                f"{key}: unknown option for head {name!r}; known options: {', '.join(sorted(allowed))}")
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


def registered_heads() -> Dict[str, type]:
    """Every registered head class by name, the built-in ones included."""
    for module in BUILTIN_HEADS.values():
        importlib.import_module(module)
    return HEADS


def head_class(name: str) -> Type:
    if name not in HEADS and name in BUILTIN_HEADS:
        importlib.import_module(BUILTIN_HEADS[name])
    if name not in HEADS:
        raise ValueError(f"spec: unknown head {name!r}; registered heads: {', '.join(sorted(registered_heads()))}")
    return HEADS[name]


def option_names(cls) -> set:
    params = inspect.signature(cls.__init__).parameters
    return {p for p in params if p not in ("self", "vocab_size", "d_model")}


def coerce_option(cls, key: str, text: str):
    """Convert a spec-string value to the option's declared type; errors name the option."""
    types = cls.OPTION_TYPES
    if key not in types:
        raise ValueError(
            f"{key}: unknown option for head {cls.name!r} in a spec string; "
            f"spec options: {', '.join(sorted(types))}")
    kind = types[key]
    low = text.lower()
    if kind is bool:
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{key}: expected 1/0 (or true/false), got {text!r}")
    if low == "none":
        return None
    try:
        if kind is tuple:
            return tuple(int(part) for part in text.split("/"))
        return kind(text)
    except ValueError:
        raise ValueError(f"{key}: expected {getattr(kind, '__name__', kind)}, got {text!r}") from None
