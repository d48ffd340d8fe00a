"""Shared fixtures: a real Prefect server for the session (the test harness, and the real
`prefect server start` with its services), the digits stream as .npz batches; and
the fault suite's tally (tests marked `fault`): which faults were tried at how many points and how
many held, printed after the run as the table the README's reliability section quotes. The tally
lives here, not under tests/faults/, because with workers (`-n`) only this conftest runs in the
process that prints the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ratchet.data.digits import StreamBatch, digits_stream
from services import MlflowServer, PrefectServer, S3Server, SshServer, Unavailable
from services import mlflow_server as start_mlflow_server
from services import prefect_server as start_prefect_server
from services import s3_server as start_s3_server
from services import ssh_server as start_ssh_server

REPO = Path(__file__).resolve().parents[1]

_TALLY: dict[str, list[bool]] = defaultdict(list)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    fault = item.get_closest_marker("fault")
    if fault is not None:
        # carried by the report, so the tally also adds up where tests run in worker processes
        report.user_properties.append(("fault", str(fault.args[0])))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    fault = dict(report.user_properties).get("fault")
    if fault is not None and report.when == "call":
        _TALLY[str(fault)].append(report.passed)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLY:
        return
    width = max(len(f) for f in _TALLY)
    terminalreporter.section("fault suite")
    terminalreporter.write_line(f"{'fault':<{width}}  points tried  held")
    for fault, results in _TALLY.items():
        terminalreporter.write_line(f"{fault:<{width}}  {len(results):>12}  {sum(results):>4}")


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
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """The real `prefect server start` a user runs, scheduler and triggers included, for the session's
    tests that need its services (the harness of `prefect_server` runs none); one for all of them,
    stopped when the session ends. Skips, saying why in one line, where it cannot start."""
    home = tmp_path_factory.mktemp("prefect-server")
    try:
        with start_prefect_server(home) as server:
            yield server
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on a real PostgreSQL, with proxied artifacts, for the session's tests
    marked `services`; both stop when the session ends, failed tests or not. Skips, saying why in one
    line, where PostgreSQL cannot be provided (`make test` installs it as root on Debian)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    try:
        with start_mlflow_server(home / "artifacts", home / "server.log") as server:
            yield server
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with an empty bucket, for the session's DVC remotes over S3;
    stopped when the session ends. Skips, saying why in one line, where it cannot start."""
    home = tmp_path_factory.mktemp("s3-server")
    try:
        with start_s3_server(home / "server.log") as server:
            yield server
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An SSH/SFTP server on 127.0.0.1 with a generated key (host, port, user, key file, root
    directory), for the session's DVC remotes over SSH; stopped when the session ends. Skips, saying
    why in one line, where it cannot start."""
    home = tmp_path_factory.mktemp("ssh-server")
    try:
        with start_ssh_server(home, home / "server.log") as server:
            yield server
    except Unavailable as exc:
        pytest.skip(str(exc))


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
