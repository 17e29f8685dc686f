"""The fault corpus (tests/fault_corpus.py) as tests: every case is a one-line refusal or a correct recovery."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_corpus import CASES, build_base, flow, run_case, verdict

from helpers import PostgresServer, postgres_missing, reachable_dir, sub_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def env(prefect_server):
    return sub_env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home))


@pytest.fixture(scope="module")
def base(tmp_path_factory, env):
    return build_base(tmp_path_factory.mktemp("faults"), env)


@pytest.fixture(scope="module")
def pg():
    """One PostgreSQL for the module: the servers that the cases kill keep their data there, as the
    team stack's do (a fresh database each). Where it cannot run, those cases use SQLite."""
    if postgres_missing():
        yield None
        return
    with reachable_dir("faults-pg") as where:
        server = PostgresServer(where)
        yield server
        server.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case, base, env, tmp_path, pg):
    outcome = run_case(case, base, tmp_path, env, pg if case.during is not None else None)
    problem = verdict(case, outcome)
    assert problem is None, problem


# ----------------------------------------------------------------------------- faults that need their own set-up
def _copy(base: Path, where: Path) -> Path:
    root = where / "project"
    shutil.copytree(base, root, symlinks=True)
    return root


def _outputs(root: Path) -> dict[str, str]:
    from ice.files import sha256_file

    rels = ("models/pruned/iterative.pt", "reports/steps/iterative.csv", "reports/prune/iterative.json")
    return {rel: sha256_file(root / rel) for rel in rels}


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=True)


def _stray(root: Path) -> list[Path]:
    return [p for d in ("models/pruned", "reports/steps", "reports/prune") for p in (root / d).glob(".*")]


def test_read_only_reports_publish_nothing_and_a_rerun_completes(base, env, tmp_path):
    """The prune stage's model, steps and report change together: with reports/steps read-only
    the new model is not published beside the old report."""
    root = _copy(base, tmp_path)
    steps = root / "reports" / "steps"
    before = _outputs(root)
    if not (_mount("--bind", str(steps), str(steps)) and _mount("-o", "remount,ro,bind", str(steps))):
        _umount(steps) if steps.is_mount() else None
        pytest.skip("read-only bind mounts need root (mount --bind)")
    try:
        out = flow("prune", root, ["--method", "iterative", "--set", "prune.ratio=0.4"], env)
        assert out.code == 1 and len(out.lines) == 1 and out.lines[0].startswith("error:"), out.stderr[-800:]
        assert "reports/steps" in out.lines[0] and "Read-only" in out.lines[0], out.lines
        assert _outputs(root) == before  # nothing half-published
    finally:
        _umount(steps)
    assert not _stray(root)
    again = flow("prune", root, ["--method", "iterative", "--set", "prune.ratio=0.4"], env)
    assert again.code == 0, again.stderr[-1500:]
    after = _outputs(root)
    assert all(after[k] != before[k] for k in before)  # the new model, steps and report, together
    report = json.loads((root / "reports/prune/iterative.json").read_text())
    assert report["sha256"] == after["models/pruned/iterative.pt"]


def test_a_full_disk_names_the_file_the_bytes_and_the_stage(base, env, tmp_path):
    root = _copy(base, tmp_path)
    pruned = root / "models" / "pruned"
    old = (pruned / "iterative.pt").read_bytes()
    before = _outputs(root)
    # room for the old model and a little more: the new one cannot be staged beside it
    if not _mount("-t", "tmpfs", "-o", f"size={len(old) + 65536}", "tmpfs", str(pruned)):
        pytest.skip("a small tmpfs needs root (mount -t tmpfs)")
    try:
        (pruned / "iterative.pt").write_bytes(old)
        out = flow("prune", root, ["--method", "iterative", "--set", "prune.ratio=0.4"], env)
        assert out.code == 1 and len(out.lines) == 1, out.stderr[-800:]
        assert re.search(
            r"^error: .*models/pruned/iterative\.pt: no space left on the device \([\d,]+ bytes needed\); "
            r"free space there, then rerun the prune stage$",
            out.lines[0],
        ), out.lines[0]
        assert (pruned / "iterative.pt").read_bytes() == old and not _stray(root)
    finally:
        _umount(pruned)
    assert _outputs(root) == before
    again = flow("prune", root, ["--method", "iterative", "--set", "prune.ratio=0.4"], env)
    assert again.code == 0, again.stderr[-1500:]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_sigkilled_flow_takes_its_temporary_prefect_server_with_it(base, tmp_path):
    root = _copy(base, tmp_path)
    env = sub_env()  # no PREFECT_API_URL: the flow starts a temporary server of its own
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.prune", "--method", "iterative", "--refresh-cache", "--root", str(root)],
        env=env,
        cwd=root,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "[iterative] step 1/" in line:
            break
    servers = [c for c in _children(proc.pid) if "uvicorn" in Path(f"/proc/{c}/cmdline").read_text()]
    assert servers, "the flow started no temporary server"
    proc.kill()  # the flow alone, as the OOM killer would: not its process group
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(s) for s in servers):
        time.sleep(0.2)
    left = [s for s in servers if _alive(s)]
    for s in left:
        os.kill(s, signal.SIGKILL)
    assert not left, f"temporary Prefect server {left} outlived its flow"


def test_a_model_left_pending_by_a_killed_run_is_failed_by_the_next_run(base, env, tmp_path):
    from fault_corpus import _leave_a_running_run
    from mlflow import MlflowClient

    root = _copy(base, tmp_path)
    _leave_a_running_run(root, env)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ice-test")
    run = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")[0]
    # what a SIGKILL during registration leaves: a logged model that never became READY
    pending = client.create_logged_model(exp.experiment_id, source_run_id=run.info.run_id, name="model")
    assert str(pending.status.name) == "PENDING"
    out = flow("prune", root, ["--method", "iterative"], env)
    assert out.code == 0, out.stderr[-1500:]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert str(client.get_logged_model(pending.model_id).status.name) == "FAILED"


@contextlib.contextmanager
def _tracking(root: Path) -> Iterator[None]:
    import mlflow

    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)


def test_a_hostile_checkpoint_in_the_registry_is_refused(base, env, tmp_path):
    """models:/ weights are data too: a registered version whose checkpoint names code is
    refused as unsafe, even with its registry sha256 tag matching the hostile bytes."""
    import torch
    from mlflow import MlflowClient

    from ice.files import sha256_file

    root = _copy(base, tmp_path)
    out = flow("pretrain", root, ["--set", "tracking.register_models=true", "--refresh-cache"], env)
    assert out.code == 0, out.stderr[-1500:]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    mv = client.get_model_version_by_alias("cifar_resnet20-digits", "pretrained")
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    with _tracking(root):
        uri = ModelsArtifactRepository.get_underlying_uri(f"models:/{mv.name}/{mv.version}")
    where = Path(uri.removeprefix("file://"))
    pre = sha256_file(root / "models" / "pretrained.pt")
    stored = [p for p in where.rglob("*.pt") if sha256_file(p) == pre]
    assert stored, f"the registered checkpoint was not found under {where}"
    marker = root.parent / "PWNED"
    spec = {
        "arch": "logging:basicConfig",
        "num_classes": 10,
        "in_channels": 1,
        "kwargs": {"filename": str(marker), "format": "pwned"},
    }
    payload = {"format": "ice-checkpoint/1", "spec": spec, "widths": {}, "state_dict": {}, "meta": {}, "versions": {}}
    for p in stored:
        torch.save(payload, p)
    client.set_model_version_tag(mv.name, mv.version, "sha256", sha256_file(stored[0]))  # an attacker's tag
    out = flow("pretrain", root, ["--set", "model.weights=models:/cifar_resnet20-digits@pretrained"], env)
    assert out.code == 1 and len(out.lines) == 1, out.stderr[-1500:]
    assert re.search(r"unsafe checkpoint: arch 'logging:basicConfig' is neither", out.lines[0]), out.lines[0]
    assert not marker.exists()
