"""The fault corpus (tests/fault_corpus.py) as tests: every case is a one-line refusal or a correct recovery."""

from __future__ import annotations

import pytest
from fault_corpus import CASES, build_base, run_case, verdict

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("faults"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case, base, tmp_path):
    outcome = run_case(case, base, tmp_path)
    problem = verdict(case, outcome)
    assert problem is None, problem
