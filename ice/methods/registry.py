"""The one list of pruning methods, and what each one does differently.

Everything that differs between methods is a field of its :class:`MethodSpec`, read
through :func:`spec`; no other module compares a method's name with a string. A new
method is one name in :data:`Method` and one entry in :data:`SPECS` (a test checks that
the two agree), and params validation, the Prefect run form, the DVC ``foreach`` and
the cache keys follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ice.config import Params
from ice.names import METHODS, Method

__all__ = [
    "Method",
    "METHODS",
    "STEPWISE",
    "TRAINING_METHODS",
    "BASELINE",
    "MethodSpec",
    "SPECS",
    "spec",
    "method_inputs",
    "without",
    "DEVICE_KEYS",
]

# a method's name (ice.names: written once, shared with the params)


@dataclass(frozen=True)
class MethodSpec:
    """How one method prunes.

    Step-wise methods prune the pre-trained model unit by unit (``ice.methods.core``):

    - ``one_step``: one step prunes every unit (same criterion, rounding and order), so the
      architecture is the one the per-unit methods reach;
    - ``finetune``: after a step, ``always`` fine-tune, ``never`` (the recovery does all the
      training), or ``decide`` by ICE's rule on the freshly pruned model's accuracy;
    - ``pruning_aware_lr``: the fine-tune lr follows the remaining conv parameters (ICE), else
      ``prune.finetune_lr``;
    - ``freezes``: a freeze trial chooses layers that stay frozen (ICE's ``fr``);
    - ``searches``: an auto-tune search may choose its hyperparameters (``ice.autotune``).

    Training-time methods (``ice.methods.training``) prune while training:

    - ``schedule``: the sparsity schedule of :mod:`ice.schedules` (None: filters are cut at
      fixed intervals, prune_while_training);
    - ``filters``: always removes whole filters, whatever ``schedule.granularity`` says.

    ``reads``: the params sections the method reads beyond ``seed``, ``prune`` and the
    device keys of ``train`` (DVC's method config and the task cache keys both use it).
    """

    name: str
    stepwise: bool
    reads: tuple[str, ...] = ()
    one_step: bool = False
    finetune: Literal["always", "never", "decide"] = "always"
    pruning_aware_lr: bool = False
    freezes: bool = False
    searches: bool = False
    schedule: str | None = None
    filters: bool = False


_ICE = ("ice",)
_SCHEDULE = ("schedule",)
SPECS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec("ice", True, _ICE, finetune="decide", pruning_aware_lr=True, freezes=True, searches=True),
        MethodSpec("iterative", True, finetune="always"),
        MethodSpec("prune_once", True, one_step=True, finetune="never"),
        MethodSpec("one_shot", False, _SCHEDULE, schedule="one_shot"),
        MethodSpec("iterative_schedule", False, _SCHEDULE, schedule="iterative_schedule"),
        MethodSpec("agp", False, _SCHEDULE, schedule="agp"),
        MethodSpec("one_cycle", False, _SCHEDULE, schedule="one_cycle"),
        MethodSpec("prune_while_training", False, _SCHEDULE, filters=True),
    )
}
# the methods that prune the pre-trained model step by step (and can recover to a target)
STEPWISE: tuple[str, ...] = tuple(m for m in METHODS if SPECS[m].stepwise)
TRAINING_METHODS: tuple[str, ...] = tuple(m for m in METHODS if not SPECS[m].stepwise)
# the method every "speedup" is measured against: fine-tune after every step
BASELINE = "iterative"


def spec(method: str) -> MethodSpec:
    """The method's spec; an unknown name is a ``ValueError`` listing the choices."""
    try:
        return SPECS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}") from None


DEVICE_KEYS = ("device", "channels_last", "amp")


def method_inputs(params: Params, method: str) -> dict[str, Any]:
    """The params ``method`` reads, as plain data, and nothing else: ``seed``, ``prune`` (less the
    list of methods a project runs), the device keys of ``train``, the sections of its spec's
    ``reads``, and, for a training-time method from scratch, the model and all of ``train``.

    The one source for both consumers: DVC's method config (``scripts.method_config``, so
    ``prune@<method>`` reruns only when this changes) and the prune flow's task cache keys.
    """
    how = spec(method)
    dump = params.model_dump(mode="json")
    out: dict[str, Any] = {
        "seed": dump["seed"],
        "prune": {k: v for k, v in dump["prune"].items() if k != "methods"},
        "train": {k: dump["train"][k] for k in DEVICE_KEYS},
    }
    for name in how.reads:
        out[name] = dump[name]
    if not how.stepwise and params.schedule.init == "scratch":  # a whole training run
        out["model"], out["train"] = dump["model"], dump["train"]
    return out


def without(inputs: dict[str, Any], section: str, *keys: str) -> dict[str, Any]:
    """A copy of ``inputs`` (a :func:`method_inputs` dict) whose ``section`` lacks ``keys``: how a
    task's cache key, or DVC's change detector, leaves out what the task does not read, or what
    another input stands for (the search's choice comes in as ``hp``). ``inputs`` is unchanged."""
    return {**inputs, section: {k: v for k, v in inputs[section].items() if k not in keys}}
