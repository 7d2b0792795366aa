"""The four baseline output layers. Importing this package registers them."""

import vqbench  # noqa: F401  (the common interface; loads and registers every head)
from baselines.adaptive import AdaptiveSoftmax
from baselines.hierarchical import HierarchicalSoftmax
from baselines.lowrank import LowRankSoftmax
from baselines.softmax import FullSoftmax

__all__ = ["AdaptiveSoftmax", "FullSoftmax", "HierarchicalSoftmax", "LowRankSoftmax"]
