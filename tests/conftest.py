from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py
CIFAR_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    from ice.data import load_dataset

    return load_dataset(source="digits", cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def cifar_tar() -> Path:
    if not CIFAR_TAR.exists():
        pytest.skip(f"real CIFAR-10 archive not found at {CIFAR_TAR} (see ../shared/datasets/README.md)")
    return CIFAR_TAR


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect server on loopback for the tests that run flows in subprocesses."""
    from helpers import PrefectServer

    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"))
    yield server
    server.stop()


def pytest_collection_modifyitems(config, items):
    """The full torchvision zoo runs only when asked (``pytest -m zoo``); one model per
    family runs always (tests/unit/test_any_cnn.py)."""
    if "zoo" in (config.getoption("markexpr") or ""):
        return
    keep = [i for i in items if i.get_closest_marker("zoo") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("zoo") is not None])
        items[:] = keep


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real S3 server (SeaweedFS `weed mini`) on loopback, with its own identity, stopped by its PID."""
    from helpers import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's environment pointed at the test S3 server (as `source .stack/env` does)."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server
