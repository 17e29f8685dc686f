"""The S3 side of the content store (:mod:`plumbing.store`): a bucket through boto3, objects
keyed by their sha256, every download verified on arrival, every failure one line."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from ice.files import sha256_file, temp_beside
from plumbing.outage import ServerOutage, ride_through
from plumbing.paths import Paths

T = TypeVar("T")

__all__ = ["StoreError", "StoreUrl", "parse_store_url", "is_s3", "s3_client", "S3Store", "s3_store", "check_url"]

# one connection attempt fails fast and botocore's own retries stay bounded: the pre-flight
# check of an endpoint that does not answer gives its one-line error within 10 s; a store call
# during a run rides an outage through for up to OUTAGE_SECONDS (plumbing/outage.py)
CONNECT_TIMEOUT_S = 2
READ_TIMEOUT_S = 60
MAX_ATTEMPTS = 2


class StoreError(RuntimeError):
    """A store operation failed; the message is one line naming the URI."""


class _Unreachable(Exception):
    """A call failed because the server is not answering or not yet serving (s3transfer's own
    wrapping of a connection error, a 5xx from a server that is starting)."""


def _transient() -> tuple[type[BaseException], ...]:
    """What a call raises while the S3 server is not answering (down, restarting, dropping connections)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return (BotoConnectionError, HTTPClientError, _Unreachable)


def _ride(uri: str, call: Callable[[], T]) -> T:
    """``call()`` through an outage of up to OUTAGE_SECONDS (plumbing/outage.py), then one line naming
    the object and the server."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    def attempt() -> T:
        try:
            return call()
        except S3UploadFailedError as err:  # s3transfer wraps the connection error in its own text
            text = str(err)
            if "Could not connect" in text or "Connection was closed" in text or "InternalError" in text:
                raise _Unreachable(text) from err
            raise
        except ClientError as err:  # a server still starting answers 500 InternalError / 503 for a while
            if int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) >= 500:
                raise _Unreachable(_why(err)) from err
            raise

    try:
        return ride_through(f"S3 at {_endpoint() or 'the default AWS endpoint'}", attempt, _transient())
    except ServerOutage as err:
        raise StoreError(f"{uri}: {err}") from None


@dataclass(frozen=True)
class StoreUrl:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")


def is_s3(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith("s3://")


def parse_store_url(url: str) -> StoreUrl:
    """``s3://bucket/prefix`` -> its parts; a one-line error for anything else."""
    p = urlparse(url)
    if p.scheme != "s3" or not p.netloc:
        raise StoreError(f"store.url = {url!r} is not allowed; allowed: empty (a local store) or s3://bucket[/prefix]")
    return StoreUrl(p.netloc, p.path.strip("/"))


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_LOCAL = threading.local()


def s3_client() -> Any:
    """A boto3 S3 client from the standard environment, one per thread (boto3 clients are
    thread-safe, but sessions are not: each thread builds its own, once)."""
    import boto3
    from botocore.config import Config

    key = (_endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_DEFAULT_REGION"))
    cached = getattr(_LOCAL, "clients", {})
    if key not in cached:
        cfg = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        session = boto3.session.Session()
        cached[key] = session.client("s3", config=cfg, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        _LOCAL.clients = cached
    return cached[key]


def _why(err: BaseException) -> str:
    """botocore's error as a short reason: the error code, or the first line."""
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        return f"{e.get('Code', '?')} {e.get('Message', '')}".strip()
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text


def _fail(uri: str, what: str, err: BaseException) -> StoreError:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return StoreError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
        return StoreError(f"{uri}: not in the store (no such key); rerun the stage that writes it")
    if isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == "NoSuchBucket":
        return StoreError(f"{uri}: the bucket does not exist; create it (make up does) or fix store.url")
    where = _endpoint() or "the default AWS endpoint"
    return StoreError(f"{uri}: {what} failed at {where}: {_why(err)}")


class S3Store:
    """Content-addressed objects in one bucket and prefix, with a local download cache."""

    def __init__(self, url: str | StoreUrl, cache: Path) -> None:
        self.loc = url if isinstance(url, StoreUrl) else parse_store_url(url)
        self.cache = Path(cache)

    @property
    def url(self) -> str:
        return self.loc.url

    def object_uri(self, sha256: str, suffix: str) -> str:
        return self.loc.uri("objects", sha256 + suffix)

    def cached(self, uri: str) -> Path:
        """Where ``uri`` lies once downloaded: the cache keeps the object's own file name."""
        return self.cache / uri.rsplit("/", 1)[-1]

    # ------------------------------------------------------------------ writes
    def put(self, src: Path, sha256: str, suffix: str = "", name: str = "") -> dict[str, str]:
        """Upload ``src`` (whose bytes hash to ``sha256``) once; its reference.

        An object already there with the same recorded sha is not uploaded again: the
        same bytes from two writers are one object. ``name`` (e.g. ``ice-step003-pruned``)
        is kept as metadata, for a person browsing the bucket.
        """
        uri = self.object_uri(sha256, suffix)
        key = uri.removeprefix(f"s3://{self.loc.bucket}/")
        client = s3_client()
        if self._recorded_sha(uri) == sha256:
            return {"uri": uri, "sha256": sha256}
        try:
            # upload_file switches to multipart above 8 MB; either way the key appears only whole
            _ride(
                uri,
                lambda: client.upload_file(
                    str(src),
                    self.loc.bucket,
                    key,
                    ExtraArgs={"Metadata": {"sha256": sha256, "name": name or src.name}},
                ),
            )
        except StoreError:
            raise
        except Exception as err:
            raise _fail(uri, "upload", err) from None
        return {"uri": uri, "sha256": sha256}

    def put_bytes(self, data: bytes, suffix: str = "", name: str = "") -> dict[str, str]:
        sha = hashlib.sha256(data).hexdigest()
        self.cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".put-", suffix=".pending", dir=self.cache)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.put(Path(tmp), sha, suffix, name)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def save(self, stem: str, tmp: Path, sha256: str) -> dict[str, str]:
        """Adopt ``tmp`` (whole, hashing to ``sha256``) into the local cache and upload it."""
        dst = self.cached(self.object_uri(sha256, ".pt"))
        os.replace(tmp, dst)
        return self.put(dst, sha256, ".pt", name=stem)

    def share(self, path: Path, ref: dict[str, str]) -> dict[str, str]:
        """The same bytes as the project file ``ref``, in the bucket, where any worker can read them."""
        return self.put(path, ref["sha256"], path.suffix, name=ref["uri"])

    # ------------------------------------------------------------------ reads
    def _recorded_sha(self, uri: str) -> str | None:
        """The sha256 recorded with the object, or None when there is no such object."""
        from botocore.exceptions import ClientError

        bucket, key = _split(uri)
        try:
            head = _ride(uri, lambda: s3_client().head_object(Bucket=bucket, Key=key))
        except StoreError:
            raise
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _fail(uri, "lookup", err) from None
        except Exception as err:
            raise _fail(uri, "lookup", err) from None
        return str(head.get("Metadata", {}).get("sha256", ""))

    def exists(self, ref: dict[str, str]) -> bool:
        """The object is there and recorded with the reference's sha (a cheap check: no download)."""
        cached = self.cached(ref["uri"])
        if cached.is_file():
            return True
        return self._recorded_sha(ref["uri"]) == ref["sha256"]

    def get(self, ref: dict[str, str]) -> Path:
        """A local, verified copy of ``ref``: from the cache, or downloaded once and hashed on arrival."""
        uri, sha = ref["uri"], ref["sha256"]
        dst = self.cached(uri)
        if dst.is_file():
            if sha256_file(dst) == sha:
                return dst
            dst.unlink(missing_ok=True)  # a damaged cached copy: fetch it again
        bucket, key = _split(uri)
        fd, tmp = temp_beside(dst, ".download")
        try:
            with os.fdopen(fd, "wb") as out:

                def download() -> None:
                    out.seek(0)
                    out.truncate()  # a retry after a dropped connection starts the file again
                    s3_client().download_fileobj(bucket, key, out)

                try:
                    _ride(uri, download)
                except StoreError:
                    raise
                except Exception as err:
                    raise _fail(uri, "download", err) from None
            got = sha256_file(tmp)
            if got != sha:
                raise StoreError(f"{uri}: sha256 is {got}, the reference says {sha}; refused")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return dst


def _split(uri: str) -> tuple[str, str]:
    p = urlparse(uri)
    return p.netloc, p.path.lstrip("/")


@functools.lru_cache(maxsize=8)
def _checked(url: str, endpoint: str | None) -> None:
    loc = parse_store_url(url)
    try:
        s3_client().head_bucket(Bucket=loc.bucket)
    except Exception as err:
        raise _fail(url, "reaching the bucket", err) from None


def check_url(url: str) -> None:
    """Fail fast, in one line, when an S3 store is misnamed, unreachable or lacks its bucket."""
    if is_s3(url):
        _checked(url, _endpoint())


def s3_store(paths: Paths, where: str) -> S3Store:
    """The S3 store that ``where`` (a store url, or an object's uri in it) belongs to, cached under ``paths``."""
    loc = parse_store_url(where)
    head, sep, _ = loc.prefix.rpartition("objects/") if "/objects/" in f"/{loc.prefix}" else ("", "", "")
    if sep:  # an object's uri: the store is what comes before objects/
        loc = StoreUrl(loc.bucket, head.rstrip("/"))
    return S3Store(loc, paths.store)
