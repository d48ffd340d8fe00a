"""The warm process: `ratchet retrain` forks from it and keeps the command's output, exit status
and Ctrl-C; a warm process that is not the program asked for is not used; it stops when asked or
when idle, and removes its socket.

The real commands in child processes, on a digits workspace; one warm process for the module.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratchet import state, warm
from ratchet.data import versioning
from ratchet.workspace import init_workspace


def ratchet(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratchet.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def forks(root: Path) -> int:
    """How many commands the warm process forked, by its log."""
    return (root / state.STATE_DIR / warm.LOG).read_text().count("forked for: ratchet retrain")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, stream_files: dict[str, Path]) -> Iterator[Path]:
    ws, _ = init_workspace(tmp_path_factory.mktemp("warm") / "ws", model_name="warm-it")
    ws.params_path.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 3", ws.params_path.read_text()))
    versioning.commit(ws.root, ["params.yaml"], "three epochs")
    started = ratchet("warm", "-w", str(ws.root), cwd=ws.root)
    assert started.returncode == 0, started.stderr
    assert re.match(r"warm process \d+: later `ratchet retrain`", started.stdout), started.stdout
    yield ws.root
    ratchet("warm", "--stop", "-w", str(ws.root), cwd=ws.root)


def test_retrain_runs_in_the_warm_process_with_the_commands_output_and_exit_status(
    ws: Path, stream_files: dict[str, Path]
) -> None:
    assert ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(ws), cwd=ws).returncode == 0
    # a cycle: forked from the warm process, said on this command's stdout
    done = ratchet("retrain", "-w", str(ws), cwd=ws)
    assert done.returncode == 0, done.stderr
    assert re.search(r"version 1 (promoted|rejected)", done.stdout) and re.search(
        r"cycle \w+ took", done.stdout
    )
    assert forks(ws) == 1
    # a failure: one line on this command's stderr, and its exit status
    bad = ratchet("retrain", "--strategy", "nonsense", "-w", str(ws), cwd=ws)
    assert bad.returncode == 2 and bad.stderr.startswith("ratchet: error: ") and "nonsense" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert forks(ws) == 2
    # a relative path is the command's: the child works in the command's directory
    idle = ratchet("retrain", "-w", ws.name, cwd=ws.parent)
    assert idle.returncode == 0 and "nothing to train on" in idle.stdout, idle.stderr
    assert forks(ws) == 3


def test_ctrl_c_reaches_the_forked_command_and_the_workspace_is_left_whole(
    ws: Path, stream_files: dict[str, Path]
) -> None:
    assert ratchet("ingest", str(stream_files["digits-5-9"]), "-w", str(ws), cwd=ws).returncode == 0
    # given a retrain in the warm process, training
    command = subprocess.Popen(
        [sys.executable, "-m", "ratchet.cli", "retrain", "-w", str(ws)],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert command.stdout is not None
    for line in command.stdout:
        if "epoch" in line:
            break
    # when Ctrl-C reaches the command (the terminal sends it to the foreground process)
    command.send_signal(signal.SIGINT)
    _, err = command.communicate(timeout=120)
    # then the forked command stops as the command itself would, and says so
    assert command.returncode == 130, err
    assert "ratchet: interrupted" in err
    # and the next retrain trains the same batch (the lock was released, nothing half-recorded)
    again = ratchet("retrain", "-w", str(ws), cwd=ws)
    assert again.returncode == 0, again.stderr
    assert re.search(r"version 2 \w+: batches b002-", again.stdout), again.stdout


def test_a_warm_process_of_another_python_is_not_used(ws: Path, tmp_path: Path) -> None:
    # given a command whose imports come from elsewhere (another sys.path)
    env = dict(os.environ) | {"PYTHONPATH": str(tmp_path)}
    before = forks(ws)
    done = ratchet("retrain", "-w", str(ws), cwd=ws, env=env)
    # then it runs in its own process, and says why in one line
    assert done.returncode == 0, done.stderr
    assert "the warm process was not used (it runs another Python" in done.stderr
    assert "nothing to train on" in done.stdout
    assert forks(ws) == before


def test_a_warm_process_stops_when_asked_or_idle(tmp_path: Path) -> None:
    root, _ = init_workspace(tmp_path / "ws", model_name="warm-stop")
    socket_file = root.root / state.STATE_DIR / warm.SOCKET
    # asked: --stop ends the process and removes its socket
    assert ratchet("warm", "-w", str(root.root), cwd=tmp_path).returncode == 0
    said = ratchet("warm", "--status", "-w", str(root.root), cwd=tmp_path).stdout
    pid = int(said.split()[2])
    assert alive(pid) and socket_file.exists()
    assert (
        ratchet("warm", "--stop", "-w", str(root.root), cwd=tmp_path).stdout
        == f"warm process {pid} stopped\n"
    )
    assert not socket_file.exists()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    assert "no warm process" in ratchet("warm", "--status", "-w", str(root.root), cwd=tmp_path).stdout
    # idle: a second without a command, and it is gone
    assert ratchet("warm", "--idle", "1", "-w", str(root.root), cwd=tmp_path).returncode == 0
    deadline = time.monotonic() + 30
    while socket_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not socket_file.exists()
    assert "idle for 1s: stopping" in (root.root / state.STATE_DIR / warm.LOG).read_text()
