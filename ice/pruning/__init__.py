"""Structured and unstructured pruning.

- :func:`prunable_units` lists the units ICE steps over, in forward order.
- :func:`prune_unit` removes a fraction of a unit's channels, physically.
- :mod:`ice.pruning.importance` scores channels; :mod:`ice.pruning.masks` does
  unstructured magnitude pruning with exact sparsity.
"""

from ice.pruning.importance import CRITERIA, channel_importance
from ice.pruning.masks import Masks, magnitude_masks
from ice.pruning.structured import prune_channels, prune_unit
from ice.pruning.units import Member, Unit, prunable_units

__all__ = [
    "CRITERIA",
    "Masks",
    "Member",
    "Unit",
    "channel_importance",
    "magnitude_masks",
    "prunable_units",
    "prune_channels",
    "prune_unit",
]
