"""What stages write and how it is checked: JSON/CSV outputs, all-or-nothing publication
of a stage's outputs, and the sha256 records every input is verified against."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ice.files import atomic_write_bytes, disk_full_names, sha256_file, staged_copy, temp_beside
from plumbing.paths import Paths, make_ref
from plumbing.stages import record_of

__all__ = [
    "write_json",
    "read_json",
    "csv_bytes",
    "json_bytes",
    "write_csv",
    "Publication",
    "IntegrityError",
    "publish",
    "recorded_sha",
    "verify_input",
    "verify_refs",
]


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
    record = record_of(paths, path)
    if record is None:
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
    from plumbing.store import store_for

    bad: list[str] = []
    if isinstance(value, dict):
        if set(value) == {"uri", "sha256"}:
            if not store_for(paths, value["uri"]).exists(value):
                bad.append(value["uri"])
        else:
            for v in value.values():
                bad += verify_refs(paths, v)
    elif isinstance(value, list):
        for v in value:
            bad += verify_refs(paths, v)
    return bad
