"""Shared fixtures: a real Prefect server for the session, the digits stream as .npz batches."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ratchet.data.digits import StreamBatch, digits_stream

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # Prefect's console log handlers keep the sys.stderr of the moment they are (re)built, which in a
    # test run can be a capture stream pytest closes later; records still reach the Prefect server
    for handler in ("CONSOLE", "DEBUG"):
        os.environ[f"PREFECT_LOGGING_HANDLERS_{handler}_LEVEL"] = "CRITICAL"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real temporary Prefect server and database, shared by every flow run in the session.

    Yields its API URL so child processes (the real `ratchet` command) can use it too.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def stream() -> list[StreamBatch]:
    return digits_stream()


@pytest.fixture(scope="session")
def stream_files(stream: list[StreamBatch], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("incoming")
    return {b.name: b.save_npz(directory) for b in stream}


RunRatchet = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture()
def run_ratchet() -> RunRatchet:
    """The real `ratchet` command in a child process: exit codes and stderr as a user sees them."""

    def run(
        *args: str, cwd: Path | None = None, api_url: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if api_url:
            env["PREFECT_API_URL"] = api_url
        return subprocess.run(
            [sys.executable, "-m", "ratchet.cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run
