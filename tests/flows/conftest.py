from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def harness():
    """One session-wide Prefect test harness (a temporary API and database)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
