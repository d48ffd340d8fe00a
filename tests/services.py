"""Servers behind DVC remotes for the tests marked `services`, beside those `ratchet.services` starts
(PostgreSQL, the MLflow server, the Prefect server), which are re-exported here.

They need no root and nothing outside the pinned set: moto's S3 server (`python -m moto.server`, any
key pair accepted, one bucket made) and tests/sftp_server.py, an SSH server on asyncssh with the SFTP
subsystem, which is all DVC's ssh remote (sshfs) needs to push and pull; its host key and the
client's key are generated per session.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ratchet.services import (
    MlflowServer,
    PrefectServer,
    Unavailable,
    free_port,
    mlflow_server,
    prefect_healthy,
    prefect_server,
    stop_group,
)

__all__ = [
    "MlflowServer",
    "PrefectServer",
    "S3Server",
    "SshServer",
    "Unavailable",
    "free_port",
    "mlflow_server",
    "prefect_healthy",
    "prefect_server",
    "s3_server",
    "ssh_server",
    "stop_group",
]

SERVER_STARTUP_S = 60  # moto imports for a few seconds on two busy cores; the SFTP server for one


@dataclass(frozen=True)
class S3Server:
    """moto's S3 server on 127.0.0.1, with one empty bucket; any key pair is accepted."""

    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str

    def env(self) -> dict[str, str]:
        """The variables botocore (so s3fs and DVC's s3 remote) reads the credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def keys(self) -> list[str]:
        """Every object key in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", ())]

    def client(self) -> Any:
        """A boto3 S3 client of the server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@contextmanager
def s3_server(log: Path, bucket: str = "ratchet-dvc") -> Iterator[S3Server]:
    """`python -m moto.server` on a free port of 127.0.0.1 (its own process group), stopped on exit."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        missing = exc.name or "moto"
        raise Unavailable(f"S3: {missing} is not installed (the dev extra pins moto[server])") from None
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        server = S3Server(f"http://127.0.0.1:{port}", bucket, "ratchet-test", "ratchet-test", "us-east-1")
        wait_listening(port, process, log, "moto server")
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        stop_group(process)


@dataclass(frozen=True)
class SshServer:
    """An SSH server with the SFTP subsystem (tests/sftp_server.py) on 127.0.0.1: public-key logins
    with `key_file` only; it serves this machine's paths, `root` a fresh directory among them."""

    host: str
    port: int
    user: str
    key_file: Path
    root: Path

    def url(self, path: str) -> str:
        """The ssh:// URL of `path` under root, as DVC's ssh remote takes it."""
        return f"ssh://{self.user}@{self.host}:{self.port}{self.root}/{path}"


@contextmanager
def ssh_server(home: Path, log: Path) -> Iterator[SshServer]:
    """A generated host key and client key in `home`, and the server on a free port, stopped on exit."""
    import getpass

    try:
        import asyncssh
    except ImportError:
        raise Unavailable("SSH: asyncssh is not installed (the dev extra pins it)") from None
    host_key, client_key = home / "host_key", home / "client_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_key))
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(client_key))
    key.write_public_key(str(home / "authorized_keys"))
    root = home / "root"
    root.mkdir()
    port = free_port()
    script = Path(__file__).with_name("sftp_server.py")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(script), str(port), str(host_key), str(home / "authorized_keys")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(port, process, log, "SFTP server")
        yield SshServer("127.0.0.1", port, getpass.getuser(), client_key, root)
    finally:
        stop_group(process)


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Until something accepts connections on 127.0.0.1:port; Unavailable if `process` exits or
    SERVER_STARTUP_S pass first."""
    deadline = time.monotonic() + SERVER_STARTUP_S
    while True:
        if process.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"{what} exited with {process.returncode}: {last[0]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} did not listen on 127.0.0.1:{port} in {SERVER_STARTUP_S} s")
        time.sleep(0.2)
