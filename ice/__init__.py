"""ice: a pure-PyTorch library for cost-efficient pruning of convolutional networks.

Importing ``ice`` is cheap and side-effect free: submodules are imported on use
(``import ice.data``, ``from ice.models import build_model``), and ``ice.prune`` (the
one-call entry, :mod:`ice.api`) on first use. It never imports prefect, mlflow, dvc or boto3.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ice-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__", "prune", "PruneReport"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``ice.prune`` and ``ice.PruneReport`` (:mod:`ice.api`), imported on first use."""
    if name in ("prune", "PruneReport"):
        from ice import api

        return getattr(api, name)
    raise AttributeError(f"module 'ice' has no attribute {name!r}")
