"""Prefect flows, one per pipeline stage, plus ``pipeline`` that chains them.

Run one with ``python -m flows.<name> --params params.yaml``: prepare, pretrain,
autotune, prune (``--method``), evaluate, pipeline.

Importing this package sets environment *defaults* only (an explicit setting wins):
telemetry off, and Prefect's per-task chatter at WARNING so a run prints its own
progress lines and little else. Prefect reads these when it is imported, so they
cannot wait for ``main()``.
"""

import os as _os

for _k, _v in {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ice.progress",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    _os.environ.setdefault(_k, _v)
