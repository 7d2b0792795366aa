"""vqbench: output layers of language models, measured side by side.

    from vqbench import make_head, HEADS
    head = make_head("vq:K=1024,mapping=frequency", vocab_size=V, d_model=d)
"""

from vqbench.head import OPS, HeadOutput, LogitsHead, OutputHead
from vqbench.registry import HEADS, make_head, parse_spec, register_head
from vqbench.vq import VQLogits

# the baselines register themselves on import
from baselines.adaptive import AdaptiveSoftmax  # noqa: E402
from baselines.hierarchical import HierarchicalSoftmax  # noqa: E402
from baselines.lowrank import LowRankSoftmax  # noqa: E402
from baselines.softmax import FullSoftmax  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "HEADS", "OPS", "AdaptiveSoftmax", "FullSoftmax", "HeadOutput", "HierarchicalSoftmax",
    "LogitsHead", "LowRankSoftmax", "OutputHead", "VQLogits", "make_head", "parse_spec",
    "register_head",
]
