"""PostgreSQL, an MLflow tracking server on it and a Prefect server, started on 127.0.0.1 for as long
as a `with` block lasts: team mode on one machine (`make demo-team`) and the tests marked `services`.

PostgreSQL is Debian's package (`.ci/postgresql` installs it as root); its initdb and pg_ctl run from
a temporary directory and listen on 127.0.0.1 only. PostgreSQL refuses to run as root, so as root
they run as the unprivileged `nobody`. The MLflow server keeps runs and the registry in that
database and proxies the artifacts (`--artifacts-destination`): clients upload and download through
HTTP and never see the server's paths, as with a server on another machine. Every server runs in its
own process group, so stopping it stops its children (uvicorn workers) too; each start says in one
line (`Unavailable`) why a service cannot be had here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POSTGRES_STARTUP_S = 60
MLFLOW_STARTUP_S = 180  # the server imports for 10-30 s on two busy cores, then migrates the database
PREFECT_STARTUP_S = 90  # imports and a new SQLite database; ~15 s alone, more beside a busy test run
SERVICE_USER = "nobody"  # who runs PostgreSQL when the tests run as root


class Unavailable(Exception):
    """A service cannot be provided on this machine; the message says why, in one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<major>/bin (newest)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    raise Unavailable(
        "PostgreSQL: no initdb on PATH or under /usr/lib/postgresql (`make test` installs Debian's "
        "postgresql as root with apt-get)"
    )


@dataclass(frozen=True)
class Postgres:
    uri: str  # postgresql://postgres@127.0.0.1:<port>/mlflow
    data_dir: Path
    seconds_to_start: float


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A new PostgreSQL cluster with an empty database `mlflow`, stopped and removed on exit."""
    bindir = postgres_bindir()
    user: str | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            why = f"PostgreSQL: running as root, and no user {SERVICE_USER!r} to run it as"
            raise Unavailable(why) from None
        user = SERVICE_USER
    started = time.monotonic()
    # not under pytest's base temp: that is private to this user, and the server runs as another
    home = Path(tempfile.mkdtemp(prefix="ratchet-postgres-"))
    data = home / "data"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(home, entry.pw_uid, entry.pw_gid)

    def run(*args: str) -> None:
        done = subprocess.run(
            args, user=user, cwd=home, capture_output=True, text=True, timeout=POSTGRES_STARTUP_S, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    port = free_port()
    pg_ctl = str(bindir / "pg_ctl")
    try:
        # trust on 127.0.0.1 only; no fsync: a test cluster dies with the session anyway
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        # the socket in our own directory: Debian's default /var/run/postgresql needs its own user
        options = f"-h 127.0.0.1 -p {port} -k {home} -F"
        run(pg_ctl, "-D", str(data), "-l", str(home / "log"), "-o", options, "-w", "-t", "60", "start")
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
            yield Postgres(f"postgresql://postgres@127.0.0.1:{port}/mlflow", data, time.monotonic() - started)
        finally:
            subprocess.run(
                [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                user=user,
                cwd=home,
                capture_output=True,
                timeout=POSTGRES_STARTUP_S,
                check=False,
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class MlflowServer:
    url: str  # the tracking URI clients use
    backend_uri: str
    seconds_to_start: float  # PostgreSQL and the server, until the server answered /health


@contextmanager
def mlflow_server(artifacts: Path, log: Path) -> Iterator[MlflowServer]:
    """PostgreSQL, and `mlflow server` on it with proxied artifacts under `artifacts`; both stopped
    on exit, whatever happened in between."""
    started = time.monotonic()
    with postgres() as db:
        port = free_port()
        # background jobs (a runner and its consumers) serve no request a client makes
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db.uri]
                + ["--serve-artifacts", "--artifacts-destination", artifacts.as_uri()]
                + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its uvicorn child goes with it when stopped
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process, log)
            yield MlflowServer(url, db.uri, time.monotonic() - started)
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    """Stop a server started with start_new_session=True, its children (uvicorn workers) with it:
    SIGTERM to the group, SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + MLFLOW_STARTUP_S
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server did not answer in {MLFLOW_STARTUP_S} s:\n{tail}")
        time.sleep(0.5)


@dataclass(frozen=True)
class PrefectServer:
    api_url: str  # http://127.0.0.1:<port>/api
    home: Path  # its PREFECT_HOME (the database)
    log: Path
    process: subprocess.Popen[bytes]

    def output(self, since: int = 0) -> str:
        """The server's log, from byte `since` on."""
        with self.log.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size


def prefect_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.read().strip() == b"true")
    except OSError:
        return False


@contextmanager
def prefect_server(home: Path, ui: bool = False) -> Iterator[PrefectServer]:
    """`prefect server start`, its services (scheduler, triggers) included, on a free port with its
    own PREFECT_HOME under `home` (and its web UI when `ui`); stopped, with its children, on exit.
    Raises Unavailable, saying why in one line, when it does not become healthy."""
    port = free_port()
    # nothing of the test session's Prefect settings (the harness, quieted console handlers) reaches it
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED=str(ui).lower(),
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        # a deployment run refused its one concurrency slot is proposed again this much later
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
    )
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrefectServer(f"http://127.0.0.1:{port}/api", home / "prefect-home", log, process)
    try:
        deadline = time.monotonic() + PREFECT_STARTUP_S
        while not prefect_healthy(server.api_url):
            if process.poll() is not None:
                last = (server.output().strip().splitlines() or ["no output"])[-1]
                raise Unavailable(f"prefect server exited with {process.returncode}: {last}")
            if time.monotonic() > deadline:
                raise Unavailable(f"prefect server not healthy after {PREFECT_STARTUP_S} s (log: {log})")
            time.sleep(0.25)
        yield server
    finally:
        stop_group(process, grace=15)
