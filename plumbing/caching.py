"""Task cache keys and cached, verified task results.

A task's cache key hashes its inputs (references carry the sha256, configs are plain
dicts; ``root`` is excluded so keys do not depend on where the project sits), the task's
source and the source of the ``ice`` package, so changing the library invalidates every
cached step. :func:`bind` gives a task that caches under a project root (or in the S3
store's bucket) and whose returned references are checked on every hit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from plumbing.log import warn
from plumbing.paths import Paths
from plumbing.records import IntegrityError, verify_refs

__all__ = ["ice_code_hash", "cache_key", "Verified", "bind", "result_storage"]


# ----------------------------------------------------------------------------- caching
def ice_code_hash() -> str:
    """sha256 over the ``ice`` package's source files: part of every task's cache key."""
    import ice

    base = Path(ice.__file__).parent
    h = hashlib.sha256()
    for f in sorted(base.rglob("*.py")):
        h.update(f.relative_to(base).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """sha256 of the task's source, the ice library's source and the inputs (no ``root``)."""
    fn = context.task.fn
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = fn.__code__.co_code.hex()
    inputs = {k: v for k, v in parameters.items() if k != "root"}
    blob = json.dumps([context.task.name, source, ice_code_hash(), inputs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Verified:
    """A bound task whose results are checked: every reference it returns must hash to its sha256.

    A cached result that points at a damaged or missing file is a cache miss: one
    warning line, the file goes, and the task runs again. It is never an output.
    """

    def __init__(self, task: Any, paths: Paths) -> None:
        self.task, self.paths = task, paths
        self.name = task.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.task(*args, **kwargs)
        bad = verify_refs(self.paths, out)
        if bad:
            warn(f"{self.name}: the cached result's {bad[0]} fails its sha256 check; recomputing")
            for rel in bad:
                if "://" not in rel:  # a remote object cannot be unlinked here; the recompute rewrites it
                    (self.paths.root / rel).unlink(missing_ok=True)
            out = self.task.with_options(refresh_cache=True)(*args, **kwargs)
            still = verify_refs(self.paths, out)
            if still:
                raise IntegrityError(f"{still[0]}: written by {self.name} but fails its sha256 check")
        return out

    def submit(self, *args: Any, runner: Any = None, **kwargs: Any) -> Any:
        """Submit to the flow's task runner, or to ``runner`` (an entered Prefect task runner,
        e.g. Dask's) when given."""
        if runner is None:
            return self.task.submit(*args, **kwargs)
        bound = inspect.signature(self.task.fn).bind(*args, **kwargs)
        return runner.submit(self.task, parameters=dict(bound.arguments))

    def named(self, run_name: str) -> Verified:
        """The same task (same cache key), its next run shown in the UI as ``run_name``."""
        return Verified(self.task.with_options(task_run_name=run_name), self.paths)


def bind(t: Any, root: Path, store_url: str = "") -> Verified:
    """``t`` caching its results, with verified references: under ``<root>/.ice-cache/results``,
    or, with an S3 ``store_url``, in the bucket (``<prefix>/results``), so that a task cached by
    one machine is a cache hit on another."""
    paths = Paths(root)
    if store_url:
        storage: Any = result_storage(store_url)
    else:
        paths.results.mkdir(parents=True, exist_ok=True)
        storage = paths.results
    task = t.with_options(
        cache_key_fn=cache_key,
        persist_result=True,
        result_storage=storage,
        result_serializer="json",  # tasks return plain data; a JSON result never runs code when read
    )
    return Verified(task, paths)


_RESULT_BLOCKS: dict[str, Any] = {}


def result_storage(store_url: str) -> Any:
    """prefect-aws's S3Bucket on ``<store>/results``, saved as a block (Prefect requires result
    storage to be persisted server-side). It carries no credentials: each machine's boto3 reads
    its own ``AWS_*`` environment, as the content store does."""
    if store_url not in _RESULT_BLOCKS:
        from prefect_aws import S3Bucket

        from plumbing.s3 import parse_store_url

        loc = parse_store_url(store_url)
        block = S3Bucket(bucket_name=loc.bucket, bucket_folder=loc.key("results"))
        name = "ice-results-" + hashlib.sha256(store_url.encode()).hexdigest()[:12]
        block.save(name, overwrite=True)
        _RESULT_BLOCKS[store_url] = block
    return _RESULT_BLOCKS[store_url]
