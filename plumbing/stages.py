"""The stage graph, once: what each stage reads from which upstream stage, what it writes,
and where it records the sha256 of its main output.

The preflight (which inputs a flow verifies before Prefect starts), ``recorded_sha`` (which
record vouches for a file), the pipeline flow's fan-out (what a method's task needs and
hands back) and the method-config stage all derive from :data:`STAGES`.
``tests/unit/test_stages.py`` checks that ``dvc.yaml`` says the same, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plumbing.paths import Paths

__all__ = ["StageSpec", "STAGES", "stage", "outputs", "record_of", "recorded_inputs"]


@dataclass(frozen=True)
class StageSpec:
    """One stage. ``per_method``: one instance per ``prune.methods`` entry (DVC's ``foreach``);
    ``outs(paths, method)``: the files it writes; ``record``: the output whose sha256 it records,
    and the file it records it in (a stage without one writes no verified output)."""

    name: str
    upstream: tuple[str, ...]
    outs: Callable[[Paths, str], list[Path]]
    per_method: bool = False
    record: Callable[[Paths, str], tuple[Path, Path]] | None = None


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "prepare",
        (),
        lambda p, m: [p.prepared, p.prepared_record],
        record=lambda p, m: (p.prepared, p.prepared_record),
    ),
    StageSpec(
        "pretrain",
        ("prepare",),
        lambda p, m: [p.pretrained, p.pretrain_report],
        record=lambda p, m: (p.pretrained, p.pretrain_report),
    ),
    StageSpec("autotune", ("prepare", "pretrain"), lambda p, m: [p.autotune]),
    StageSpec("method-config", ("autotune",), lambda p, m: [p.method_config(m)], per_method=True),
    StageSpec(
        "prune",
        ("prepare", "pretrain", "method-config"),
        lambda p, m: [p.pruned(m), p.steps_csv(m), p.prune_report(m)],
        per_method=True,
        record=lambda p, m: (p.pruned(m), p.prune_report(m)),
    ),
    StageSpec(
        "evaluate",
        ("prepare", "pretrain", "prune"),
        lambda p, m: [p.metrics, p.compare, p.figures, p.plots_steps],
    ),
)
_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> StageSpec:
    return _BY_NAME[name]


def outputs(name: str, paths: Paths, method: str = "") -> list[Path]:
    return stage(name).outs(paths, method)


def record_of(paths: Paths, path: Path) -> Path | None:
    """The file in which ``path``'s producer recorded its sha256 (None: no stage records one)."""
    for s in STAGES:
        if s.record is None:
            continue
        if s.per_method:  # the method is the file's stem: models/pruned/<method>.pt
            out, record = s.record(paths, path.stem)
        else:
            out, record = s.record(paths, "")
        if out == path:
            return record
    return None


def recorded_inputs(name: str, paths: Paths, methods: Sequence[str]) -> list[tuple[Path, str]]:
    """What a stage verifies before it starts: each recorded output of its upstream stages, with
    the command that makes it (``pretrain``, ``prune --method ice``). A per-method upstream gives
    one output per method in ``methods``; a stage outside the graph (``pipeline``) verifies none."""
    if name not in _BY_NAME:
        return []
    out: list[tuple[Path, str]] = []
    for up in stage(name).upstream:
        s = stage(up)
        if s.record is None:
            continue
        for m in methods if s.per_method else ("",):
            out.append((s.record(paths, m)[0], f"{up} --method {m}" if s.per_method else up))
    return out
