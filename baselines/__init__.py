"""The four baseline output layers. Each module registers its head with vqbench's registry on import;
vqbench.heads.registry imports them when a head of theirs is first asked for."""

from baselines.adaptive import AdaptiveSoftmax
from baselines.hierarchical import HierarchicalSoftmax
from baselines.lowrank import LowRankSoftmax
from baselines.softmax import FullSoftmax

__all__ = ["AdaptiveSoftmax", "FullSoftmax", "HierarchicalSoftmax", "LowRankSoftmax"]
