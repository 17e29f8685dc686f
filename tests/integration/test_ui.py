"""What a user sees: `make up`'s servers, a small pipeline reporting to them, and a headless
Chromium (driven by Playwright) on the pages the project links to.

Four things hold: the link the pipeline prints opens MLflow's runs table with each
method's test accuracy and work as columns (no click); the Prefect `comparison` artifact
holds every ranking table of compare.md; compare.md's images resolve, on disk and in the
MLflow UI; and every request the pages make goes to 127.0.0.1. Screenshots are written
to ``$ICE_SCREENSHOTS`` (default: the test's temporary directory).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from helpers import ROOT, free_port, postgres_or_skip, reachable_dir, sub_env, write_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]

METHODS = ["ice", "iterative"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine (apt-get install chromium): the UI test needs a browser")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`make up` (infra/stack.sh up) on free ports, its state in a temporary directory."""
    _chromium()
    pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (make setup)")
    postgres_or_skip()  # what `make up` gives users: the team stack, on PostgreSQL
    with reachable_dir("ui-stack") as where:
        yield from _stack_in(where / "stack")


def _stack_in(home):
    env = sub_env(
        ICE_STACK_DIR=str(home),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        S3_PORT=str(free_port()),
        PG_PORT=str(free_port()),
        PYTHON=sys.executable,
    )
    up = subprocess.run(
        ["bash", "infra/stack.sh", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        flow_env = dict(env)
        for line in (home / "env").read_text().splitlines():  # what `source .stack/env` exports
            for k, v in re.findall(r"(\w+)=(\S+)", line.removeprefix("export ")):
                flow_env[k] = v
        yield {"env": flow_env, "prefect": f"http://127.0.0.1:{env['PREFECT_PORT']}", "home": home}
    finally:
        subprocess.run(["bash", "infra/stack.sh", "down"], cwd=ROOT, env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def pipeline_run(stack, tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write_params(root, prune={"methods": METHODS, "max_units": 2}, ice={"autotune": {"enabled": False}})
    done = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--root", str(root)],
        cwd=root,
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return root, done.stdout + done.stderr


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("ICE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _visit(browser, url: str, shot: Path, wait_for: str | None = None) -> tuple[str, list[str], list]:
    """The page's text, every URL it requested, and the page (still open)."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    if wait_for:
        page.get_by_text(wait_for).first.wait_for(timeout=30_000)
    page.wait_for_timeout(2_000)  # what loads after the first paint (fonts, telemetry, analytics)
    page.screenshot(path=str(shot), full_page=True)
    return page.inner_text("body"), requests, page


def _off_machine(requests: list[str]) -> list[str]:
    return [
        u
        for u in requests
        if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).hostname != "127.0.0.1"
    ]


def test_the_printed_link_shows_each_methods_result_as_columns(pipeline_run, stack, browser, tmp_path):
    from mlflow import MlflowClient

    root, out = pipeline_run
    links = re.findall(r"one column per method and figure: (\S+)", out)
    assert links, out[-3000:]
    text, requests, page = _visit(browser, links[-1], _shots(tmp_path) / "mlflow-comparison.png", "ice.test_acc_pct")
    client = MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("ice-test")
    parent = client.search_runs([exp.experiment_id], "tags.`ice.stage` = 'pipeline'")[0]
    for m in METHODS:  # the column and the parent's value in it, on the page the link opens
        for name in ("test_acc_pct", "work_gmacs"):
            assert f"{m}.{name}" in text
            value = parent.data.metrics[f"{m}.{name}"]
            assert f"{value:g}" in text or str(value) in text, (m, name, value)
    assert "Model training" in text and "Evaluation runs" not in text  # not MLflow 3's GenAI view
    assert not _off_machine(requests), _off_machine(requests)
    page.close()

    # one click on: the pipeline run, compare.md as its description, its images served by MLflow
    url = (
        links[-1].split("#")[0]
        + f"#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    )
    text, requests, page = _visit(browser, url, _shots(tmp_path) / "mlflow-pipeline-run.png", "Method comparison")
    assert "won**" not in text and " won " in text  # the verdict, rendered
    images = page.evaluate(
        "Array.from(document.images).filter(i => i.src.includes('get-artifact')).map(i => [i.src, i.naturalWidth])"
    )
    assert len(images) == 3 and all(w > 0 for _, w in images), images
    assert not _off_machine(requests), _off_machine(requests)
    page.close()

    # on disk, compare.md's images sit where its links point
    md = (root / "reports" / "compare.md").read_text()
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (root / "reports" / rel).is_file(), rel


def test_prefect_holds_the_whole_comparison_and_calls_nothing_outside(pipeline_run, stack, browser, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, _ = pipeline_run
    md = (root / "reports" / "compare.md").read_text()
    with (
        temporary_settings(updates={PREFECT_API_URL: stack["env"]["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["comparison"])))
    assert len(arts) == 1
    body = arts[0].data
    tables = [ln for ln in md.splitlines() if ln.startswith(("## ", "| "))]
    missing = [ln for ln in tables if ln not in body]
    assert tables and not missing, (missing, body)  # every heading and every table row
    assert "viewStateShareKey=" in body and body.count("workflowType=machine_learning") >= len(METHODS) + 1

    shots = _shots(tmp_path)
    seen: list[str] = []
    for name, path in (("prefect-home", "/"), ("prefect-runs", "/v2/runs"), ("prefect-artifacts", "/v2/artifacts")):
        _, requests, page = _visit(browser, stack["prefect"] + path, shots / f"{name}.png")
        seen += requests
        page.close()
    # the UI's own analytics (Amplitude, on by default in its JavaScript) stay off
    assert seen and not _off_machine(seen), _off_machine(seen)
