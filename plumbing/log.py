"""Progress and warning lines (stderr and the Prefect run's log), the stop event and the
live step sink."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
from typing import Any

__all__ = ["STEP_SINK", "STOP", "check_stop", "warn", "progress", "prog"]

# Where a long task reports each finished epoch while it runs (the flow logs them to MLflow
# live); None: nobody listens. A context variable, so a task called from the flow sees it.
STEP_SINK: contextvars.ContextVar[Any] = contextvars.ContextVar("ice_step_sink", default=None)


# Set when the process is asked to stop (SIGTERM, Ctrl-C). The signal interrupts the main
# thread only; work in worker threads (auto-tune trials) checks this between steps, so a
# stop takes one step, not the rest of a trial.
STOP = threading.Event()


def check_stop() -> None:
    if STOP.is_set():
        raise RuntimeError("stopped: the process was asked to stop")


def warn(msg: str) -> None:
    """One ``warning:`` line on stderr, printed even when progress is silenced (``--quiet``)."""
    line = msg if msg.startswith("warning:") else f"warning: {msg}"
    print(line, file=sys.stderr, flush=True)
    _to_run_log(line, logging.WARNING)


def _to_run_log(msg: str, level: int) -> None:
    """Inside a Prefect run, ``msg`` also goes to the run's log in the UI, through the
    ``ice.progress`` logger (an extra logger of Prefect's, with no console handler)."""
    logger = logging.getLogger("ice.progress")
    ctx = sys.modules.get("prefect.context")
    if logger.handlers and ctx is not None and (ctx.FlowRunContext.get() or ctx.TaskRunContext.get()):
        logger.log(level, msg)


def progress(msg: str) -> None:
    """One progress line (epochs, steps, trials) on stderr; ``ICE_QUIET=1`` silences it.

    Inside a Prefect run the line also reaches the run's log in the UI, through the
    ``ice.progress`` logger (an extra logger of Prefect's, with no console handler).
    """
    if os.environ.get("ICE_QUIET") not in ("1", "true", "yes"):
        print(msg, file=sys.stderr, flush=True)
    _to_run_log(msg, logging.INFO)


def prog(default: str) -> str:
    """The name a command's ``--help`` shows: ``ice <command>`` when the ``ice`` console script
    runs it (scripts/cli.py sets ``sys.argv[0]``), else ``default`` (``python -m ...``)."""
    return sys.argv[0] if sys.argv and sys.argv[0].startswith("ice ") else default
