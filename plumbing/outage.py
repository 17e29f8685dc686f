"""The outage bound every server client shares: a call that meets a server which does not answer
is retried with backoff for up to :data:`OUTAGE_SECONDS`, with one progress line, and then fails
in one line naming the server and the command that restarts it.

MLflow's calls get it from urllib3's retries (plumbing/tracking.py: 6 attempts, backoff 2..32 s);
S3's store calls from :func:`ride_through`, with the same waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from plumbing.log import progress

__all__ = ["BACKOFF", "OUTAGE_SECONDS", "ServerOutage", "ride_through", "restart_hint"]

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
