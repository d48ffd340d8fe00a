"""The real `prefect server start`, its scheduler included, with the pinned dependencies.

The session's `prefect_server` fixture (prefect_test_harness) runs no scheduler loop, yet serving the
flow on a schedule (`python -m ratchet.flows.retrain WORKSPACE`) depends on it: the scheduler is what
turns the deployment's interval into flow runs. The session's `real_server` (tests/conftest.py) is the
server a user starts; this registers the flow's hourly deployment on it the way `retrain.serve` does,
and waits for the scheduler to create its runs.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from services import PrefectServer, prefect_healthy

SCHEDULE_TIMEOUT_S = 20.0
# a service failure is logged with its traceback, whatever the service; the log is otherwise quiet
SERVICE_ERROR = re.compile(r"\| ERROR\b|\| CRITICAL\b|Traceback \(most recent call last\)")


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


@pytest.mark.services
def test_scheduler_creates_the_served_flows_runs_without_error(real_server: PrefectServer) -> None:
    since = real_server.log_size()  # the server is the session's: only what this test caused
    deployment_id = register_hourly_deployment(real_server.api_url)

    deadline = time.monotonic() + SCHEDULE_TIMEOUT_S
    while scheduled_runs(real_server.api_url, deployment_id) == 0:
        if SERVICE_ERROR.search(real_server.output(since)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(2)  # a loop or two more: a service failing after the first runs shows in the log too

    output = real_server.output(since)
    assert prefect_healthy(real_server.api_url), output
    assert not SERVICE_ERROR.search(output), f"a server service failed:\n{output}"
    assert scheduled_runs(real_server.api_url, deployment_id) > 0, (
        f"no flow run scheduled {SCHEDULE_TIMEOUT_S:.0f} s after the deployment was created:\n{output}"
    )
