"""A push that fails keeps what was committed and is retried by the next command."""

from __future__ import annotations

from pathlib import Path

from ratchet import state
from ratchet.data import versioning


def test_a_failed_push_is_said_once_and_retried_by_the_next_command(tmp_path: Path) -> None:
    # given a workspace whose DVC remote cannot be written (its path runs through a file)
    root, remote = tmp_path / "ws", tmp_path / "storage"
    root.mkdir()
    versioning.ensure_repos(root, remote)
    (root / "parent").mkdir()
    (root / "parent" / "weights.pt").write_bytes(b"weights")
    versioning.dvc(root, "add", "parent")
    (tmp_path / "blocked").write_text("a file, not a directory")
    versioning.dvc(root, "remote", "modify", "local", "url", str(tmp_path / "blocked" / "storage"))

    # when the cycle pushes, the failure is one line and a note stays for the next command
    said = versioning.push(root, "cycle abc")
    assert said is not None and said.startswith("cycle abc is committed but not backed up (")
    assert "\n" not in said
    assert (root / state.UNPUSHED).read_text().strip() == "cycle abc"
    # and a next command that still cannot push says so again and keeps the note
    again = versioning.push_unpushed(root)
    assert again is not None and "not backed up" in again and (root / state.UNPUSHED).exists()

    # when the remote is fixed, the next command pushes it and the note goes
    versioning.dvc(root, "remote", "modify", "local", "url", str(remote))
    assert (
        versioning.push_unpushed(root)
        == "pushed cycle abc to the DVC remote (an earlier push had not finished)"
    )
    assert not (root / state.UNPUSHED).exists()
    assert "in sync" in versioning.dvc(root, "status", "--cloud")
    # and with nothing waiting, nothing is said
    assert versioning.push_unpushed(root) is None


def test_dvc_in_this_process_ignores_the_stream_dvc_bound_its_log_to(tmp_path: Path) -> None:
    # given the handler importing DVC set up on a stream that is closed by now (a test's capture,
    # a reader gone), as DVC binds sys.stdout at import
    import io
    import logging

    from dvc.logger import LoggerHandler

    root = tmp_path / "ws"
    root.mkdir()
    versioning.ensure_repos(root, tmp_path / "storage")
    (root / "parent").mkdir()
    (root / "parent" / "weights.pt").write_bytes(b"weights")
    closed = io.StringIO()
    closed.close()
    log = logging.getLogger("dvc")
    saved = log.handlers
    log.handlers = [LoggerHandler(closed)]  # DVC's: it fails the command when it cannot write
    try:
        # when a DVC command that logs ("To track the changes with git") runs in this process
        versioning.dvc_add(root, root / "parent")
        # then it does its work, its lines kept away from that stream, which is DVC's again after
        assert (root / "parent.dvc").is_file()
        assert [h.stream for h in log.handlers if isinstance(h, logging.StreamHandler)] == [closed]
    finally:
        log.handlers = saved
