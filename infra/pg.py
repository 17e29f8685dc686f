"""A local PostgreSQL for the team stack: Debian's package, its own data directory, 127.0.0.1 only.

    python infra/pg.py up --dir .stack/pg --port 5433 --env .stack/pg.env
    python infra/pg.py check                  # exit 0 where PostgreSQL can run here, else one line

`up` initialises <dir>/data on first use (a role `ice` with a random password, made once and
kept in the --env file, mode 600, never in git or on a command line), starts `postgres` in
its own session listening on 127.0.0.1:<port> only (no Unix socket), writes its PID to
<dir>/postgres.pid (stop it by that PID: SIGINT is PostgreSQL's fast shutdown), creates the
databases `mlflow` and `prefect`, and returns once both accept connections. The env file
holds the URLs the servers read: MLFLOW_BACKEND_STORE_URI for `mlflow server`, and
PREFECT_API_DATABASE_CONNECTION_URL for `prefect server start`.

PostgreSQL refuses to run as root; run as root, the server runs as the package's `postgres`
user, which owns <dir>/data and must be able to reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATABASES = ("mlflow", "prefect")
ROLE = "ice"
INSTALL = "apt-get install postgresql"


class PgError(RuntimeError):
    """PostgreSQL cannot be set up or started here; the message is one line for the user."""


def bindir() -> Path:
    """The directory of `initdb` and `postgres`: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if debian:
        return Path(debian[-1]).parent
    raise PgError(f"PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql): {INSTALL}")


def owner() -> pwd.struct_passwd | None:
    """The user the server runs as: None for the current one; the `postgres` user when run as root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PgError(f"run as root, PostgreSQL needs the `postgres` user that its package makes: {INSTALL}") from None


def _as_owner(user: pwd.struct_passwd | None) -> dict:
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can search every directory above ``path`` (the server must open its data there)."""
    here = path.resolve()
    for parent in [*reversed(here.parents), here]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def identity(env_file: Path, port: int) -> dict[str, str]:
    """The password (random, made on first use, in ``env_file``) and the URLs built on it."""
    password = None
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key == "ICE_PG_PASSWORD":
                password = value
    if password is None:
        password = secrets.token_hex(20)
    base = f"{ROLE}:{password}@127.0.0.1:{port}"
    env = {
        "ICE_PG_PASSWORD": password,
        "ICE_PG_PORT": str(port),
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://{base}/mlflow",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{base}/prefect",
    }
    env_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = env_file.with_name(env_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"export {k}={v}\n" for k, v in env.items())
    os.replace(tmp, env_file)
    return env


def init(data: Path, password: str, user: pwd.struct_passwd | None) -> None:
    """`initdb` into ``data`` once: role ``ice`` with ``password``, password auth on TCP only."""
    if (data / "PG_VERSION").exists():
        return
    data.parent.mkdir(parents=True, exist_ok=True)
    if user is not None and not _reachable(data.parent, user):
        raise PgError(
            f"the postgres user cannot reach {data.parent} (a directory above it is not searchable): "
            "put the stack directory (ICE_STACK_DIR) elsewhere"
        )
    if data.exists():
        shutil.rmtree(data)  # an initdb that died half-way: start over
    data.mkdir(mode=0o700)
    pwfile = data.parent / ".pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    try:
        if user is not None:
            os.chown(data, user.pw_uid, user.pw_gid)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        run = subprocess.run(
            [
                str(bindir() / "initdb"), "-D", str(data), "-U", ROLE, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=reject", "-E", "UTF8", "--locale=C", "--no-instructions",
            ],
            capture_output=True, text=True, **_as_owner(user),
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if run.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PgError(f"initdb failed: {last}")


async def _connect(port: int, password: str, database: str):  # type: ignore[no-untyped-def]
    import asyncpg

    return await asyncpg.connect(
        host="127.0.0.1", port=port, user=ROLE, password=password, database=database, timeout=2
    )


async def _databases(port: int, password: str, timeout: float) -> None:
    """Wait for the server to accept a connection, then make every database it lacks."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await _connect(port, password, "postgres")
            break
        except Exception as err:  # not listening yet, or still starting up
            if time.monotonic() > deadline:
                raise PgError(
                    f"PostgreSQL on 127.0.0.1:{port} did not accept a connection within {timeout:.0f} s: {err}"
                ) from err
            await asyncio.sleep(0.2)
    try:
        have = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in have:
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def start(home: Path, port: int, env_file: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Initialise (once) and start the server in its own session; returns once its databases exist."""
    user = owner()
    env = identity(env_file, port)
    data = home / "data"
    init(data, env["ICE_PG_PASSWORD"], user)
    log = open(home / "postgres.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [
            str(bindir() / "postgres"), "-D", str(data), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=200",  # two servers with connection pools, and their workers
        ],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **_as_owner(user),
    )  # fmt: skip
    (home / "postgres.pid").write_text(f"{proc.pid}\n")
    try:
        asyncio.run(_databases(port, env["ICE_PG_PASSWORD"], timeout))
    except BaseException:
        proc.send_signal(2)
        proc.wait(timeout=30)
        if proc.returncode not in (0, None):
            tail = (home / "postgres.log").read_text(errors="replace").strip().splitlines()[-1:]
            if tail:
                raise PgError(f"postgres exited at start: {tail[0]}") from None
        raise
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(prog="infra/pg.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["up", "check"])
    ap.add_argument("--dir", default=".stack/pg", help="data directory, log and PID file")
    ap.add_argument("--port", type=int, default=5433)
    ap.add_argument("--env", default=".stack/pg.env", help="password and URLs (made on first use, mode 600)")
    a = ap.parse_args()
    t0 = time.monotonic()
    try:
        if a.action == "check":
            bindir()
            owner()
            return
        home = Path(a.dir)
        home.mkdir(parents=True, exist_ok=True)
        proc = start(home, a.port, Path(a.env))
        print(
            f"postgres started (pid {proc.pid}, log {home}/postgres.log), databases "
            f"{', '.join(DATABASES)} ready on 127.0.0.1:{a.port} in {time.monotonic() - t0:.1f}s"
        )
    except PgError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
