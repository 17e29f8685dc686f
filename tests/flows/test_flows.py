"""The flows end to end on a tiny digits project, with a real sqlite MLflow store."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from helpers import write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(harness, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("ICE_QUIET", "1")
    root = tmp_path_factory.mktemp("project")
    write_params(
        root, prune={"methods": ["ice", "iterative", "one_cycle", "prune_while_training"]}, schedule={"epochs": 2}
    )
    from flows.pipeline import pipeline

    metrics = pipeline("params.yaml", str(root))
    yield root, metrics
    mp.undo()


def _client(root):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def test_pipeline_writes_every_output(project):
    root, metrics = project
    for rel in (
        "data/prepared/dataset.pt",
        "models/pretrained.pt",
        "models/autotune.json",
        "reports/metrics.json",
        "reports/compare.md",
        "reports/plots/steps.csv",
        "reports/figures/accuracy.png",
        "reports/figures/params.png",
    ):
        assert (root / rel).exists(), rel
    for m in ("ice", "iterative", "one_cycle", "prune_while_training"):
        assert (root / "models" / "pruned" / f"{m}.pt").exists()
        assert (root / "reports" / "steps" / f"{m}.csv").exists()
    saved = json.loads((root / "reports/metrics.json").read_text())
    assert set(saved["methods"]) == {"ice", "iterative", "one_cycle", "prune_while_training"}
    it = saved["methods"]["iterative"]
    assert it["speedup_vs_iterative"] == pytest.approx(1.0)
    assert it["finetunes"] == 3  # the baseline fine-tunes after each of the 3 steps
    assert it["params"] < saved["pretrained"]["params"]
    for row in saved["methods"].values():
        assert {"val_acc", "test_acc", "params", "macs", "total_seconds", "finetunes", "speedup_vs_iterative"} <= set(
            row
        )
    # work (GMACs) is reported for the step-wise methods, and the baseline never evaluates a freshly pruned model
    assert saved["methods"]["iterative"]["work_gmacs"] > 0 and saved["methods"]["ice"]["work_gmacs"] > 0
    assert saved["methods"]["iterative"]["work_speedup_vs_iterative"] == pytest.approx(1.0)
    it_steps = (root / "reports" / "steps" / "iterative.csv").read_text().splitlines()
    header = it_steps[0].split(",")
    assert all(line.split(",")[header.index("acc_pruned")] == "" for line in it_steps[1:])
    ice_report = json.loads((root / "reports" / "prune" / "ice.json").read_text())
    assert ice_report["cost"]["search_work"] > 0 and ice_report["cost"]["work_gmacs"] == pytest.approx(
        sum(v for k, v in ice_report["cost"].items() if k.endswith("_work"))
    )
    compare = (root / "reports" / "compare.md").read_text()
    assert "ICE and iterative: each fine-tune" in compare and "pruning speedup vs iterative" in compare
    tuned = json.loads((root / "models/autotune.json").read_text())
    assert tuned["enabled"] and len(tuned["trials"]) == 2 and sum(t["best"] for t in tuned["trials"]) == 1
    assert saved["methods"]["ice"]["total_seconds"] >= tuned["search_seconds"] > 0  # the search counts in ICE's time


def test_compare_ranks_each_budget_apart(project):
    """Structured methods share one size, unstructured ones one sparsity; each table ranks only its own;
    every method's training cost counts what its model went through (pre-training for the pruned ones)."""
    root, _ = project
    saved = json.loads((root / "reports/metrics.json").read_text())["methods"]
    pre = json.loads((root / "reports/pretrain.json").read_text())
    compare = (root / "reports" / "compare.md").read_text()
    structured, unstructured = compare.split("## Structured")[1].split("## Unstructured")
    for m in ("ice", "iterative", "prune_while_training"):
        assert f"| {m} |" in structured and f"| {m} |" not in unstructured
        assert saved[m]["group"] == "structured"
    assert "| one_cycle |" in unstructured and saved["one_cycle"]["group"] == "unstructured"
    assert "Equal budget: yes" in structured
    # the same cut of each unit's filters: exactly the same size
    assert saved["prune_while_training"]["params_nonzero"] == saved["ice"]["params_nonzero"]
    assert saved["one_cycle"]["weight_sparsity"] == pytest.approx(0.8, abs=0.002)
    dense = json.loads((root / "reports/metrics.json").read_text())["pretrained"]["params"]
    for row in saved.values():  # one meaning for all: the share of the dense model's parameters gone
        assert row["sparsity"] == pytest.approx(1 - row["params_nonzero"] / dense, abs=1e-4) and row["sparsity"] > 0
    # cost: from scratch the whole training; from the pre-trained model, pre-training plus pruning
    assert saved["one_cycle"]["init"] == "scratch" and saved["ice"]["init"] == "pretrained"
    assert saved["one_cycle"]["training_work_gmacs"] == saved["one_cycle"]["work_gmacs"] > 0
    assert pre["work_gmacs"] > 0
    assert saved["ice"]["training_work_gmacs"] == pytest.approx(
        pre["work_gmacs"] + saved["ice"]["work_gmacs"], rel=1e-3
    )
    assert saved["ice"]["training_seconds"] == pytest.approx(pre["seconds"] + saved["ice"]["total_seconds"], rel=1e-3)
    assert saved["one_cycle"]["speedup_vs_iterative"] is None  # a pruning speedup means nothing for a whole training
    # ranked by test accuracy within a table
    accs = [
        float(line.split("|")[3]) for line in structured.splitlines() if line.startswith("| ") and "rank" not in line
    ]
    assert accs == sorted(accs, reverse=True) and len(accs) == 3


def saved_macs(root, method):
    return json.loads((root / "reports" / "metrics.json").read_text())["methods"][method]["macs"]


def test_mlflow_runs_metrics_and_tags(project):
    root, _ = project
    c = _client(root)
    exp = c.get_experiment_by_name("ice-test")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    by_stage: dict[str, list] = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("ice.stage"), []).append(r)
    assert {"pretrain", "autotune", "autotune-trial", "prune", "evaluate"} <= set(by_stage)
    prune_runs = {r.data.tags["method"]: r for r in by_stage["prune"]}
    assert set(prune_runs) == {"ice", "iterative", "one_cycle", "prune_while_training"}
    for r in [*by_stage["pretrain"], *by_stage["prune"], *by_stage["evaluate"]]:
        assert len(r.data.tags["prefect.flow_run_id"]) == 36  # a UUID
        assert r.data.tags["git.commit"]
        assert r.info.status == "FINISHED"
        assert r.data.params["prune.ratio"] == "0.5"
    ice = prune_runs["ice"]
    # names carry their units; steps count from 1, as the logs and task names do
    for key in (
        "acc_pruned_pct",
        "acc_finetuned_pct",
        "params",
        "macs",
        "frozen_convs",
        "finetuned",
        "finetune_seconds",
        "eval_gmacs",
    ):
        hist = c.get_metric_history(ice.info.run_id, key)
        assert sorted({m.step for m in hist}) == [1, 2, 3], key  # evaluate's final figure lands on the last step
    for key in ("finetunes", "total_seconds", "work_gmacs", "test_acc_pct"):  # totals: one point, at the end
        assert {m.step for m in c.get_metric_history(ice.info.run_id, key)} == {3}, key
    assert not {"acc_pruned", "t_finetune", "frozen", "test_acc", "sparsity"} & set(ice.data.metrics)
    # a fraction is a percentage in MLflow as in compare.md
    saved_ice = json.loads((root / "reports/metrics.json").read_text())["methods"]["ice"]
    assert ice.data.metrics["sparsity_pct"] == pytest.approx(100 * saved_ice["sparsity"], abs=0.01)
    # the lr only where a fine-tune used it, in units that a +-1 axis shows (0.001 -> 1)
    rows = list(csv.DictReader((root / "reports/steps/ice.csv").open()))
    lr = {m.step: m.value for m in c.get_metric_history(ice.info.run_id, "lr_x1000")}
    assert lr == {
        int(r["step"]): pytest.approx(float(r["lr"]) * 1000, rel=1e-5) for r in rows if r["finetuned"] == "True"
    }
    assert ice.data.metrics["macs"] == saved_macs(root, "ice")
    # a training-time method's curve is logged as it trains, one epoch at a time, not after the task
    oc = sorted(c.get_metric_history(prune_runs["one_cycle"].info.run_id, "acc_finetuned_pct"), key=lambda m: m.step)
    assert len(oc) == 2 and oc[1].timestamp - oc[0].timestamp >= 50, [(m.step, m.timestamp) for m in oc]
    params_hist = sorted(c.get_metric_history(ice.info.run_id, "params"), key=lambda m: m.step)
    assert params_hist[0].value > params_hist[-1].value  # every step removes parameters
    # every method logs non-zero params and sparsity under the same names; a masked model's `params` is not its dense size
    saved = json.loads((root / "reports/metrics.json").read_text())["methods"]
    for m, run in prune_runs.items():
        last = max(c.get_metric_history(run.info.run_id, "params"), key=lambda x: x.step)
        assert last.value == saved[m]["params_nonzero"], m
        assert c.get_metric_history(run.info.run_id, "sparsity_pct"), m
    assert saved["one_cycle"]["params_nonzero"] < 0.3 * saved["one_cycle"]["params"]
    parent = by_stage["autotune"][0].info.run_id
    children = by_stage["autotune-trial"]
    assert len(children) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent for r in children)
    assert {"thre", "fr", "base", "p", "beta", "delta"} <= set(children[0].data.params)
    arts = {a.path for a in c.list_artifacts(ice.info.run_id, "config")}
    assert {"config/params.yaml", "config/inputs.json"} <= arts and "config/dvc.lock" not in arts
    # what the run read, by the hashes it verified (not a dvc.lock that DVC rewrites after the stage)
    inputs = c.download_artifacts(ice.info.run_id, "config/inputs.json", str(root / "dl-inputs"))
    read = json.loads(Path(inputs).read_text())["inputs"]
    assert set(read) == {"data/prepared/dataset.pt", "models/pretrained.pt", "models/autotune.json"}
    assert read["models/pretrained.pt"] == json.loads((root / "reports/pretrain.json").read_text())["sha256"]


def test_one_pipeline_run_holds_the_comparison(project):
    """The pipeline's MLflow run is the parent of every stage's run and carries the answer:
    one metric per method and figure (logged once), compare.md as its description with
    images the server serves, and a runs-table view that shows those metrics as columns."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    root, metrics = project
    c = _client(root)
    exp = c.get_experiment_by_name("ice-test")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI view
    parents = c.search_runs([exp.experiment_id], "tags.`ice.stage` = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    pid = parent.info.run_id
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline-cifar_resnet20-digits"
    stages = [r for r in c.search_runs([exp.experiment_id], max_results=200) if r.data.tags["ice.stage"] != "pipeline"]
    top = [r for r in stages if r.data.tags["ice.stage"] != "autotune-trial"]
    assert {r.data.tags["ice.stage"] for r in top} == {"pretrain", "autotune", "prune", "evaluate"}
    assert all(r.data.tags.get("mlflow.parentRunId") == pid for r in top)
    assert all(r.data.tags["ice.pipeline"] == parent.data.tags["ice.pipeline"] for r in top)
    saved = metrics["methods"]
    for m, row in saved.items():
        assert parent.data.metrics[f"{m}.test_acc_pct"] == pytest.approx(row["test_acc"], abs=1e-3)
        assert parent.data.metrics[f"{m}.work_gmacs"] == pytest.approx(row["work_gmacs"], rel=1e-4)
        assert len(c.get_metric_history(pid, f"{m}.test_acc_pct")) == 1  # logged once, not per step
    md = (root / "reports/compare.md").read_text()
    first = md.splitlines()[2]
    assert "won**" in first and any(f"**{m} won**" in first for m in saved), first
    assert (
        "![accuracy_vs_work](figures/accuracy_vs_work.png)" in md
        and (root / "reports/figures/accuracy_vs_work.png").exists()
    )
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("# Method comparison") and first in note
    assert f"get-artifact?path=figures%2Faccuracy_vs_work.png&run_uuid={pid}" in note
    assert "figures/accuracy_vs_work.png" in {a.path for a in c.list_artifacts(pid, "figures")}
    views = [json.loads(v) for k, v in exp.tags.items() if k.startswith("mlflow.sharedViewState.")]
    assert views and views[-1]["searchFilter"] == "tags.`ice.stage` = 'pipeline'"
    assert {f"metrics.`{m}.test_acc_pct`" for m in saved} <= set(views[-1]["selectedColumns"])
    # the registry: what each pruned version is worth
    for m in ("ice", "one_cycle"):
        tags = c.get_model_version_by_alias("cifar_resnet20-digits", m).tags
        assert tags["method"] == m and tags["test_acc_pct"] == f"{saved[m]['test_acc']:.2f}"
        assert tags["val_acc_pct"] == f"{saved[m]['val_acc']:.2f}" and tags["macs"] == str(saved[m]["macs"])
        assert tags["params"] == str(saved[m]["params_nonzero"])
    assert "ratio" in c.get_model_version_by_alias("cifar_resnet20-digits", "ice").tags
    oc = c.get_model_version_by_alias("cifar_resnet20-digits", "one_cycle").tags
    assert "ratio" not in oc and float(oc["sparsity"]) == pytest.approx(0.8)
    # Prefect: a method that masks weights is tagged by its sparsity, not by a ratio it ignores
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["method:one_cycle"])))
        pipe = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["stage:pipeline"])))
    assert runs and all("sparsity:0.8" in r.tags and not any(t.startswith("ratio:") for t in r.tags) for r in runs)
    assert pipe and "project:ice-pipeline" in pipe[0].tags


def test_the_flow_runs_the_same_loop_as_the_library(project):
    """The flow's steps (cached tasks over checkpoints) equal ice.methods.core.iterate's in memory."""
    from ice.checkpoint import load_checkpoint
    from ice.config import load_params
    from ice.data import load_prepared
    from ice.methods.core import iterate

    root, _ = project
    params = load_params(root / "params.yaml")
    data = load_prepared(root / "data/prepared/dataset.pt")
    model, _ = load_checkpoint(root / "models/pretrained.pt")
    hp = json.loads((root / "models/autotune.json").read_text())["hp"]
    steps = iterate(model, data, "ice", params, hp=hp).steps
    rows = list(csv.DictReader((root / "reports/steps/ice.csv").open()))
    assert len(rows) == len(steps) == 3
    for row, rec in zip(rows, steps, strict=True):
        assert row["unit"] == rec["unit"] and int(row["params"]) == rec["params"] and int(row["macs"]) == rec["macs"]
        assert (row["finetuned"] == "True") == rec["finetuned"]
        for key in ("acc_pruned", "acc_finetuned", "lr"):
            assert (row[key] == "" and rec[key] is None) or float(row[key]) == pytest.approx(rec[key], abs=1e-9), key


def test_registered_versions_load_back(project):
    import mlflow.pyfunc
    import yaml

    from ice.checkpoint import load_checkpoint
    from ice.files import sha256_file

    root, _ = project
    c = _client(root)
    name = "cifar_resnet20-digits"
    aliases = c.get_registered_model(name).aliases
    assert {"pretrained", "ice", "iterative", "one_cycle"} <= set(aliases)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@ice")
    ref, _ = load_checkpoint(root / "models/pruned/ice.pt")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(loaded.predict(x.numpy())), ref.eval()(x))
    # the version names its checkpoint by sha256; the model holds that checkpoint and no pickle
    mv = c.get_model_version_by_alias(name, "ice")
    assert mv.tags["sha256"] == sha256_file(root / "models/pruned/ice.pt")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@ice", dst_path=str(root / "dl")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"} and "signature" in mlmodel
    assert (
        sha256_file(local / mlmodel["flavors"]["python_function"]["artifacts"]["checkpoint"]["path"])
        == mv.tags["sha256"]
    )
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]


def test_cached_task_results_are_json_not_pickle(project):
    root, _ = project
    records = list((root / ".ice-cache" / "results").iterdir())
    assert len(records) > 10
    for rec in records:
        meta = json.loads(rec.read_text())  # a pickle would not parse
        assert meta["metadata"]["serializer"]["type"] == "json", rec.name
        json.loads(meta["result"])  # the task's value itself is JSON text


def test_rerun_reuses_every_task(project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.prune import prune
    from ice.files import sha256_file

    root, _ = project
    before = sha256_file(root / "models/pruned/ice.pt")
    versions = len(_client(root).search_model_versions("name = 'cifar_resnet20-digits'"))
    state = prune("ice", "params.yaml", str(root), return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        # task-run states reach the API as events, after the flow returns: wait until every run has one
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            if all(r.state is not None for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        fr = client.read_flow_run(state.state_details.flow_run_id)
    names = {r.state.name if r.state is not None else "no state" for r in runs}
    assert len(runs) >= 1 + 3 * 3 and names == {"Cached"}, names
    # every task run names its step and unit (a cached rerun shows the same names)
    run_names = {r.name for r in runs}
    assert {
        "prune-step-1-layer1.0.conv1",
        "decision-check-1-layer1.0.conv1-pruned",
        "decide-finetune-1-layer1.0.conv1",
    } <= run_names
    # the Prefect UI's list names the run and can filter it by method, data, arch and ratio
    assert fr.name == "prune-ice-r0.5"
    assert {
        "project:ice-pipeline",
        "stage:prune",
        "method:ice",
        "data:digits",
        "arch:cifar_resnet20",
        "ratio:0.5",
    } <= set(fr.tags)
    assert "ice" not in fr.tags  # the project's tag does not read as a method
    assert sha256_file(root / "models/pruned/ice.pt") == before
    # the same bytes are not registered twice: the alias stays on the version with that sha256
    c = _client(root)
    assert len(c.search_model_versions("name = 'cifar_resnet20-digits'")) == versions
    assert c.get_model_version_by_alias("cifar_resnet20-digits", "ice").tags["sha256"] == before


def test_bad_params_fail_before_any_compute(harness, tmp_path):
    from flows.pipeline import pipeline
    from ice.config import ParamsError

    write_params(tmp_path, prune={"ratio": 1.5})
    with pytest.raises(ParamsError, match=r"prune\.ratio"):
        pipeline("params.yaml", str(tmp_path))
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()


def test_missing_upstream_names_the_stage(harness, tmp_path, monkeypatch):
    from flows.prune import prune

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_params(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the prepare stage"):
        prune("iterative", "params.yaml", str(tmp_path))


def test_unreachable_mlflow_server_fails_fast(harness, tmp_path, monkeypatch):
    from flows.pretrain import pretrain
    from helpers import free_port
    from plumbing.tracking import TrackingUnavailable

    write_params(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    t = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match="cannot be reached"):
        pretrain("params.yaml", str(tmp_path))
    assert time.perf_counter() - t < 30  # a clear error, not MLflow's minutes of retries


def test_refresh_cache_flag_recomputes_the_tasks(project, monkeypatch):
    """`python -m flows.X --refresh-cache` really recomputes (prefect reads its settings at
    import, so the flag must not rely on setting the environment variable late)."""
    import sys

    from flows.autotune import autotune
    from plumbing.cli import cli

    root, _ = project
    out = root / "models/autotune.json"

    def trials():
        return json.loads(out.read_text())["trials"]

    def run(*flags):
        monkeypatch.setattr(
            sys, "argv", ["flows.autotune", "--params", "params.yaml", "--root", str(root), "--quiet", *flags]
        )
        cli("autotune", "test", lambda a, o: autotune(a.params, a.root, o))
        return trials()

    before = trials()
    assert [t["seconds"] for t in run()] == [t["seconds"] for t in before]  # served from the cache
    fresh = run("--refresh-cache")
    assert all(a["seconds"] != b["seconds"] for a, b in zip(fresh, before, strict=True))  # measured again
    # work and accuracy do not depend on timing: the same trial wins again
    assert [(t["work_gmacs"], t["acc_final"], t["best"]) for t in fresh] == [
        (t["work_gmacs"], t["acc_final"], t["best"]) for t in before
    ]


def test_the_run_form_offers_the_methods_and_describes_the_parameters():
    from prefect.utilities.callables import parameter_schema

    from flows.prune import prune
    from ice.methods import METHODS

    props = parameter_schema(prune.fn).model_dump()["properties"]
    assert tuple(props["method"]["enum"]) == METHODS  # a drop-down in the Prefect UI's run form
    assert all(props[k].get("description") for k in ("method", "params_path", "root", "overrides"))
