"""The outage bound every server client shares: a call that meets a server which does not answer
is retried with backoff for up to :data:`OUTAGE_SECONDS`, with one progress line, and then fails
in one line naming the server and the command that restarts it.

MLflow's calls get it from urllib3's retries (plumbing/tracking.py: 6 attempts, backoff 2..32 s);
S3's store calls from :func:`ride_through`, with the same waits; Prefect's from its own client
(5 retries, backoff 2..32 s), whose failure :func:`prefect_outage_line` words, and whose outage
records :class:`PrefectOutage` turns into two lines."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from plumbing.log import progress

__all__ = [
    "BACKOFF",
    "OUTAGE_SECONDS",
    "ServerOutage",
    "ride_through",
    "restart_hint",
    "PrefectOutage",
    "PREFECT_OUTAGE",
    "prefect_outage_line",
]

BACKOFF = (2, 4, 8, 16, 32)  # seconds between attempts: urllib3's backoff_factor 1 from the second retry on
OUTAGE_SECONDS = sum(BACKOFF)  # 62

T = TypeVar("T")


def restart_hint() -> str:
    return "restart it (ice up, or make up) and rerun: every finished task is reused"


class ServerOutage(RuntimeError):
    """A server did not answer for the whole bound; the message is the project's one line."""


def ride_through(server: str, call: Callable[[], T], transient: tuple[type[BaseException], ...]) -> T:
    """``call()``, retried while it raises one of ``transient`` (the server is not answering), for
    up to :data:`OUTAGE_SECONDS`; then :class:`ServerOutage`. ``server`` names it, e.g. "S3 at
    http://127.0.0.1:8333"."""
    for attempt, wait in enumerate((*BACKOFF, None)):
        try:
            return call()
        except transient as err:
            if wait is None:
                raise ServerOutage(f"{server} did not answer for {OUTAGE_SECONDS} s; {restart_hint()}") from err
            if attempt == 0:
                progress(f"{server} is not answering; retrying for up to {OUTAGE_SECONDS} s")
            time.sleep(wait)
    raise AssertionError("unreachable")


class PrefectOutage:
    """Prefect's own records of an unreachable server (the events client's "Unable to connect"
    warning, the events worker's "failed to process item Event(...)" error: 2,000-2,700 characters
    each) become one line when the outage starts and one line, with its length, at the end; and a
    task result that Prefect rolled back because the store did not take it is said in one line,
    naming the task (Prefect itself logs that at ERROR, or not at all on the console)."""

    UNREACHABLE = ("Unable to connect to", "failed to process item")
    ROLLED_BACK = ("An error was encountered while committing transaction", "while serializing result for transaction")

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.busy = False  # progress() also logs to the run: never re-enter from inside it

    def catch(self, record: logging.LogRecord) -> bool:
        """True when the record is one of these (it is then dropped, after its line)."""
        if not record.name.startswith("prefect") or self.busy:
            return False
        if getattr(record, "_ice_outage", False):
            return True  # said already, by the filter of another handler this record went through
        msg = str(record.msg)
        if any(k in msg for k in self.UNREACHABLE + self.ROLLED_BACK):
            record._ice_outage = True
        if any(k in msg for k in self.UNREACHABLE):
            now = time.monotonic()
            if self.first is None:
                self.first = now
                self._say(
                    f"Prefect server at {os.environ.get('PREFECT_API_URL', '(ephemeral)')} is not answering; the run "
                    "goes on, and what it reports until the server is back may be missing from the Prefect UI"
                )
            self.last = now
            return True
        if any(k in msg for k in self.ROLLED_BACK):
            task = getattr(record, "task_run_name", None) or "a task"
            exc = record.exc_info[1] if record.exc_info else None
            why = f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})" if exc else ""
            self._say(
                f"{task}: its result could not be written to the task store "
                f"({os.environ.get('ICE_STORE_URL') or 'store.url'}){why} and was rolled back; the run goes on, "
                "and the next run recomputes that task"
            )
            return True
        return False

    def ended(self) -> None:
        """The outage's one closing line, where there was one."""
        if self.first is not None:
            span = max(self.last - self.first, 0.0)
            self._say(f"Prefect server was unreachable for about {span:.0f} s (from its first failed call to its last)")
            self.first = None

    def _say(self, line: str) -> None:
        self.busy = True
        try:
            progress(line)
        finally:
            self.busy = False


PREFECT_OUTAGE = PrefectOutage()  # one per process: every console handler's filter shares it


def prefect_outage_line(err: BaseException) -> str | None:
    """A Prefect API call that failed on a connection after Prefect's own retries (5 by default,
    backoff 2..32 s: the same 62 s bound as the other servers) as the project's one line; None
    for anything else."""
    import httpx

    url = os.environ.get("PREFECT_API_URL")
    chain: BaseException | None = err
    while chain is not None and not isinstance(chain, httpx.TransportError):
        chain = chain.__cause__ or chain.__context__
    if chain is None or not url:
        return None
    request = getattr(chain, "_request", None)
    if request is not None and not str(request.url).startswith(url.rstrip("/")):
        return None  # another server's connection (MLflow and S3 say their own)
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    waited = sum(2**k for k in range(1, int(PREFECT_CLIENT_MAX_RETRIES.value()) + 1))  # Prefect's backoff
    return f"Prefect server at {url} did not answer for {waited} s; {restart_hint()}"
