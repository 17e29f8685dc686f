"""The fault corpus: damaged inputs and caches, unreachable and dying servers, bad CLI and data.

    .venv/bin/python tests/fault_corpus.py          # prints: case, exit code, lines, seconds, verdict

Each case runs in a fresh copy of a small digits project (prepared, pretrained, pruned
with ``iterative``) and checks what a careful user expects: a damaged input or a bad
setting is refused with one ``error:`` line and a non-zero exit, quickly, creating
nothing; a damaged cache entry is recomputed and the published output is right.
``tests/flows/test_faults.py`` runs the same cases as tests.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import MlflowServer, PostgresServer, PrefectServer, S3Server, sub_env, write_params

BASE = {
    "prune": {"methods": ["iterative"], "max_units": 3},
    "ice": {"autotune": {"enabled": False}},
    "tracking": {"register_models": False},
}


@dataclass
class Outcome:
    code: int
    stderr: str
    seconds: float
    root: Path
    rerun: Outcome | None = None  # a server case's second run, once the killed server is back
    base_sha: str = ""  # the pruned model of the clean base project

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


@dataclass
class Case:
    name: str
    stage: str
    args: list[str] = field(default_factory=list)
    prepare: Callable[[Path], dict[str, str] | None] | None = None  # edits the project; may return extra env
    expect_code: int = 1
    expect: str = ""  # a regex the error line must match
    check: Callable[[Outcome], None] | None = None  # further checks on the project afterwards
    during: Callable[[subprocess.Popen, Path, Any], None] | None = None  # acts while the flow runs, on `server`
    server: str = "mlflow"  # the server a `during` case gets of its own: mlflow, prefect or s3 (the task store)


def flow(stage: str, root: Path, args: list[str], env: dict[str, str]) -> Outcome:
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", f"flows.{stage}", "--root", str(root), "--quiet", *args],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Outcome(r.returncode, r.stderr, time.perf_counter() - t, root)


def build_base(where: Path, env: dict[str, str]) -> Path:
    """A digits project after prepare, pretrain, autotune and prune --method iterative."""
    root = where / "base"
    root.mkdir(parents=True)
    write_params(root, **BASE)
    for stage, args in (("prepare", []), ("pretrain", []), ("autotune", []), ("prune", ["--method", "iterative"])):
        out = flow(stage, root, args, env)
        if out.code != 0:
            raise RuntimeError(f"{stage} failed building the base project:\n{out.stderr[-3000:]}")
    return root


# ----------------------------------------------------------------------------- damage
def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _final_cached(root: Path) -> Path:
    sha = json.loads((root / "reports" / "prune" / "iterative.json").read_text())["sha256"]
    return next(p for p in (root / ".ice-cache" / "store").iterdir() if sha[:16] in p.name)


def truncate_final_cached(root: Path) -> None:
    p = _final_cached(root)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _sha(path: Path) -> str:
    from ice.files import sha256_file

    return sha256_file(path)


def unchanged(rel: str) -> Callable[[Outcome], None]:
    """The output is the one the base project had (nothing was published over it)."""

    def check(o: Outcome) -> None:
        report = json.loads((o.root / "reports" / "prune" / "iterative.json").read_text())
        assert _sha(o.root / rel) == report["sha256"], f"{rel} changed"

    return check


def recomputed_and_loads(o: Outcome) -> None:
    from ice.checkpoint import load_checkpoint

    report = json.loads((o.root / "reports" / "prune" / "iterative.json").read_text())
    assert _sha(o.root / "models" / "pruned" / "iterative.pt") == report["sha256"]
    load_checkpoint(o.root / "models" / "pruned" / "iterative.pt", sha256=report["sha256"])
    assert "fails its sha256 check; recomputing" in o.stderr, (
        f"no warning about the damaged cache entry in: {o.stderr[-600:]!r}"
    )


def folder_data(kind: str) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        target = root / "bad-data"
        if kind == "empty-dir":
            target.mkdir()
        elif kind == "random-bytes":
            target = root / "bad-data.tar"
            target.write_bytes(random.Random(0).randbytes(4096))
        elif kind == "non-image-tar":
            target = root / "bad-data.tar"
            with tarfile.open(target, "w") as tar:
                info = tarfile.TarInfo("notes/readme.txt")
                info.size = 5
                tar.addfile(info, io.BytesIO(b"hello"))
        elif kind == "truncated-jpeg":
            from PIL import Image

            target = root / "bad-data.tar"
            with tarfile.open(target, "w") as tar:
                for split in ("train", "test"):
                    for cls in ("a", "b"):
                        buf = io.BytesIO()
                        Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "JPEG")
                        data = buf.getvalue()
                        if split == "train" and cls == "b":
                            data = data[: len(data) // 3]
                        info = tarfile.TarInfo(f"{split}/{cls}/0001.jpg")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        write_params(root, **BASE, data={"source": "folder", "root": str(target), "cache_dir": "data/cache-bad"})
        shutil.rmtree(root / "data" / "prepared")  # nothing valid to fall back on

    return prepare


def no_new_files(o: Outcome) -> None:
    assert not (o.root / "data" / "prepared").exists()


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:  # a temporary file, renamed meanwhile
        return 0.0


def kill_server_after_first_step(proc: subprocess.Popen, root: Path, server: Any) -> None:
    store = root / ".ice-cache" / "store"
    start = time.time()
    deadline = start + 300
    while time.time() < deadline and proc.poll() is None:
        # the first fine-tune written by this run (a recomputed step rewrites the same name)
        if any(not p.name.startswith(".") and "finetuned" in p.name and _mtime(p) > start for p in store.iterdir()):
            server.stop()
            return
        time.sleep(0.2)


# how long a restarted server stays down: 10 s in the suite, well within the bound
# (plumbing.outage.OUTAGE_SECONDS) that a run rides through; ICE_FAULT_OUTAGE_S=45 measures longer ones
OUTAGE_S = float(os.environ.get("ICE_FAULT_OUTAGE_S", "10"))


def restart_server_after_first_step(proc: subprocess.Popen, root: Path, server: Any) -> None:
    """Kill the server (MLflow or Prefect) mid-flow and bring it back :data:`OUTAGE_S` later."""
    kill_server_after_first_step(proc, root, server)
    if proc.poll() is None:
        _down(server)


def restart_s3_mid_flow(proc: subprocess.Popen, root: Path, server: Any) -> None:
    """Kill the S3 server as soon as the run has stored its first step's checkpoint (digits steps
    are short: a later trigger finds the run already done), and bring it back 10 s later; the run
    must still have been running at the kill, so its next store calls met the outage."""
    store = root / ".ice-cache" / "store"
    start = time.time()
    while time.time() < start + 300 and proc.poll() is None:
        if store.is_dir() and any(not p.name.startswith(".") and _mtime(p) > start for p in store.iterdir()):
            server.stop()
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before S3 went away: the case tested nothing"
    _down(server)


def _down(server: Any) -> None:
    """Keep ``server`` down for :data:`OUTAGE_S`, then start it; the outage (to the server answering
    again) goes to stderr, for the measurement of the longest outage a run rides through."""
    t = time.perf_counter()
    time.sleep(OUTAGE_S)
    server.start()
    print(f"[fault] {type(server).__name__} down for {time.perf_counter() - t:.1f} s", file=sys.stderr)


def rerun_completes(o: Outcome) -> None:
    """After a server died for good: with it back, the same command completes and publishes the
    same model as the base project's clean run (the same params give the same bytes)."""
    assert o.rerun is not None and o.rerun.code == 0, o.rerun and o.rerun.stderr[-1500:]
    report = json.loads((o.root / "reports" / "prune" / "iterative.json").read_text())
    assert report["sha256"] == _sha(o.root / "models" / "pruned" / "iterative.pt")
    assert report["sha256"] == o.base_sha, "the rerun's model differs from the clean run's"


def rode_through(o: Outcome) -> None:
    """The run went on through the outage and published the clean run's model."""
    assert not [ln for ln in o.lines if ln.startswith("error:")], o.stderr[-1000:]
    report = json.loads((o.root / "reports" / "prune" / "iterative.json").read_text())
    assert report["sha256"] == _sha(o.root / "models" / "pruned" / "iterative.pt")
    assert report["sha256"] == o.base_sha, "the model after the outage differs from the clean run's"


def stale_run_marked(o: Outcome) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{o.root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("ice-test")
    runs = c.search_runs([exp.experiment_id], "tags.`ice.stage` = 'prune'")
    statuses = sorted(r.info.status for r in runs)
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses


# ----------------------------------------------------------------------------- hostile input
def _marker(root: Path) -> Path:
    """A file outside the project that hostile code would create: it must never exist."""
    return root.parent / f"{root.name}-PWNED"


def hostile_weights(root: Path) -> None:
    """A plain-data checkpoint whose spec names ``logging:basicConfig`` with a file of our choosing."""
    import torch

    spec = {
        "arch": "logging:basicConfig",
        "num_classes": 10,
        "in_channels": 1,
        "kwargs": {"filename": str(_marker(root)), "format": "pwned %(message)s"},
    }
    payload = {"format": "ice-checkpoint/1", "spec": spec, "widths": {}, "state_dict": {}, "meta": {}, "versions": {}}
    torch.save(payload, root / "hostile.pt")
    write_params(root, **BASE, model={"arch": "cifar_resnet20", "weights": "hostile.pt"})


def function_arch(root: Path) -> None:
    """A user module whose arch is a function: importing it is the user's choice, calling it is not ours."""
    (root / "evil_arch.py").write_text(
        f"from pathlib import Path\n\ndef make(num_classes=10, **kw):\n    Path({str(_marker(root))!r}).write_text('called')\n"
    )
    write_params(root, **BASE, model={"arch": "evil_arch:make"})


def nothing_ran(o: Outcome) -> None:
    assert not _marker(o.root).exists(), f"{_marker(o.root)} exists: hostile code ran"


def alias_bomb(root: Path) -> None:
    lines = ["seed: 0", "a0: &a0 [1,1,1,1,1,1,1,1,1,1]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (root / "params.yaml").write_text("\n".join(lines) + "\nprune:\n  ratio: *a9\n")


def huge_params(root: Path) -> None:
    with open(root / "params.yaml", "a") as f:
        f.write("# " + "x" * 50_000_000 + "\n")


def symlinked_cache(root: Path) -> None:
    """.ice-cache on 'another disk': a directory outside the project, linked in."""
    elsewhere = root.parent / f"{root.name}-bigdisk"
    shutil.move(str(root / ".ice-cache"), str(elsewhere))
    (root / ".ice-cache").symlink_to(elsewhere)


def published_and_loads(o: Outcome) -> None:
    from ice.checkpoint import load_checkpoint

    report = json.loads((o.root / "reports" / "prune" / "iterative.json").read_text())
    assert _sha(o.root / "models" / "pruned" / "iterative.pt") == report["sha256"]
    load_checkpoint(o.root / "models" / "pruned" / "iterative.pt", sha256=report["sha256"])
    assert (o.root / ".ice-cache").is_symlink()
    assert not list(o.root.glob(".ice-cache/**/*.pending")), "a stray temporary file was left"


def _arch_case(arch: str, why: str) -> Case:
    return Case(
        f"hostile model.arch {arch}",
        "pretrain",
        ["--set", f"model.arch={arch}"],
        expect_code=2,
        expect=rf"model\.arch = '{re.escape(arch)}' is not allowed \(.*{why}",
    )


CASES: list[Case] = [
    Case(
        "corrupt pretrained checkpoint",
        "prune",
        ["--method", "iterative"],
        lambda r: flip_middle_byte(r / "models" / "pretrained.pt"),
        expect=r"models/pretrained\.pt: sha256 is [0-9a-f]{64}, the pretrain stage recorded [0-9a-f]{64} .*rerun the pretrain stage",
        check=unchanged("models/pruned/iterative.pt"),
    ),
    Case(
        "corrupt prepared data",
        "prune",
        ["--method", "iterative"],
        lambda r: flip_middle_byte(r / "data" / "prepared" / "dataset.pt"),
        expect=r"data/prepared/dataset\.pt: sha256 is .*rerun the prepare stage",
        check=unchanged("models/pruned/iterative.pt"),
    ),
    Case(
        "corrupt prepared data (evaluate)",
        "evaluate",
        [],
        lambda r: flip_middle_byte(r / "data" / "prepared" / "dataset.pt"),
        expect=r"data/prepared/dataset\.pt: sha256 is .*rerun the prepare stage",
    ),
    Case(
        "corrupt pruned model (evaluate)",
        "evaluate",
        [],
        lambda r: flip_middle_byte(r / "models" / "pruned" / "iterative.pt"),
        expect=r"models/pruned/iterative\.pt: sha256 is .*rerun the prune --method iterative stage",
    ),
    Case(
        "truncated cached checkpoint",
        "prune",
        ["--method", "iterative"],
        truncate_final_cached,
        expect_code=0,
        check=recomputed_and_loads,
    ),
    Case(
        "truncated cached checkpoint, registering",
        "prune",
        ["--method", "iterative", "--set", "tracking.register_models=true"],
        truncate_final_cached,
        expect_code=0,
        check=recomputed_and_loads,
    ),
    Case(
        "unknown method",
        "prune",
        ["--method", "nosuch"],
        expect_code=2,
        expect=r"argument --method: invalid choice: 'nosuch'",
    ),
    Case(
        "empty params file",
        "prune",
        ["--method", "iterative"],
        lambda r: (r / "params.yaml").write_text(""),
        expect_code=2,
        expect=r"params\.yaml: is empty",
    ),
    Case(
        "batch size above the split",
        "pretrain",
        ["--set", "train.batch_size=100000"],
        expect_code=2,
        expect=r"train\.batch_size = 100000 is not allowed: the prepared training split has \d+ images",
    ),
    Case(
        "more trials than grid points",
        "autotune",
        ["--set", "ice.autotune.n_trials=1000"],
        expect_code=2,
        expect=r"n_trials: 1000 is not allowed; the grid has 216 distinct points",
    ),
    Case(
        "folder data: empty directory",
        "prepare",
        [],
        folder_data("empty-dir"),
        expect=r"expected an ImageFolder layout",
        check=no_new_files,
    ),
    Case(
        "folder data: random bytes",
        "prepare",
        [],
        folder_data("random-bytes"),
        expect=r"bad-data\.tar.*not a readable tar archive",
        check=no_new_files,
    ),
    Case(
        "folder data: tar without images",
        "prepare",
        [],
        folder_data("non-image-tar"),
        expect=r"bad-data\.tar: expected an ImageFolder layout",
        check=no_new_files,
    ),
    Case(
        "folder data: truncated JPEG",
        "prepare",
        [],
        folder_data("truncated-jpeg"),
        expect=r"bad-data\.tar: train/b/0001\.jpg is not a readable image",
        check=no_new_files,
    ),
    Case(
        "Prefect API unreachable",
        "prune",
        ["--method", "iterative"],
        lambda r: {"PREFECT_API_URL": "http://127.0.0.1:9/api"},
        expect=r"Prefect API at http://127\.0\.0\.1:9/api cannot be reached",
    ),
    Case(
        "MLflow server unreachable",
        "prune",
        ["--method", "iterative"],
        lambda r: {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        expect=r"MLflow server at http://127\.0\.0\.1:9 cannot be reached",
    ),
    Case(
        "MLflow server dies mid-flow for good",
        "prune",
        ["--method", "iterative", "--refresh-cache"],
        None,
        expect=r"MLflow server at http://127\.0\.0\.1:\d+ did not answer for 62 s; restart it \(ice up, or make up\)",
        check=rerun_completes,
        during=kill_server_after_first_step,
    ),
    Case(
        f"MLflow server restarted mid-flow within {OUTAGE_S:g} s",
        "prune",
        ["--method", "iterative", "--refresh-cache"],
        None,
        expect_code=0,
        check=rode_through,
        during=restart_server_after_first_step,
    ),
    Case(
        "Prefect server dies mid-flow for good",
        "prune",
        ["--method", "iterative", "--refresh-cache"],
        lambda r: {"PREFECT_CLIENT_MAX_RETRIES": "2"},  # the bound is 62 s with Prefect's 5; 6 s with 2
        expect=r"Prefect server at http://127\.0\.0\.1:\d+/api did not answer for 6 s; restart it \(ice up, or make up\)",
        check=rerun_completes,
        during=kill_server_after_first_step,
        server="prefect",
    ),
    Case(
        f"Prefect server restarted mid-flow within {OUTAGE_S:g} s",
        "prune",
        ["--method", "iterative", "--refresh-cache"],
        None,
        expect_code=0,
        check=rode_through,
        during=restart_server_after_first_step,
        server="prefect",
    ),
    Case(
        f"S3 restarted mid-flow within {OUTAGE_S:g} s",
        "prune",
        ["--method", "iterative", "--refresh-cache"],
        None,
        expect_code=0,
        check=rode_through,
        during=restart_s3_mid_flow,
        server="s3",
    ),
    Case(
        "root does not exist",
        "prune",
        ["--method", "iterative", "--root", "/nonexistent/ice-root", "--params", "PARAMS_ABS"],
        expect_code=2,
        expect=r"project root /nonexistent/ice-root is not a directory",
    ),
    Case(
        "hostile checkpoint as model.weights",
        "pretrain",
        [],
        hostile_weights,
        expect=r"model\.weights: .*hostile\.pt: unsafe checkpoint: arch 'logging:basicConfig' is neither",
        check=nothing_ran,
    ),
    Case(
        "model.arch naming a function",
        "pretrain",
        [],
        function_arch,
        expect_code=2,
        expect=r"evil_arch:make.*make \(a function\) is not a torch\.nn\.Module subclass",
        check=nothing_ran,
    ),
    _arch_case("logging:basicConfig", "standard-library"),
    _arch_case("this:s", "standard-library"),
    _arch_case("os:getcwd", "standard-library"),
    _arch_case("subprocess:Popen", "standard-library"),
    _arch_case("builtins:eval", "standard-library"),
    Case(
        "YAML alias bomb under prune.ratio",
        "prune",
        ["--method", "iterative"],
        alias_bomb,
        expect_code=2,
        expect=r"params\.yaml: YAML alias \*a0 at line 3 is not allowed",
    ),
    Case(
        "50 MB params file",
        "prune",
        ["--method", "iterative"],
        huge_params,
        expect_code=2,
        expect=r"params\.yaml: is larger than 1,048,576 bytes",
    ),
    Case(
        ".ice-cache symlinked to another disk",
        "prune",
        ["--method", "iterative", "--refresh-cache"],
        symlinked_cache,
        expect_code=0,
        check=published_and_loads,
    ),
    Case(
        "stale RUNNING run from a SIGKILLed flow",
        "prune",
        ["--method", "iterative", "--refresh-cache"],
        None,
        expect_code=0,
        check=stale_run_marked,
    ),
]


def run_case(case: Case, base: Path, where: Path, env: dict[str, str], pg: PostgresServer | None = None) -> Outcome:
    """Run ``case`` in a copy of ``base``; ``env`` is the subprocesses' environment (e.g. a Prefect server's URL).
    A case that kills a server gets one of its own, on a fresh database of ``pg`` where given (the team
    stack's PostgreSQL), else on SQLite."""
    root = where / case.name.replace(" ", "-").replace(":", "").replace(",", "").replace("(", "").replace(")", "")
    shutil.copytree(base, root, symlinks=True)
    env = dict(env)
    if case.prepare is not None:
        env.update(case.prepare(root) or {})
    args = [a.replace("PARAMS_ABS", str(root / "params.yaml")) for a in case.args]
    if case.name.startswith("stale RUNNING"):
        _leave_a_running_run(root, env)
    if case.during is not None:
        server: MlflowServer | PrefectServer | S3Server
        if case.server == "prefect":
            (where / "prefect-home").mkdir(exist_ok=True)
            server = PrefectServer(where / "prefect-home", database=pg.database("prefect") if pg else None)
            env.update(PREFECT_API_URL=server.url, PREFECT_HOME=str(server.home))
        elif case.server == "s3":
            server = S3Server(where / "s3")
            env.update(server.env, ICE_STORE_URL="s3://ice/faults")
        else:
            server = MlflowServer(where, backend=pg.database("mlflow") if pg else None)
            env["MLFLOW_TRACKING_URI"] = server.url
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", f"flows.{case.stage}", "--root", str(root), "--quiet", *args],
            env=env,
            cwd=root,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        case.during(proc, root, server)
        _, err = proc.communicate(timeout=600)
        out = Outcome(proc.returncode, err, time.perf_counter() - t, root)
        out.base_sha = json.loads((base / "reports" / "prune" / "iterative.json").read_text())["sha256"]
        if out.code != 0:  # the server is restarted, as the one line says, and the run again
            if server.proc.poll() is not None:
                server.start()
            out.rerun = flow(case.stage, root, [a for a in args if a != "--refresh-cache"], env)
        server.stop()
        return out
    return flow(case.stage, root, args, env)


def _leave_a_running_run(root: Path, env: dict[str, str]) -> None:
    """Start a prune and SIGKILL it once its MLflow run exists: the run stays RUNNING."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.prune", "--root", str(root), "--method", "iterative", "--refresh-cache"],
        env=env,
        cwd=root,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "[iterative] step 1/" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)


def verdict(case: Case, o: Outcome) -> str | None:
    """None if the case behaved; otherwise what went wrong."""
    import re

    if o.code != case.expect_code:
        return f"exit {o.code}, expected {case.expect_code}: {o.stderr[-500:]}"
    if case.expect_code != 0:
        errors = [ln for ln in o.lines if ln.startswith("error:")]
        if len(o.lines) != 1 or len(errors) != 1:
            return f"{len(o.lines)} lines, expected one error line: {o.stderr[-800:]}"
        if not re.search(case.expect, errors[0]):
            return f"error line does not match {case.expect!r}: {errors[0]}"
        if o.seconds > 10 and case.during is None:
            return f"took {o.seconds:.1f}s, expected at most 10 s"
    if case.check is not None:
        try:
            case.check(o)
        except AssertionError as err:
            return f"check failed: {err}"
    return None


def main() -> None:
    import tempfile

    from helpers import PrefectServer

    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        (where / "prefect").mkdir()
        server = PrefectServer(where / "prefect")
        try:
            env = sub_env(PREFECT_API_URL=server.url, PREFECT_HOME=str(server.home))
            base = build_base(where, env)
            print("| case | exit code | lines | seconds | result |")
            print("|---|---|---|---|---|")
            for case in CASES:
                o = run_case(case, base, where, env)
                bad = verdict(case, o)
                print(
                    f"| {case.name} | {o.code} | {len(o.lines)} | {o.seconds:.1f} | "
                    f"{'ok' if bad is None else 'FAILED: ' + bad[:200]} |",
                    flush=True,
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
