"""The S3 backend of the content store against a real SeaweedFS on loopback (issue 10)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pytest

from helpers import sub_env

pytestmark = [pytest.mark.integration]


def _store(tmp_path, url="s3://ice/unit"):
    from plumbing.s3 import S3Store

    return S3Store(url, tmp_path / "cache")


def test_round_trip_reads_back_verified_bytes_from_a_second_cache(s3_env, tmp_path):
    src = tmp_path / "blob.pt"
    src.write_bytes(b"weights " * 5000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    ref = _store(tmp_path / "a").put(src, sha, ".pt", name="step-1")
    assert ref == {"uri": f"s3://ice/unit/objects/{sha}.pt", "sha256": sha}
    assert f"unit/objects/{sha}.pt" in s3_env.keys("unit/")
    other = _store(tmp_path / "b")  # another worker: nothing cached yet
    got = other.get(ref)
    assert got.read_bytes() == src.read_bytes() and got.parent == tmp_path / "b" / "cache"
    assert other.exists(ref)


def test_a_sha_mismatch_on_read_is_refused(s3_env, tmp_path):
    from plumbing.s3 import StoreError, s3_client

    store = _store(tmp_path)
    ref = store.put_bytes(b"the real bytes", ".pt")
    # someone overwrites the object with other bytes behind the store's back
    key = ref["uri"].removeprefix("s3://ice/")
    s3_client().put_object(Bucket="ice", Key=key, Body=b"tampered bytes", Metadata={"sha256": ref["sha256"]})
    reader = _store(tmp_path / "fresh")
    with pytest.raises(StoreError) as err:
        reader.get(ref)
    msg = str(err.value)
    assert "\n" not in msg and ref["uri"] in msg and "refused" in msg
    assert not list((tmp_path / "fresh" / "cache").glob("*.pt"))  # nothing half-written left behind


def test_a_missing_key_is_one_line_naming_the_uri(s3_env, tmp_path):
    from plumbing.paths import Paths
    from plumbing.store import StoreError, resolve

    ref = {"uri": "s3://ice/unit/objects/" + "0" * 64 + ".pt", "sha256": "0" * 64}
    with pytest.raises(StoreError) as err:
        resolve(Paths(tmp_path), ref)
    assert "\n" not in str(err.value) and ref["uri"] in str(err.value) and "not in the store" in str(err.value)


def test_an_unreachable_endpoint_fails_in_one_line_after_the_outage_bound(s3_env, tmp_path, monkeypatch, capsys):
    """A store call waits out the outage bound (62 s; 2 s here), then says which server to restart;
    the pre-flight check, before any work, fails within 10 s."""
    from helpers import free_port
    from plumbing import outage
    from plumbing.s3 import StoreError, check_url

    monkeypatch.setattr(outage, "BACKOFF", (1, 1))
    monkeypatch.setattr(outage, "OUTAGE_SECONDS", 2)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        _store(tmp_path).get({"uri": "s3://ice/unit/objects/x.pt", "sha256": "0" * 64})
    assert time.monotonic() - t0 < 30
    assert str(err.value) == (
        f"s3://ice/unit/objects/x.pt: S3 at {endpoint} did not answer for 2 s; restart it (ice up, or make up) "
        "and rerun: every finished task is reused"
    )
    assert capsys.readouterr().err.splitlines() == [f"S3 at {endpoint} is not answering; retrying for up to 2 s"]
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="reaching the bucket failed"):
        check_url("s3://ice/elsewhere")
    assert time.monotonic() - t0 < 10


def test_store_calls_ride_through_an_s3_restart(tmp_path, monkeypatch, capsys):
    """The S3 server goes away mid-run and is back 5 s later: the calls made meanwhile wait for it
    (one progress line), and read and write the same bytes as before."""
    import threading

    from helpers import S3Server

    server = S3Server(tmp_path / "s3")
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        data = b"weights " * 20000
        ref = _store(tmp_path / "a").put_bytes(data, ".pt")
        server.stop()
        back = threading.Timer(5.0, server.start)
        back.start()
        t0 = time.monotonic()
        got = _store(tmp_path / "b").get(ref)  # a fresh cache: it must download
        other = _store(tmp_path / "b").put_bytes(b"more " * 1000, ".pt")
        back.join()
        assert got.read_bytes() == data
        assert 3 < time.monotonic() - t0 < 60
        assert _store(tmp_path / "c").get(other).read_bytes() == b"more " * 1000
        lines = capsys.readouterr().err.splitlines()
        assert lines == [f"S3 at {server.endpoint} is not answering; retrying for up to 62 s"], lines
    finally:
        server.stop()


def test_a_cli_with_an_unreachable_store_says_so_in_one_line(s3_env, tmp_path):
    from helpers import free_port, write_params

    write_params(tmp_path, store={"url": "s3://ice/x"})
    env = sub_env(**{**s3_env.env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"})
    r = subprocess.run(
        [sys.executable, "-m", "flows.prepare", "--root", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: s3://ice/x: reaching the bucket")
    assert not (tmp_path / "data").exists()  # nothing created before the check


WRITER = r"""
import sys, time
from pathlib import Path
from plumbing.s3 import S3Store
store, go, n = S3Store("s3://ice/race", Path(sys.argv[1])), Path(sys.argv[2]), int(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
for i in range(n):
    store.put_bytes(f"same bytes {i} ".encode() * 20000, ".pt")
"""


def test_concurrent_writers_of_the_same_sha_leave_one_valid_object(s3_env, tmp_path):
    from plumbing.s3 import S3Store

    go, n = tmp_path / "go", 15
    env = sub_env(**s3_env.env)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / f"w{i}"), str(go), str(n)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    time.sleep(1.0)
    go.touch()
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    keys = s3_env.keys("race/objects/")
    assert len(keys) == n  # one object per distinct content, however many wrote it
    reader = S3Store("s3://ice/race", tmp_path / "reader")
    for i in range(n):
        data = f"same bytes {i} ".encode() * 20000
        sha = hashlib.sha256(data).hexdigest()
        assert reader.get({"uri": f"s3://ice/race/objects/{sha}.pt", "sha256": sha}).read_bytes() == data
