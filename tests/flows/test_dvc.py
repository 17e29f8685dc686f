"""`dvc repro` of the real dvc.yaml in a temporary git repo, on a tiny config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, sub_env, write_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _ran(out: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", out)


@pytest.fixture(scope="module")
def repo(prefect_server, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for d in ("ice", "plumbing", "tasks", "flows", "scripts", "infra/plots", "weights"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    write_params(repo, prune={"methods": ["ice", "iterative"]})
    tiny = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in full.items():  # every key dvc.yaml lists must be in the file
        if isinstance(values, dict):
            tiny[section] = {**values, **tiny.get(section, {})}
    tiny["prune"]["target"] = {**tiny["prune"]["target"], "max_epochs": 0.5}  # the recovery runs, briefly
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    (repo / ".gitignore").write_text("/.ice-cache/\n/mlflow.db\n/mlartifacts/\n/data/cache/\n__pycache__/\n")
    env = sub_env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home), ICE_QUIET="1")
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "config", "user.email", "ci@example.com"], repo, env)
    _run(["git", "config", "user.name", "ci"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    _run(["dvc", "config", "core.analytics", "false"], repo, env)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots", dirs_exist_ok=True)
    _run(["dvc", "config", "plots.html_template", "../infra/plots/offline.html"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "init"], repo, env)
    first = _run(["dvc", "repro"], repo, env)
    return repo, env, first


def test_repro_runs_every_stage(repo):
    root, _, out = repo
    ran = _ran(out)
    assert sorted(ran) == sorted(
        [
            "prepare",
            "pretrain",
            "autotune",
            "method-config@ice",
            "prune@ice",
            "method-config@iterative",
            "prune@iterative",
            "evaluate",
        ]
    )
    before = [
        ("prepare", "pretrain"),
        ("pretrain", "autotune"),
        ("autotune", "method-config@ice"),
        ("method-config@ice", "prune@ice"),
        ("method-config@iterative", "prune@iterative"),
        ("prune@ice", "evaluate"),
        ("prune@iterative", "evaluate"),
    ]
    assert all(ran.index(a) < ran.index(b) for a, b in before), ran  # DVC's order among independent stages is free
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"ice", "iterative"}
    assert (root / "dvc.lock").exists()
    # one process per stage, one MLflow run per pipeline run: every stage's run nests under it
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("ice-test").experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags["ice.stage"] == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    stages = [r for r in runs if r.data.tags["ice.stage"] in ("pretrain", "autotune", "prune", "evaluate")]
    assert len(stages) == 5 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in stages)
    assert parents[0].data.metrics["ice.test_acc_pct"] == pytest.approx(metrics["methods"]["ice"]["test_acc"], abs=1e-3)


def test_second_repro_does_nothing(repo):
    root, env, _ = repo
    out = _run(["dvc", "repro"], root, env)
    assert _ran(out) == [] and "Data and pipelines are up to date" in out


def test_evaluate_param_reruns_only_evaluate(repo):
    root, env, _ = repo
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["evaluate"]["latency_iters"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = _run(["dvc", "repro"], root, env)
    assert _ran(out) == ["evaluate"]


def test_metrics_show_and_offline_plots(repo):
    root, env, _ = repo

    out = _run(["dvc", "metrics", "show"], root, env)
    assert "methods.iterative.test_acc" in out
    _run(["dvc", "plots", "show", "-o", "plots_out"], root, env)
    page = (root / "plots_out" / "index.html").read_text()
    assert re.search(r"<script[^>]+src=", page) is None  # nothing is fetched
    assert "vega-embed@6.18.2" in page and '"method": "ice"' in page


def test_bad_param_fails_the_stage_and_next_repro_recovers(repo):
    root, env, _ = repo
    good = (root / "params.yaml").read_text()
    p = yaml.safe_load(good)
    p["evaluate"]["latency_iters"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "evaluate.latency_iters = 0 is not allowed" in r.stdout + r.stderr
    assert not (root / "reports" / "metrics.json").exists()  # no stale or half-written out
    (root / "params.yaml").write_text(good)
    out = _run(["dvc", "repro"], root, env)
    assert _ran(out) == ["evaluate"] and (root / "reports" / "metrics.json").exists()


def test_exp_run_with_a_param_change(repo):
    root, env, _ = repo
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "lock"], root, env)
    out = _run(["dvc", "exp", "run", "-S", "prune.ratio=0.7"], root, env)
    assert set(_ran(out)) == {
        "autotune",
        "method-config@ice",
        "method-config@iterative",
        "prune@ice",
        "prune@iterative",
        "evaluate",
    }
    table = _run(["dvc", "exp", "show", "--csv", "--only-changed"], root, env)
    assert "0.7" in table


def test_an_ice_setting_reruns_ice_but_not_the_baseline(repo):
    """prune@<method> reruns only when what that method reads changes (models/config/<method>.json)."""
    root, env, _ = repo
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "before"], root, env)
    out = _run(["dvc", "exp", "run", "-S", "ice.freeze_bn_stats=true"], root, env)
    ran = set(_ran(out))
    assert {"prune@ice", "evaluate"} <= ran and "prune@iterative" not in ran and "pretrain" not in ran, ran
    # with the search on, ice.thre is the search's to choose: the search reruns (its trials come
    # from the cache) and, choosing the same point, nothing downstream does
    out = _run(["dvc", "exp", "run", "-S", "ice.thre=2.0"], root, env)
    ran = set(_ran(out))
    assert "prune@iterative" not in ran and "prune@ice" not in ran, ran


def test_a_fresh_clone_pulls_from_the_s3_remote_and_has_nothing_to_rerun(repo, s3_server, tmp_path):
    """`make remote` (bash infra/stack.sh remote) on the stack's S3, `dvc push`; then a fresh
    clone configures the same remote, `dvc pull`s, and finds `dvc status` clean and `dvc repro` a no-op."""
    root, env, _ = repo
    env = {**env, **s3_server.env}
    stack_env = "".join(f"export {k}={v}\n" for k, v in s3_server.env.items())

    def remote(where: Path) -> None:
        (where / "infra").mkdir(exist_ok=True)
        shutil.copy(ROOT / "infra" / "stack.sh", where / "infra" / "stack.sh")
        (where / ".stack").mkdir(exist_ok=True)
        (where / ".stack" / "env").write_text(stack_env)
        _run(
            ["bash", "infra/stack.sh", "remote"],
            where,
            {**env, "ICE_BUCKET": s3_server.bucket, "PYTHON": sys.executable},
        )

    _run(["dvc", "repro"], root, env)  # the workspace as the earlier tests left it, reproduced
    remote(root)
    config_local = (root / ".dvc" / "config.local").read_text()
    assert s3_server.endpoint in config_local and "s3://ice/dvc" in config_local
    assert s3_server.endpoint not in (root / ".dvc" / "config").read_text()  # nothing of it is committed
    _run(["dvc", "push"], root, env)
    assert any(k.startswith("dvc/") for k in s3_server.keys("dvc/"))
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "/.stack/\n")
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "pushed", "--allow-empty"], root, env)
    tracked = _run(["git", "ls-files"], root, env)
    assert "config.local" not in tracked and ".stack/" not in tracked

    fresh = tmp_path / "fresh"
    _run(["git", "clone", "-q", str(root), str(fresh)], tmp_path, env)
    assert not (fresh / "models" / "pretrained.pt").exists()
    remote(fresh)
    _run(["dvc", "pull"], fresh, env)
    assert (fresh / "models" / "pretrained.pt").exists() and (fresh / "data" / "prepared").exists()
    status = _run(["dvc", "status"], fresh, env)
    assert "Data and pipelines are up to date" in status, status
    out = _run(["dvc", "repro"], fresh, env)
    assert _ran(out) == [], out
