"""The fault corpus (tests/fault_corpus.py) as tests: every case is a one-line refusal or a correct recovery."""

from __future__ import annotations

import pytest
from fault_corpus import CASES, build_base, run_case, verdict

from helpers import sub_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def env(prefect_server):
    return sub_env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(prefect_server.home))


@pytest.fixture(scope="module")
def base(tmp_path_factory, env):
    return build_base(tmp_path_factory.mktemp("faults"), env)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case, base, env, tmp_path):
    outcome = run_case(case, base, tmp_path, env)
    problem = verdict(case, outcome)
    assert problem is None, problem
