"""A step-wise run's state, typed: what it decided before its first step.

- :class:`PlannedStep`: one step of the plan (a unit, or for ``prune_once`` every unit).
- :class:`RunPlan`: what every step depends on: the method, the steps, the frozen convs,
  ICE's hyperparameters, the input shape and the original prunable conv parameters. It
  is the input of every step task, so it holds no timings and no running accuracy.
- :class:`RunStart`: the plan and what the setup measured (the reference accuracy, the
  original parameter count, the setup's seconds and work, the freeze trial's scores).

The accuracy a decision compares with (ICE's ``previous`` reference) is not state: the
loop (:func:`ice.methods.core.run_steps`) carries it, and :func:`last_accuracy` finds it
again from the finished steps when a run resumes.

``to_dict``/``from_dict`` give the plain-data form that tasks pass each other and that a
trial checkpoint stores: a flat dict of JSON types (lists, not tuples).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ice.methods.registry import MethodSpec, spec

__all__ = ["PlannedStep", "RunPlan", "RunStart", "plan_steps", "last_accuracy"]


@dataclass(frozen=True)
class PlannedStep:
    step: int  # counts from 1, as the logs and task names do
    unit: str  # the unit's name, or "all" for a step that prunes every unit
    ratio: float
    units: tuple[str, ...] = ()  # the units of a step that prunes several ("all"), in order

    def unit_names(self) -> tuple[str, ...]:
        return self.units or (self.unit,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "unit": self.unit}
        if self.units:
            out["units"] = list(self.units)
        return out | {"ratio": self.ratio}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlannedStep:
        return cls(int(d["step"]), str(d["unit"]), float(d["ratio"]), tuple(d.get("units", ())))


def plan_steps(method: str, units: Sequence[str], ratio: float) -> tuple[PlannedStep, ...]:
    """The steps of a run: one per unit, in forward order; ``prune_once`` has a single step
    that prunes every unit, in the same order and at the same ratio (so the same architecture)."""
    if spec(method).one_step:
        return (PlannedStep(1, "all", ratio, tuple(units)),)
    return tuple(PlannedStep(k + 1, name, ratio) for k, name in enumerate(units))


@dataclass(frozen=True)
class RunPlan:
    method: str
    steps: tuple[PlannedStep, ...]
    frozen: tuple[str, ...] = ()
    hp: Mapping[str, float] = field(default_factory=dict)  # ICE's thre, fr, base, delta, p, beta ({} for others)
    input_shape: tuple[int, ...] = ()
    conv_params_original: int = 0

    @property
    def spec(self) -> MethodSpec:
        return spec(self.method)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "plan": [s.to_dict() for s in self.steps],
            "frozen": list(self.frozen),
            "hp": dict(self.hp),
            "input_shape": list(self.input_shape),
            "conv_params_original": self.conv_params_original,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunPlan:
        return cls(
            method=str(d["method"]),
            steps=tuple(PlannedStep.from_dict(s) for s in d["plan"]),
            frozen=tuple(d["frozen"]),
            hp=dict(d["hp"]),
            input_shape=tuple(int(x) for x in d["input_shape"]),
            conv_params_original=int(d["conv_params_original"]),
        )


@dataclass(frozen=True)
class RunStart:
    plan: RunPlan
    acc_original: float | None  # the reference accuracy (measured only for a method that decides)
    params_original: int
    seconds_setup: float = 0.0  # reference accuracy and freeze trial
    work_setup: float = 0.0  # GMACs
    seconds_freeze_trial: float = 0.0
    freeze_scores: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.plan.to_dict() | {
            "acc_original": self.acc_original,
            "params_original": self.params_original,
            "seconds_setup": self.seconds_setup,
            "work_setup": self.work_setup,
            "seconds_freeze_trial": self.seconds_freeze_trial,
        }
        if self.freeze_scores is not None:
            out["freeze_scores"] = dict(self.freeze_scores)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunStart:
        scores = d.get("freeze_scores")
        return cls(
            plan=RunPlan.from_dict(d),
            acc_original=None if d["acc_original"] is None else float(d["acc_original"]),
            params_original=int(d["params_original"]),
            seconds_setup=float(d["seconds_setup"]),
            work_setup=float(d["work_setup"]),
            seconds_freeze_trial=float(d["seconds_freeze_trial"]),
            freeze_scores=None if scores is None else dict(scores),
        )


def last_accuracy(steps: Sequence[Mapping[str, Any]], acc_original: float | None) -> float | None:
    """The accuracy after the last step that measured one (``acc_finetuned``: fine-tuned or
    not), else the reference accuracy: what ICE's ``previous`` reference compares with."""
    for rec in reversed(steps):
        if rec.get("acc_finetuned") is not None:
            return float(rec["acc_finetuned"])
    return acc_original
