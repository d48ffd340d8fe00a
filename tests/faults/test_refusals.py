"""Failures a user or the machine causes: each says its cause in one line and keeps nothing half-done."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ratchet import app, state
from ratchet.data import journal, versioning

RunRatchet = Callable[..., subprocess.CompletedProcess[str]]  # the `run_ratchet` fixture


def data_as_committed(root: Path) -> None:
    """data/ is what data.dvc at HEAD records, and git has nothing staged or changed."""
    assert versioning.data_changes(root) == []
    assert versioning.git(root, "status", "--porcelain") == ""
    assert journal.pending(root) is None


@pytest.mark.fault("git commit refused by a hook")
def test_a_refused_commit_rolls_the_batch_back(
    tmp_path: Path, stream_files: dict[str, Path], run_ratchet: RunRatchet
) -> None:
    root = tmp_path / "ws"
    app.init(root, model_name="refused")
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'commits are frozen today' >&2\nexit 1\n")
    hook.chmod(0o755)
    done = run_ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(root))
    assert done.returncode == 1
    error = done.stderr.strip()
    assert "\n" not in error and "Traceback" not in done.stdout + done.stderr
    assert "not ingested, nothing kept" in error and "commits are frozen today" in error
    assert state.LOG in error and "commits are frozen today" in (root / state.LOG).read_text()
    data_as_committed(root)
    assert not (root / "data.dvc").exists()  # the first batch: data.dvc never existed
    # once the hook lets it through, the same ingest records the batch
    hook.unlink()
    assert run_ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(root)).returncode == 0
    data_as_committed(root)
    assert len(list((root / "data" / "batches").iterdir())) == 1


@pytest.mark.fault("DVC remote gone")
def test_an_unreachable_remote_keeps_the_batch_committed_and_pushes_it_later(
    tmp_path: Path, stream_files: dict[str, Path], run_ratchet: RunRatchet
) -> None:
    root = tmp_path / "ws"
    app.init(root, model_name="no-remote")
    remote = root / ".dvc-storage"
    remote.rename(tmp_path / "storage-away")
    remote.write_text("a file where the remote directory was")
    done = run_ratchet("ingest", str(stream_files["digits-0-4"]), "-w", str(root))
    assert done.returncode == 1
    error = done.stderr.strip()
    assert "\n" not in error and "Having any troubles" not in error
    assert "is committed but not backed up" in error and "Not a directory" in error
    intent = journal.pending(root)
    assert intent is not None and intent.committed
    assert "committed, not pushed" in run_ratchet("status", "-w", str(root)).stdout
    # the remote comes back: the next ingest pushes the batch first
    remote.unlink()
    (tmp_path / "storage-away").rename(remote)
    again = run_ratchet("ingest", str(stream_files["digits-5-9"]), "-w", str(root))
    assert again.returncode == 0, again.stderr
    assert f"finished the interrupted ingest of {stream_files['digits-0-4']}" in again.stdout
    data_as_committed(root)
    assert versioning.dvc(root, "status", "--cloud", "--json").strip() in ("", "{}")


@pytest.mark.fault("disk full")
def test_a_full_disk_is_named_as_such() -> None:
    # a fault we cannot cause for real on a shared CI disk: the output DVC gives when it happens
    output = (
        "ERROR: unexpected error - [Errno 28] No space left on device: '.dvc/cache/files/md5/ab'\n\n"
        "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n"
    )
    assert versioning.failure_cause(output) == "disk full (No space left on device)"
    assert versioning.failure_cause("ERROR: failed to push\nHaving any troubles? Hit us up") == (
        "ERROR: failed to push"
    )


@pytest.fixture()
def trained(tmp_path: Path, stream_files: dict[str, Path], prefect_server: str) -> Path:
    root = tmp_path / "ws"
    app.init(root, model_name="lost-it")
    app.ingest(root, stream_files["digits-0-4"])
    assert app.retrain(root) is not None
    app.ingest(root, stream_files["digits-5-9"])
    return root


@pytest.mark.fault("error inside retrain")
def test_an_error_inside_retrain_is_one_line_and_the_traceback_goes_to_the_log(
    trained: Path, prefect_server: str, run_ratchet: RunRatchet
) -> None:
    (trained / "data" / "batches" / "stray.txt").write_text("not part of any batch")
    done = run_ratchet("retrain", "-w", str(trained), api_url=prefect_server)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    errors = [ln for ln in (done.stdout + done.stderr).splitlines() if "ERROR" in ln or "error" in ln]
    assert errors == [done.stderr.strip().splitlines()[-1]]  # said once, by ratchet
    assert errors[0].startswith("ratchet: error: data/ is not the version data.dvc records")
    assert "Traceback" in (trained / state.LOG).read_text()


@pytest.mark.fault("registry lost")
@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_registry_stops_the_cycle(
    trained: Path, how: str, prefect_server: str, run_ratchet: RunRatchet
) -> None:
    db = trained / "mlruns" / "mlflow.db"
    if how == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"")
    # a new process, as a user's next command is (this one's MLflow keeps the old file open)
    done = run_ratchet("retrain", "-w", str(trained), api_url=prefect_server)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("ratchet: error: registry lost: 1 cycle(s) recorded in git, 0 versions of lost-it")
    )
    # nothing registered as a second "version 1"
    assert "version 1" not in run_ratchet("status", "-w", str(trained)).stdout
