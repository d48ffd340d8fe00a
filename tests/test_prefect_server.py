"""The real `prefect server start`, its scheduler included, with the pinned dependencies.

The session's `prefect_server` fixture (prefect_test_harness) runs no scheduler loop, yet serving the
flow on a schedule (`python -m ratchet.flows.retrain WORKSPACE`) depends on it: the scheduler is what
turns the deployment's interval into flow runs. This starts the server a user starts, registers the
flow's hourly deployment the way `retrain.serve` does, and waits for the scheduler to create its runs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services import stop_group

STARTUP_TIMEOUT_S = 45.0
SCHEDULE_TIMEOUT_S = 20.0
# a service failure is logged with its traceback, whatever the service; the log is otherwise quiet
SERVICE_ERROR = re.compile(r"\| ERROR\b|\| CRITICAL\b|Traceback \(most recent call last\)")


@dataclass
class Server:
    api_url: str
    log: Path
    process: subprocess.Popen[bytes]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).json() is True
    except (httpx.HTTPError, ValueError):
        return False


@pytest.fixture()
def real_server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    # nothing of this session's Prefect settings (the harness, quieted console handlers) reaches it
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}/api", log, process)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not healthy(server.api_url):
            if process.poll() is not None:
                pytest.fail(f"prefect server exited with {process.returncode}:\n{server.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n{server.output()}")
            time.sleep(0.25)
        yield server
    finally:
        stop_group(process, grace=15)


def register_hourly_deployment(api_url: str) -> str:
    """The deployment `python -m ratchet.flows.retrain` serves, registered without starting a runner."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from ratchet.flows.retrain import retrain

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        deployment = retrain.to_deployment(
            name="ratchet-retrain-hourly", interval=3600, parameters={"workspace": "."}
        )
        return str(deployment.apply())


def scheduled_runs(api_url: str, deployment_id: str) -> int:
    response = httpx.post(
        f"{api_url}/flow_runs/count",
        json={"deployments": {"id": {"any_": [deployment_id]}}},
        timeout=5,
    )
    response.raise_for_status()
    return int(response.json())


def test_scheduler_creates_the_served_flows_runs_without_error(real_server: Server) -> None:
    deployment_id = register_hourly_deployment(real_server.api_url)

    deadline = time.monotonic() + SCHEDULE_TIMEOUT_S
    while scheduled_runs(real_server.api_url, deployment_id) == 0:
        if SERVICE_ERROR.search(real_server.output()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(2)  # a loop or two more: a service failing after the first runs shows in the log too

    output = real_server.output()
    assert healthy(real_server.api_url), output
    assert not SERVICE_ERROR.search(output), f"a server service failed:\n{output}"
    assert scheduled_runs(real_server.api_url, deployment_id) > 0, (
        f"no flow run scheduled {SCHEDULE_TIMEOUT_S:.0f} s after the deployment was created:\n{output}"
    )
