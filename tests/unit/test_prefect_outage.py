"""Prefect's own records of an outage reach the console as the project's lines: an unreachable
server is one line when it starts and one with its length at the end (not Prefect's 2,000-2,700
character warnings and errors), and a task result that Prefect rolled back because the store did
not take it is one line naming the task. The records come from Prefect's real code paths."""

from __future__ import annotations

import logging

import pytest

from plumbing import cli, outage


@pytest.fixture
def console(monkeypatch, capfd):  # capfd first: Prefect's handlers bind to the stderr of their set-up
    """Prefect's logging as a flow's CLI leaves it: Prefect's own console handlers (the root's and
    `prefect._internal`'s), with the one-line filter the CLI adds (``_quiet_failures``)."""
    from prefect.logging.configuration import setup_logging

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.delenv("ICE_QUIET", raising=False)
    from prefect.logging.handlers import PrefectConsoleHandler, _SafeStreamHandler

    for name in ("", "prefect._internal"):  # a fresh process's handlers, bound to this test's stderr
        for h in logging.getLogger(name).handlers[:]:
            if isinstance(h, (PrefectConsoleHandler, _SafeStreamHandler)):
                logging.getLogger(name).removeHandler(h)
    setup_logging(incremental=False)
    cli._quiet_failures()
    outage.PREFECT_OUTAGE.first = None
    yield
    outage.PREFECT_OUTAGE.first = None


def test_an_unreachable_prefect_server_is_two_lines(console, capfd):
    from prefect.events.clients import PrefectEventsClient

    events = PrefectEventsClient(api_url="http://127.0.0.1:9/api")
    for _ in range(3):  # Prefect warns once per failed connection
        events._log_connection_error(ConnectionRefusedError("[Errno 111] Connect call failed"))
    logging.getLogger("prefect._internal.concurrency").error(
        "Service %r failed to process item %r", "EventsWorker", "Event(" + "x" * 2500 + ")"
    )
    outage.PREFECT_OUTAGE.ended()
    lines = capfd.readouterr().err.strip().splitlines()  # whatever reached stderr, by any handler
    assert len(lines) == 2, lines
    assert lines[0].startswith("Prefect server at http://127.0.0.1:9/api is not answering; the run goes on")
    assert lines[1].startswith("Prefect server was unreachable for about ")
    assert all(len(line) < 200 for line in lines)


def test_a_result_rolled_back_by_a_failed_store_is_one_line(console, capfd, tmp_path):
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore
    from prefect.transactions import transaction

    class Unreachable(LocalFileSystem):
        _block_type_slug = "ice-test-unreachable"  # its own key: LocalFileSystem stays registered as it is

        def write_path(self, path, content, **_):  # an S3 store whose server is down
            raise ConnectionError("Could not connect to the endpoint URL: http://127.0.0.1:9/ice")

    store = ResultStore(result_storage=Unreachable(basepath=str(tmp_path)))
    with transaction(key="step-3", store=store, write_on_commit=True) as txn:
        txn.stage(store.create_result_record(42, key="step-3"))
    assert txn.state.name == "ROLLED_BACK"
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [
        "a task: its result could not be written to the task store (store.url) (ConnectionError: Could not "
        "connect to the endpoint URL: http://127.0.0.1:9/ice) and was rolled back; the run goes on, and the "
        "next run recomputes that task"
    ], lines


def test_other_warnings_pass_untouched(console):
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(cli._OneLineFailures())
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("prefect.flow_engine").warning("something a user should see")
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue() == "something a user should see\n"


def test_a_prefect_call_that_outlived_the_retries_is_the_projects_line(monkeypatch):
    """What the Prefect client raises once its retries are spent (a real httpx call to a port where
    nothing listens), however deep in the chain, is one line naming the server and what to do."""
    import httpx

    from helpers import free_port

    url = f"http://127.0.0.1:{free_port()}/api"
    try:
        with httpx.Client() as client:
            client.post(url + "/task_runs/", json={})
    except httpx.ConnectError as err:
        try:
            raise RuntimeError("Crashed: the task run's state could not be set") from err
        except RuntimeError as wrapped:
            outer = wrapped
    monkeypatch.setenv("PREFECT_API_URL", url)
    assert cli.one_line(outer) == (
        f"Prefect server at {url} did not answer for 62 s; restart it (ice up, or make up) and rerun: "
        "every finished task is reused"
    )
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # another server's connection
    assert cli.one_line(outer) == "RuntimeError: Crashed: the task run's state could not be set"
