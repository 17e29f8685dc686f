"""benchmarks/common.py, what every benchmark builds its scratch projects from: --set parsed as
the flows parse it, params written with absolute paths and validated first, and the environment
a benchmarked subprocess gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.common import REPO, bench_env, infra, parse_sets, scratch_params


def test_sets_parse_as_the_flows_parse_them():
    assert parse_sets(["prune.ratio=0.7", "prune.methods=[ice, agp]", "data.root=x.tar.gz"]) == {
        "prune.ratio": 0.7,
        "prune.methods": ["ice", "agp"],
        "data.root": "x.tar.gz",
    }
    with pytest.raises(SystemExit, match=r"--set 'prune.ratio': expected KEY=VALUE"):
        parse_sets(["prune.ratio"])


def test_a_scratch_project_reads_the_same_files_from_anywhere(tmp_path: Path):
    src = tmp_path / "preset.yaml"
    src.write_text(yaml.safe_dump({"data": {"source": "folder", "root": "data/x.tar.gz"}, "prune": {"ratio": 0.5}}))
    params = scratch_params(
        src, {"prune.ratio": 0.7, "model.weights": "weights/w.pt"}, tmp_path / "p", shared_cache=True
    )
    raw = yaml.safe_load((tmp_path / "p" / "params.yaml").read_text())
    assert raw["prune"]["ratio"] == 0.7 == params.prune.ratio
    assert raw["data"]["root"] == str(REPO / "data/x.tar.gz")
    assert raw["model"]["weights"] == str(REPO / "weights/w.pt")
    assert Path(raw["data"]["cache_dir"]).is_absolute() and raw["data"]["cache_dir"].startswith(str(REPO))


def test_invalid_params_end_the_benchmark_in_one_line_and_write_nothing(tmp_path: Path):
    src = tmp_path / "preset.yaml"
    src.write_text("prune: {ratio: 0.5}\n")
    with pytest.raises(SystemExit) as err:
        scratch_params(src, {"prune.ratio": 7}, tmp_path / "p")
    assert str(err.value).startswith("error: ") and "prune.ratio" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "p" / "params.yaml").exists()


def test_the_subprocess_environment_drops_what_it_is_told_and_keeps_telemetry_off(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:2/api")
    env = bench_env(quiet=True, drop=("MLFLOW_",), PREFECT_HOME="/tmp/h")
    assert "MLFLOW_TRACKING_URI" not in env and env["PREFECT_API_URL"] == "http://127.0.0.1:2/api"
    assert env["DO_NOT_TRACK"] == "true" and env["ICE_QUIET"] == "1" and env["PREFECT_HOME"] == "/tmp/h"


def test_infra_modules_load_by_path():
    assert infra("s3") is infra("s3") and callable(infra("s3").start)
