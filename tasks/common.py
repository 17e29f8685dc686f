"""What every task and flow shares: the project's paths, checkpoint references, caching.

Paths. Every path is relative to the project root: the ``root`` argument, else
``$ICE_PROJECT_DIR``, else the working directory. A worker that runs a deployed flow
from another directory therefore still reads and writes the project's files.

References. Tasks pass checkpoints and data by reference, ``{"uri": ..., "sha256": <hex>}``,
never as tensors. Task outputs go to the content store (:mod:`tasks.store`): by default
``.ice-cache/store`` under the project (the uri is then the path relative to the root),
or ``s3://bucket/prefix`` when ``store.url`` says so. Neither DVC nor git tracks the
store, so a cached result stays valid after ``dvc repro`` has removed a stage's outs;
the flows copy the final files to their DVC outs.

Caching. A task's cache key hashes its inputs (references carry the sha256, configs
are plain dicts; ``root`` is excluded so keys do not depend on where the project
sits), the task's source and the source of the ``ice`` package, so changing the
library invalidates every cached step.
"""

from __future__ import annotations

import contextvars
import csv
import functools
import hashlib
import io
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ice.files import atomic_write_bytes, disk_full_names, sha256_file, staged_copy, temp_beside

__all__ = [
    "Paths",
    "project_root",
    "make_ref",
    "store_of",
    "s3_store",
    "resolve",
    "ice_code_hash",
    "write_json",
    "read_json",
    "write_csv",
    "publish",
    "progress",
    "IntegrityError",
    "verify_input",
    "verify_refs",
    "recorded_sha",
]

CACHE_DIR = ".ice-cache"


def project_root(root: str | Path | None = None) -> Path:
    """The directory every relative path is resolved against."""
    if root is None:
        root = os.environ.get("ICE_PROJECT_DIR") or os.getcwd()
    return Path(root).expanduser().resolve()


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, under one project root."""

    root: Path

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared" / "dataset.pt"

    @property
    def prepared_record(self) -> Path:
        """What prepare recorded about its output: the sha256 and the split sizes."""
        return self.root / "data" / "prepared" / "dataset.json"

    @property
    def pretrained(self) -> Path:
        return self.root / "models" / "pretrained.pt"

    @property
    def pretrain_report(self) -> Path:
        return self.root / "reports" / "pretrain.json"

    @property
    def autotune(self) -> Path:
        return self.root / "models" / "autotune.json"

    def pruned(self, method: str) -> Path:
        return self.root / "models" / "pruned" / f"{method}.pt"

    def steps_csv(self, method: str) -> Path:
        return self.root / "reports" / "steps" / f"{method}.csv"

    def prune_report(self, method: str) -> Path:
        return self.root / "reports" / "prune" / f"{method}.json"

    @property
    def metrics(self) -> Path:
        return self.root / "reports" / "metrics.json"

    @property
    def compare(self) -> Path:
        return self.root / "reports" / "compare.md"

    @property
    def figures(self) -> Path:
        return self.root / "reports" / "figures"

    @property
    def store(self) -> Path:
        return self.root / CACHE_DIR / "store"

    @property
    def results(self) -> Path:
        return self.root / CACHE_DIR / "results"

    def rel(self, path: Path) -> str:
        """``path`` as recorded: relative to the root when it lies in the project (through a
        symlinked ``.ice-cache``, ``data/`` or store too), else absolute (a cache on another disk)."""
        p = Path(os.path.abspath(path))  # normalised, symlinks kept: .ice-cache -> /big/disk stays .ice-cache/...
        for candidate in (p, p.resolve()):
            try:
                return candidate.relative_to(self.root).as_posix()
            except ValueError:
                continue
        return p.resolve().as_posix()


def make_ref(paths: Paths, path: Path, sha256: str | None = None) -> dict[str, str]:
    """A reference to a file under the project: its path relative to the root, plus sha256."""
    return {"uri": paths.rel(path), "sha256": sha256 or sha256_file(path)}


def s3_store(paths: Paths, where: str) -> Any:
    """The S3 store that ``where`` (a store url, or an object's uri in it) belongs to, cached under ``paths``."""
    from tasks.store import S3Store, StoreUrl, parse_store_url

    loc = parse_store_url(where)
    head, sep, _ = loc.prefix.rpartition("objects/") if "/objects/" in f"/{loc.prefix}" else ("", "", "")
    if sep:  # an object's uri: the store is what comes before objects/
        loc = StoreUrl(loc.bucket, head.rstrip("/"))
    return S3Store(loc, paths.store)


def store_of(ref: dict[str, str] | None) -> str:
    """The store url a reference lives in ("" for the local store), where a task's outputs go too."""
    from tasks.store import is_s3

    uri = (ref or {}).get("uri", "")
    return s3_store(Paths(Path(".")), uri).url if is_s3(uri) else ""


def resolve(paths: Paths, ref: dict[str, str]) -> Path:
    """A local, verified-on-read path for ``ref``; a clear one-line error when it has gone."""
    from tasks.store import is_s3

    uri = ref["uri"]
    if is_s3(uri):
        return s3_store(paths, uri).get({"uri": uri, "sha256": ref["sha256"]})  # type: ignore[no-any-return]
    p = paths.root / uri
    if not p.exists():
        raise FileNotFoundError(
            f"{uri} (sha256 {ref['sha256'][:12]}…) is missing; a cached result points at it. "
            f"Rerun with --refresh-cache, or remove {CACHE_DIR}/ to start clean."
        )
    return p


def store_path(paths: Paths, stem: str, sha256: str, suffix: str = ".pt") -> Path:
    return paths.store / f"{stem}-{sha256[:16]}{suffix}"


@functools.cache
def ice_code_hash() -> str:
    """sha256 over the ``ice`` package's source files: part of every task's cache key."""
    import ice

    base = Path(ice.__file__).parent
    h = hashlib.sha256()
    for f in sorted(base.rglob("*.py")):
        h.update(f.relative_to(base).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, csv_bytes(rows))


class Publication:
    """A stage's outputs, published together: every file is first written in full to a
    temporary file beside its destination (a full disk or a read-only directory fails
    here, before any output has changed); only then are they renamed into place, and a
    rename that fails puts back the ones already done. So either every output is new,
    or none has changed."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []

    def _temp(self, dst: Path) -> tuple[int, Path]:
        fd, tmp = temp_beside(dst)
        self.staged.append((tmp, dst))
        return fd, tmp

    def add_bytes(self, dst: Path, data: bytes) -> None:
        fd, tmp = self._temp(dst)
        with disk_full_names(dst, len(data)), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)

    def add_file(self, src: Path, dst: Path, sha256: str) -> None:
        """A copy of ``src``, staged only if its bytes hash to ``sha256``."""
        fd, tmp = self._temp(dst)
        with os.fdopen(fd, "wb") as out:
            got = staged_copy(src, out, dst)
        if got != sha256:
            raise IntegrityError(f"{src}: sha256 is {got}, expected {sha256}; not published to {dst.name}")
        os.chmod(tmp, 0o644)

    def commit(self) -> None:
        done: list[tuple[Path, Path | None]] = []  # (dst, backup of its old content)
        try:
            for tmp, dst in self.staged:
                backup = None
                if dst.exists():
                    backup = dst.with_name(f".{dst.name}.{os.getpid()}.bak")
                    os.link(dst, backup)
                os.replace(tmp, dst)
                done.append((dst, backup))
        except BaseException:
            for dst, backup in reversed(done):
                if backup is not None:
                    os.replace(backup, dst)
                else:
                    dst.unlink(missing_ok=True)
            raise
        finally:
            self.abort()
            for _, backup in done:
                if backup is not None:
                    backup.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove whatever was staged and not renamed."""
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> Publication:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


class IntegrityError(RuntimeError):
    """A file does not hold the bytes its producer recorded; the message is one line."""


def publish(src: Path, dst: Path, sha256: str) -> None:
    """Copy a stored file to a DVC out, atomically, and only if its bytes hash to ``sha256``.

    The copy is hashed as it is written; on a mismatch nothing is renamed, so ``dst``
    keeps its old content (or stays absent) and no reader ever sees a wrong file.
    """
    with Publication() as pub:
        pub.add_file(src, dst, sha256)


def recorded_sha(paths: Paths, path: Path) -> tuple[str | None, Path]:
    """The sha256 that ``path``'s producer recorded, and where it recorded it."""
    if path == paths.prepared:
        record = paths.prepared_record
    elif path == paths.pretrained:
        record = paths.pretrain_report
    elif path.parent == paths.root / "models" / "pruned":
        record = paths.prune_report(path.stem)
    else:
        return None, path
    try:
        return str(json.loads(record.read_text())["sha256"]), record
    except (OSError, ValueError, KeyError):
        return None, record


def verify_input(paths: Paths, path: Path, stage: str) -> dict[str, str]:
    """A reference to an upstream output after checking it against its producer's record.

    A file whose bytes differ from what its stage recorded (a flipped byte, a truncated
    copy) is refused with one line naming the file, both hashes and the stage to rerun.
    """
    sha = sha256_file(path)
    want, record = recorded_sha(paths, path)
    if want is None and record != path:
        raise IntegrityError(f"{paths.rel(path)}: no sha256 recorded in {paths.rel(record)}; rerun the {stage} stage")
    if want is not None and sha != want:
        raise IntegrityError(
            f"{paths.rel(path)}: sha256 is {sha}, the {stage} stage recorded {want} in "
            f"{paths.rel(record)}; the file changed since: rerun the {stage} stage"
        )
    return make_ref(paths, path, sha)


def verify_refs(paths: Paths, value: Any) -> list[str]:
    """The references inside a task's result whose files are missing or do not hash to their sha256."""
    from tasks.store import is_s3

    bad: list[str] = []
    if isinstance(value, dict):
        if set(value) == {"uri", "sha256"}:
            if is_s3(value["uri"]):
                if not s3_store(paths, value["uri"]).exists(value):
                    bad.append(value["uri"])
            else:
                p = paths.root / value["uri"]
                if not p.is_file() or sha256_file(p) != value["sha256"]:
                    bad.append(value["uri"])
        else:
            for v in value.values():
                bad += verify_refs(paths, v)
    elif isinstance(value, list):
        for v in value:
            bad += verify_refs(paths, v)
    return bad


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
