"""prune: one method from the pretrained checkpoint, one Prefect task per step.

    python -m flows.prune --method ice --params params.yaml
        ->  models/pruned-ice.pt, reports/steps/ice.csv, reports/prune/ice.json

For the step-wise methods each step is a chain of cached tasks: prune-step,
decision-check (ICE only: the pruned model on the decision split), decide-finetune, then
finetune and decision-check when the decision says so; with ``prune.target`` set, recovery
chunks follow the last step, each a cached task with its val check. Every task is keyed by
its input checkpoint's sha256 and its own config, so a run killed at step k and started
again reuses steps 0..k-1 from the cache and ends with a byte-identical checkpoint. The
training-time methods (one_shot, iterative_schedule, agp, one_cycle, prune_while_training)
are one task each, reporting every epoch; from scratch (``schedule.init``, the default) they
train a fresh model and read no pre-trained checkpoint.

A method's total seconds are compute seconds: the steps' prune, evaluation and
fine-tune time, ICE's freeze trial and, for ICE, the auto-tuner's search.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

from ice.config import SEARCHED_ICE_KEYS
from ice.methods import STEPWISE, Method, spec
from ice.methods.plan import RunPlan, RunStart
from ice.methods.registry import method_inputs, without
from plumbing.caching import bind
from plumbing.cli import cli
from plumbing.log import STEP_SINK, progress
from plumbing.prefect_views import publish_artifact, update_progress
from plumbing.records import Publication, csv_bytes, json_bytes, read_json
from plumbing.registry import registered_name
from plumbing.runtime import Stage, open_stage
from plumbing.steptable import cumulative_cost, rounded_rows, step_metrics, target_metrics
from plumbing.store import resolve
from tasks.prune import (
    check_target,
    decide_finetune,
    decision_check_checkpoint,
    finetune_checkpoint,
    prune_one_step,
    recover_checkpoint,
    start_pruning,
    train_with_pruning,
)

if TYPE_CHECKING:
    from ice.methods.core import StepRecord

__all__ = ["prune"]


class _TaskSteps:
    """:class:`ice.methods.core.StepOps` as cached Prefect tasks over checkpoints: the
    current model is a store reference that each task reads and the next one gets."""

    def __init__(
        self,
        st: Stage,
        data_ref: dict[str, str],
        pre_ref: dict[str, str],
        plan: RunPlan,
        cfg: dict[str, Any],
        recovery_cfg: dict[str, Any],
    ):
        self.root, self.data_ref, self.pre_ref, self.cfg = str(st.root), data_ref, pre_ref, cfg
        self.recovery_cfg = recovery_cfg  # the steps' config plus prune.target: only the recovery reads it
        self.run = plan.to_dict()  # what every step task depends on, as plain data
        self.ref = pre_ref
        self.k, self.after = 0, "pruned"  # the step the current model is at, and what happened last
        self._prune, self._eval, self._decide, self._finetune, self._recover, self._check = (
            bind(t, st.root, st.store_url)
            for t in (
                prune_one_step,
                decision_check_checkpoint,
                decide_finetune,
                finetune_checkpoint,
                recover_checkpoint,
                check_target,
            )
        )
        self.chunk = 0  # recovery chunks done

    def _label(self, what: str) -> str:  # e.g. "decision-check-4-layer1.3.conv1-pruned", as the UI lists it
        return f"{what}-{self.k + 1}-{self.run['plan'][self.k]['unit']}-{self.after}"

    def prune(self, k: int) -> dict[str, Any]:
        out = self._prune(self.root, self.data_ref, self.ref, self.run, k, self.cfg)
        self.ref, self.k, self.after = out["ref"], k, "pruned"
        return out

    def decision_check(self) -> dict[str, float]:
        return self._eval.named(self._label("decision-check"))(self.root, self.data_ref, self.ref, self.cfg)

    def decide(self, reference: float | None, acc_now: float | None) -> bool:
        decide = self._decide.named(self._label("decide-finetune").removesuffix("-pruned"))
        return decide(self.run, reference, acc_now)

    def finetune(self, k: int, lr: float) -> dict[str, Any]:
        out = self._finetune(self.root, self.data_ref, self.ref, self.pre_ref, self.run, k, lr, self.cfg)
        self.ref, self.after = out["ref"], "finetuned"
        return out

    def reference(self) -> dict[str, float]:
        """The unpruned model on the target's split: what the target is measured from."""
        return self._check.named("check-target-unpruned")(self.root, self.data_ref, self.pre_ref, self.recovery_cfg)

    def recover(self, i: int, budget: float | None) -> dict[str, Any]:
        out = self._recover(self.root, self.data_ref, self.ref, self.pre_ref, self.run, i, budget, self.recovery_cfg)
        self.ref, self.chunk = out["ref"], i + 1
        return out

    def target_check(self) -> dict[str, float]:
        return self._check.named(f"check-target-{self.chunk}")(self.root, self.data_ref, self.ref, self.recovery_cfg)


@dataclass
class _Ran:
    """One method's run, the same shape for the step-wise and the training-time methods: the
    final checkpoint, the step (or epoch) records, the totals, and what else its report holds
    (``report``: the cost, the decisions and the recovery; or a training run's ``info``)."""

    ref: dict[str, str]
    steps: Sequence[Mapping[str, Any]]  # StepRecords, or a training run's epochs
    seconds: float
    work_gmacs: float | None
    finetunes: int
    search_seconds: float
    report: dict[str, Any]

    @property
    def recovery(self) -> list[dict[str, Any]]:
        return self.report.get("recovery") or []

    def summary(self) -> dict[str, Any]:
        """The report's fields besides the method, sha256 and run id."""
        totals = {"seconds": self.seconds, "work_gmacs": self.work_gmacs, "finetunes": self.finetunes}
        return totals | {"search_seconds": self.search_seconds} | self.report


def _stepwise(st: Stage, method: str, data_ref: dict[str, str], pre_ref: dict[str, str]) -> _Ran:
    from ice.methods.core import finish_run, run_steps, step_line

    # only what the method reads (the baseline reads no ICE key: its cache stays valid when only
    # ICE's settings change); likewise only the recovery reads prune.target
    how = spec(method)
    recovery_cfg = method_inputs(st.params, method)
    cfg = without(recovery_cfg, "prune", "target")
    hp = None
    search = {"seconds": 0.0, "work": 0.0}
    if how.searches:
        st.require(st.paths.autotune, "autotune")
        tuned = read_json(st.paths.autotune)
        hp, search = (
            tuned["hp"],
            {"seconds": float(tuned["search_seconds"]), "work": float(tuned.get("search_work", 0.0))},
        )
        # its result comes in as hp; where the search ran, it chose these, and params' own values
        # would only spoil the cache keys
        cfg = without(cfg, "ice", "autotune", *(SEARCHED_ICE_KEYS if tuned.get("enabled") else ()))
    start = RunStart.from_dict(
        bind(start_pruning, st.root, st.store_url)(str(st.root), data_ref, pre_ref, method, hp, cfg)
    )
    plan = start.plan
    n = len(plan.steps)
    if plan.frozen:
        progress(f"[{method}] freeze trial: {len(plan.frozen)} convs frozen")
    ref_acc = f", reference accuracy {start.acc_original:.2f}%" if start.acc_original is not None else ""
    what = "1 step pruning every unit" if how.one_step else f"{n} steps"
    progress(f"[{method}] {what} at ratio {st.params.prune.ratio}{ref_acc}")
    bar = publish_artifact("progress", f"prune-{method.replace('_', '-')}-progress", 0.0, f"{method}: steps done")
    t0 = time.perf_counter()

    def on_step(k: int, n: int, rec: StepRecord) -> None:
        if st.tracker is not None and st.run_id is not None:
            st.tracker.log_metrics(st.run_id, step_metrics(rec), step=rec["step"])
        elapsed = time.perf_counter() - t0
        eta = f", about {elapsed / (k + 1) * (n - k - 1) / 60:.0f} min left" if k + 1 < n and elapsed > 60 else ""
        progress(step_line(method, k, n, rec) + f"  [{elapsed / 60:.1f} min{eta}]")
        update_progress(bar, 100.0 * (k + 1) / n)

    ops = _TaskSteps(st, data_ref, pre_ref, plan, cfg, recovery_cfg)
    steps, _ = run_steps(ops, start, st.params, on_step=on_step)

    def on_check(rec: dict[str, Any], line: str) -> None:
        if st.tracker is not None and st.run_id is not None:
            st.tracker.log_metrics(
                st.run_id, {"recovery_val_acc": rec["acc"], "recovery_epochs": rec["epochs"]}, step=rec["check"]
            )
        progress(line + f"  [{(time.perf_counter() - t0) / 60:.1f} min]")

    out = finish_run(
        ops, start, steps, st.params, method, search=search, reference=ops.reference, log=progress, on_check=on_check
    )
    cost = out.cost
    cumulative_cost(steps, cost["search_seconds"] + cost["setup_seconds"], cost["search_work"] + cost["setup_work"])
    report: dict[str, Any] = {"cost": cost, "hp": out.hp, "frozen": out.frozen, "acc_original": out.acc_original}
    if out.target is not None:
        report |= {"target": out.target, "recovery": out.recovery}
    return _Ran(ops.ref, steps, cost["seconds"], cost["work_gmacs"], out.finetunes, search["seconds"], report)


def _training(st: Stage, method: str, data_ref: dict[str, str], pre_ref: dict[str, str] | None) -> _Ran:
    live: list[int] = []
    # from scratch the method is a whole training run: it reads the model and training settings
    # (and no pre-trained checkpoint); from the pre-trained model only the device keys of train
    scratch = st.params.schedule.init == "scratch"
    cfg = method_inputs(st.params, method)

    def log_epoch(rec: dict[str, Any]) -> None:
        if st.tracker is not None and st.run_id is not None:
            metrics = {k: v for k, v in rec.items() if k not in ("step", "lr")} | {"lr_x1000": rec["lr"] * 1000}
            st.tracker.log_metrics(st.run_id, metrics, step=rec["step"])
        live.append(rec["step"])

    token = STEP_SINK.set(log_epoch)  # the task reports each epoch as it ends: live curves in MLflow
    try:
        out = bind(train_with_pruning, st.root, st.store_url)(
            str(st.root), data_ref, None if scratch else pre_ref, method, cfg
        )
    finally:
        STEP_SINK.reset(token)
    if not live:  # a cached result: no epoch ran here, so its curve is logged from the result
        for rec in out["steps"]:
            log_epoch(rec)
    return _Ran(out["ref"], out["steps"], out["seconds"], out["info"].get("work_gmacs"), 0, 0.0, {"info": out["info"]})


def _run_name() -> str:
    """``prune-<method>-r<ratio>``, e.g. ``prune-ice-r0.6`` (``prune-<method>`` if params cannot be read yet:
    the flow itself then fails with the one-line error)."""
    from prefect.runtime import flow_run

    p = flow_run.parameters
    name = f"prune-{p.get('method', 'method')}"
    try:
        from ice.config import load_params
        from plumbing.paths import project_root

        pfile = Path(p.get("params_path") or "params.yaml")
        if not pfile.is_absolute():
            pfile = project_root(p.get("root")) / pfile
        return f"{name}-r{load_params(pfile, p.get('overrides')).prune.ratio:g}"
    except Exception:
        return name


@flow(name="prune", flow_run_name=_run_name)
def prune(
    method: Method, params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Prune the pretrained model with one method.

    Args:
        method: the pruning method: ice, the iterative baseline, or a training-time schedule
        params_path: the params file, relative to the project root
        root: the project root (default: $ICE_PROJECT_DIR, else the working directory)
        overrides: params overrides as dotted keys, e.g. {"prune.ratio": 0.7, "ice.thre": 2.0}
    """
    from ice.methods import METHODS

    if method not in METHODS:
        raise ValueError(f"method = {method!r} is not allowed; allowed: {', '.join(METHODS)}")
    with open_stage("prune", params_path, root, overrides, method=method) as st:
        data_ref = st.require(st.paths.prepared, "prepare")
        if method in STEPWISE:
            out = _stepwise(st, method, data_ref, st.require(st.paths.pretrained, "pretrain"))
        elif st.params.schedule.init == "scratch":  # a whole training run of its own: no pre-trained model
            out = _training(st, method, data_ref, None)
        else:
            out = _training(st, method, data_ref, st.require(st.paths.pretrained, "pretrain"))
        final = resolve(st.paths, out.ref)
        rows = [{"method": method, "phase": "step", **r} for r in out.steps]
        last_k = rows[-1]["step"] if rows else 0
        rows += [{"method": method, "phase": "recovery", "step": last_k, **r} for r in out.recovery]
        report = out.summary() | {"method": method, "sha256": out.ref["sha256"], "mlflow_run_id": st.run_id}
        # the model, its steps and its report are one output: all of them change, or none
        with Publication() as pub:
            pub.add_file(final, st.paths.pruned(method), out.ref["sha256"])
            pub.add_bytes(st.paths.steps_csv(method), csv_bytes(rows))
            pub.add_bytes(st.paths.prune_report(method), json_bytes(report))
        assert st.tracker is not None and st.run_id is not None
        last = max((int(r["step"]) for r in out.steps), default=0)  # the totals sit at the end of the curves
        st.tracker.log_metrics(
            st.run_id,
            {
                "total_seconds": out.seconds,
                "work_gmacs": out.work_gmacs,
                "finetunes": out.finetunes,
                "search_seconds": out.search_seconds,
            }
            | target_metrics(out.report.get("target")),
            step=last,
        )
        st.tracker.log_artifacts(st.run_id, [st.paths.steps_csv(method), st.paths.prune_report(method)])
        if st.params.tracking.register_models:
            name = registered_name(st.params.model.arch, st.params.data.source)
            version = st.tracker.log_model(
                st.run_id, st.paths.pruned(method), name, method, f"pruned with {method}", {"method": method}
            )
            report["registered"] = f"{name} v{version} (alias {method})"
            st.tracker.set_tags(
                st.run_id, {"ice.registered": report["registered"]}
            )  # also when a cached rerun reuses it
        work = f", {out.work_gmacs:,.0f} GMACs" if out.work_gmacs is not None else ""
        link = st.tracker.run_url(st.run_id)
        publish_artifact(
            "table",
            f"prune-{method.replace('_', '-')}-steps",
            rounded_rows(out.steps),
            f"{method}: one row per step; MLflow run: {link}",
        )
        progress(
            f"[{method}] done: {out.finetunes} fine-tunes, {out.seconds:.1f}s{work} -> {st.paths.rel(st.paths.pruned(method))}"
        )
        return report


if __name__ == "__main__":

    def _extra(ap: Any) -> None:
        from ice.methods import METHODS

        ap.add_argument("--method", required=True, choices=METHODS, help="the pruning method")

    cli(
        "prune",
        "Prune the pretrained model with one method.",
        lambda a, o: prune(a.method, a.params, a.root, o),
        _extra,
    )
