"""vqbench: output layers of language models, measured side by side.

    from vqbench import make_head
    head = make_head("vq:K=1024,mapping=frequency", vocab_size=V, d_model=d)

Heads register by name (vqbench.registry): the built-in ones, those of the entry-point group
``vqbench.heads`` and those of modules imported before use are found when first asked for.
"""

from vqbench.head import OPS, HeadOutput, LogitsHead, OutputHead
from vqbench.registry import make_head, parse_spec, register_head, registered_heads
from vqbench.vq import VQLogits

__version__ = "0.1.0"

# the baseline classes live in baselines/, which builds on this package: served on first access
_BASELINES = {"AdaptiveSoftmax": "baselines.adaptive", "FullSoftmax": "baselines.softmax",
              "HierarchicalSoftmax": "baselines.hierarchical", "LowRankSoftmax": "baselines.lowrank"}


def __getattr__(name):
    if name == "HEADS":  # the registry's own dict, every head found first
        from vqbench import registry
        registry.find_heads()
        return registry.HEADS
    if name in _BASELINES:
        import importlib
        return getattr(importlib.import_module(_BASELINES[name]), name)
    raise AttributeError(f"module 'vqbench' has no attribute {name!r}")


__all__ = [
    "HEADS", "OPS", "AdaptiveSoftmax", "FullSoftmax", "HeadOutput", "HierarchicalSoftmax",
    "LogitsHead", "LowRankSoftmax", "OutputHead", "VQLogits", "make_head", "parse_spec",
    "register_head", "registered_heads",
]
