"""vqbench: output layers of language models, measured side by side.

    from vqbench import make_head
    head = make_head("vq:K=1024,mapping=frequency", vocab_size=V, d_model=d)

Heads register by name (vqbench.heads.registry): the built-in ones, those of the entry-point group
``vqbench.heads`` and those of modules imported before use are found when first asked for.
"""

from vqbench._version import __version__  # noqa: F401
from vqbench.heads.contract import OPS, HeadOutput, LogitsHead, OutputHead
from vqbench.heads.registry import make_head, parse_spec, register_head, registered_heads
from vqbench.heads.vq import VQLogits

def __getattr__(name):
    # the baseline classes live in baselines/, which builds on this package: served on first access, by the
    # class name of any registered head (vqbench.AdaptiveSoftmax)
    if name.startswith("__"):  # probes by tools (copy, pickle, doctest) load no heads
        raise AttributeError(f"module 'vqbench' has no attribute {name!r}")
    from vqbench.heads import registry
    registry.find_heads()
    if name == "HEADS":  # the registry's own dict
        return registry.HEADS
    for cls in registry.HEADS.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'vqbench' has no attribute {name!r}")


__all__ = [
    "HEADS", "OPS", "AdaptiveSoftmax", "FullSoftmax", "HeadOutput", "HierarchicalSoftmax",
    "LogitsHead", "LowRankSoftmax", "OutputHead", "VQLogits", "make_head", "parse_spec",
    "register_head", "registered_heads",
]
