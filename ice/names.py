"""The names that the registries and the params share, written once: a leaf module (it imports
nothing of the project), so ``ice.config`` derives its choices from here instead of repeating
them, and each registry checks its entries against the same names.

- :data:`Method`: one entry per method in ``ice.methods.registry.SPECS``;
- :data:`Criterion`: one entry per criterion in ``ice.pruning.importance.CRITERIA``;
- :data:`WhileTrainingCriterion`: the criteria that pruning while training accepts.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["Method", "METHODS", "Criterion", "CRITERION_NAMES", "WhileTrainingCriterion", "DEFAULT_CRITERION"]

# a method's name, as a type (the Prefect run form shows it as a drop-down)
Method = Literal[
    "ice", "iterative", "prune_once", "one_shot", "iterative_schedule", "agp", "one_cycle", "prune_while_training"
]
METHODS: tuple[str, ...] = get_args(Method)

# a channel-importance criterion's name (low score = removed first)
Criterion = Literal["l1", "l2", "random", "mean_activation", "entropy", "taylor"]
CRITERION_NAMES: tuple[str, ...] = get_args(Criterion)
DEFAULT_CRITERION: Final = "l1"  # also what the freeze trial scores with when the run's criterion needs data
# pruning filters while training scores every interval steps: weight-only or one cheap forward pass
WhileTrainingCriterion = Literal["l1", "mean_activation", "random"]
