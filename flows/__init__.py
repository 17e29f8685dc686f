"""Prefect flows, one per pipeline stage, plus ``pipeline`` that chains them.

Run one with ``python -m flows.<name> --params params.yaml``: prepare, pretrain,
autotune, prune (``--method``), evaluate, pipeline.

Importing this package sets environment *defaults* only (an explicit setting wins):
telemetry off, and Prefect's per-task chatter at WARNING so a run prints its own
progress lines and little else. Prefect reads these when it is imported, so they
cannot wait for ``main()``.

Without ``PREFECT_API_URL`` a flow starts a temporary (ephemeral) Prefect server. Its
background loops (scheduler, late runs, foreman, ...) serve schedules and workers that
such a server never has, and they burned about a third of a core: an idle 30 s flow
cost the server 15.5 s of CPU with them and 6.0 s without, and a CIFAR-10 prune ran
17.6% slower than calling ``ice`` directly. They are off by default here; the task-run
recorder and event persister, which the UI needs, stay on. A real server
(``make up``) is not affected.
"""

import os as _os

for _k, _v in {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ice.progress",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    **{
        f"PREFECT_SERVER_SERVICES_{svc}_ENABLED": "false"
        for svc in (
            "SCHEDULER",
            "LATE_RUNS",
            "FOREMAN",
            "PAUSE_EXPIRATIONS",
            "REPOSSESSOR",
            "CANCELLATION_CLEANUP",
            "CLEANUP_RECONCILER",
            "TRIGGERS",
        )
    },
}.items():
    _os.environ.setdefault(_k, _v)
