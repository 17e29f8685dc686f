"""The content store: where task outputs live, addressed by ``{"uri", "sha256"}``.

Two backends, chosen by one setting, ``store.url`` in params (or ``$ICE_STORE_URL``,
which wins, so a worker can be pointed at the shared store without editing params):

- empty (the default): a directory under the project, ``.ice-cache/store``. A reference's
  ``uri`` is the file's path relative to the project root, so a project can move.
- ``s3://bucket/prefix``: an S3 bucket through boto3. The endpoint and credentials come
  from the standard environment only (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), never from
  params or committed files. Objects are keyed by their sha256
  (``<prefix>/objects/<sha256><suffix>``), so the same bytes are stored once whoever
  writes them, and two writers of the same sha leave one valid object.

Every read is verified: a worker downloads an object once per sha into its local cache
(``.ice-cache/store``), hashing it as it arrives, and a file whose bytes do not hash to
the reference's sha256 is refused with a one-line :class:`StoreError`
(:mod:`plumbing.s3` holds the S3 side) (the loaders of
:mod:`ice` check the sha again when they open it). Writes are atomic from a reader's
side: a local file is renamed into place only once whole, and an S3 object (single or
multipart upload) becomes visible only when its upload completes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ice.files import sha256_file
from plumbing.paths import CACHE_DIR, Paths, make_ref
from plumbing.s3 import S3Store, StoreError, is_s3, s3_store

__all__ = ["Store", "LocalStore", "S3Store", "StoreError", "store_for", "store_of", "resolve", "store_path"]


class Store(Protocol):
    """Where task outputs live. Two implementations: :class:`LocalStore` (a directory of the
    project) and :class:`S3Store` (a bucket); :func:`store_for` picks one, and no other code
    asks which."""

    @property
    def url(self) -> str: ...

    def get(self, ref: dict[str, str]) -> Path:
        """A local path holding ``ref``'s bytes (an S3 object is downloaded and verified)."""
        ...

    def exists(self, ref: dict[str, str]) -> bool:
        """Whether ``ref``'s bytes are there."""
        ...

    def save(self, stem: str, tmp: Path, sha256: str) -> dict[str, str]:
        """Adopt the whole temporary file ``tmp`` under its sha256; its reference."""
        ...

    def share(self, path: Path, ref: dict[str, str]) -> dict[str, str]:
        """A reference to the project file ``path`` (``ref``) that any worker can read."""
        ...


class LocalStore:
    """``.ice-cache/store`` under the project; a reference's uri is the path relative to the root."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    @property
    def url(self) -> str:
        return ""

    def get(self, ref: dict[str, str]) -> Path:
        p = self.paths.root / ref["uri"]
        if not p.exists():
            raise FileNotFoundError(
                f"{ref['uri']} (sha256 {ref['sha256'][:12]}…) is missing; a cached result points at it. "
                f"Rerun with --refresh-cache, or remove {CACHE_DIR}/ to start clean."
            )
        return p  # the loaders verify the sha256 as they read

    def exists(self, ref: dict[str, str]) -> bool:
        p = self.paths.root / ref["uri"]
        return p.is_file() and sha256_file(p) == ref["sha256"]

    def save(self, stem: str, tmp: Path, sha256: str) -> dict[str, str]:
        dst = store_path(self.paths, stem, sha256)
        os.replace(tmp, dst)
        return make_ref(self.paths, dst, sha256)

    def share(self, path: Path, ref: dict[str, str]) -> dict[str, str]:
        return ref  # every worker of a local store shares this disk


def store_for(paths: Paths, where: str) -> Store:
    """The store that ``where`` names: a store url (``""``: the local one) or a reference's uri."""
    return s3_store(paths, where) if is_s3(where) else LocalStore(paths)


def store_of(ref: dict[str, str] | None) -> str:
    """The store url a reference lives in ("" for the local store), where a task's outputs go too."""
    return store_for(Paths(Path(".")), (ref or {}).get("uri", "")).url


def resolve(paths: Paths, ref: dict[str, str]) -> Path:
    """A local, verified-on-read path for ``ref``; a clear one-line error when it has gone."""
    return store_for(paths, ref["uri"]).get({"uri": ref["uri"], "sha256": ref["sha256"]})


def store_path(paths: Paths, stem: str, sha256: str, suffix: str = ".pt") -> Path:
    return paths.store / f"{stem}-{sha256[:16]}{suffix}"
