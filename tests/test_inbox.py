"""The inbox: the ingest-and-retrain flow versions what upstream drops, once, and never loses it.

Real Prefect (the suite's server), real git, DVC and MLflow; three epochs a cycle.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from ratchet import app, faults, intake
from ratchet.cli import main
from ratchet.config import parse_params
from ratchet.data import versioning
from ratchet.data.catalog import list_batches
from ratchet.data.digits import StreamBatch
from ratchet.errors import InputError
from ratchet.workspace import init_workspace, open_workspace
from test_cli import without_prefect

RunRatchet = Callable[..., subprocess.CompletedProcess[str]]


def make_workspace(root: Path) -> Path:
    init_workspace(root, model_name="inbox-it")
    params = root / "params.yaml"
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 3", params.read_text()))
    versioning.commit(root, ["params.yaml"], "three epochs")
    return root


def drop(source: Path, inbox: Path, name: str, age_s: int) -> Path:
    """Put a batch in the inbox as upstream would, `age_s` seconds old."""
    inbox.mkdir(exist_ok=True)
    path = inbox / name
    shutil.copyfile(source, path)
    then = path.stat().st_mtime - age_s
    os.utime(path, (then, then))
    return path


def image_folder(root: Path, batch: StreamBatch, count: int) -> Path:
    for i, (image, label) in enumerate(zip(batch.images[:count], batch.labels[:count], strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def listing(path: Path) -> list[tuple[str, int, int]]:
    """Every file under `path` with its size and mtime: what "untouched" means."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def data_commits(root: Path) -> list[str]:
    return versioning.git(root, "log", "--format=%s", "--", "data.dvc").splitlines()


def test_the_flow_versions_complete_batches_sets_bad_ones_aside_and_retrains_once(
    tmp_path: Path,
    stream: list[StreamBatch],
    stream_files: dict[str, Path],
    prefect_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given an inbox with two good .npz batches, a corrupt one, a folder without its marker yet and
    # an .npz still being written
    root = make_workspace(tmp_path / "ws")
    inbox = root / "incoming"
    drop(stream_files["digits-0-4"], inbox, "digits-0-4.npz", age_s=300)
    (inbox / "bad.npz").write_bytes(os.urandom(2000))  # random bytes: not an npz at all
    os.utime(inbox / "bad.npz", (time.time() - 200,) * 2)
    drop(stream_files["digits-5-9"], inbox, "digits-5-9.npz", age_s=100)
    folder = image_folder(inbox / "more-digits", stream[2], count=100)
    drop(stream_files["digits-rest"], inbox, "digits-rest.npz.part", age_s=50)
    untouched = listing(folder) + listing(inbox / "digits-rest.npz.part")

    # when the command runs the flow once
    assert main(["inbox", "-w", str(root)]) == 0

    # then the two good batches are versioned, oldest first, each by its own data commit
    out = capsys.readouterr().out
    batches = [b.batch_id for b in list_batches(root / "data")]
    assert len(batches) == 2
    assert data_commits(root)[:2] == [
        f"ingest {batches[1]} from digits-5-9.npz",
        f"ingest {batches[0]} from digits-0-4.npz",
    ]
    assert f"digits-0-4.npz: versioned as batch {batches[0]} (" in out
    assert f"digits-5-9.npz: versioned as batch {batches[1]} (" in out
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["digits-0-4.npz", "digits-5-9.npz"]
    # the corrupt one is set aside with its reason
    reason = (inbox / "rejected" / "bad.npz.reason.txt").read_text()
    assert "bad.npz: not a valid .npz file" in reason and str(inbox) not in reason
    assert (inbox / "rejected" / "bad.npz").is_file()
    assert "bad.npz: set aside: bad.npz: not a valid .npz file" in out
    # the incomplete two are left alone and said to wait
    assert listing(folder) + listing(inbox / "digits-rest.npz.part") == untouched
    assert "more-digits: waiting (incomplete: no _READY in it yet)" in out
    assert "digits-rest.npz.part: waiting (incomplete: still being written)" in out
    # and exactly one cycle learned both
    now = app.status(root)
    assert [v.version for v in now.versions] == ["1"]
    assert now.in_state("learned") == batches
    assert "version 1 promoted" in out

    # when upstream marks the folder complete, the next run versions it and runs a cycle
    (folder / "_READY").touch()
    run = app.inbox(root)
    # (the folder's time is when the marker came: it is now the newest entry)
    assert [(t.name, t.status) for t in run.batches] == [
        ("digits-rest.npz.part", "waiting"),
        ("more-digits", "versioned"),
    ]
    assert "quarantined" not in run.batches[1].detail  # the marker is not part of the batch
    assert (inbox / "done" / "more-digits" / "_READY").is_file()
    assert run.cycle_ran and run.outcome is not None and run.outcome.version == "2"
    assert len(list_batches(root / "data")) == 3

    # when nothing new arrived, a third run versions nothing and runs no cycle
    head = versioning.head(root)
    run = app.inbox(root)
    assert [(t.name, t.status) for t in run.batches] == [("digits-rest.npz.part", "waiting")]
    assert not run.cycle_ran and run.outcome is None
    assert versioning.head(root) == head
    assert [v.version for v in app.status(root).versions] == ["1", "2"]

    # when upstream sends a batch again under the same name, it is not versioned twice: it goes
    # to done/ beside the first, with a note, and no cycle runs
    drop(inbox / "done" / "digits-0-4.npz", inbox, "digits-0-4.npz", age_s=0)
    run = app.inbox(root)
    again = next(t for t in run.batches if t.name == "digits-0-4.npz")
    assert again.status == "already versioned" and not run.cycle_ran
    assert again.moved_to == "done/digits-0-4-2.npz"
    assert "nothing new" in (inbox / "done" / "digits-0-4-2.npz.note.txt").read_text()
    assert versioning.head(root) == head and len(list_batches(root / "data")) == 3


@pytest.mark.fault("kill -9 inbox after versioning, then inbox")
def test_a_batch_versioned_by_a_killed_run_is_moved_by_the_next_not_ingested_twice(
    tmp_path: Path,
    stream_files: dict[str, Path],
    prefect_server: str,
    run_ratchet: RunRatchet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a run killed after versioning the inbox's batch, before moving it out
    root = make_workspace(tmp_path / "ws")
    inbox = root / "incoming"
    drop(stream_files["digits-0-4"], inbox, "digits-0-4.npz", age_s=10)
    monkeypatch.setenv(faults.KILL_AT, "inbox:versioned")
    killed = run_ratchet("inbox", "-w", str(root), api_url=prefect_server)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    monkeypatch.delenv(faults.KILL_AT)
    [batch] = [b.batch_id for b in list_batches(root / "data")]
    assert (inbox / "digits-0-4.npz").is_file() and data_commits(root)[0].startswith(f"ingest {batch} ")

    # when the next run takes the inbox
    run = app.inbox(root)

    # then the batch is moved to done/ with a note, no second batch or data commit is made, and the
    # batch versioned before the kill is trained on
    [taken] = run.batches
    assert taken.status == "already versioned" and taken.moved_to == "done/digits-0-4.npz"
    assert (inbox / "done" / "digits-0-4.npz.note.txt").is_file()
    assert not (inbox / "digits-0-4.npz").exists()
    assert [b.batch_id for b in list_batches(root / "data")] == [batch]
    assert len([s for s in data_commits(root) if s.startswith("ingest ")]) == 1
    assert run.outcome is not None and run.outcome.batches == (batch,)


def test_a_batch_the_workspace_cannot_take_now_stays_in_the_inbox(
    tmp_path: Path, stream_files: dict[str, Path], prefect_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a batch in the inbox and another command holding the workspace
    root = make_workspace(tmp_path / "ws")
    batch = drop(stream_files["digits-0-4"], root / "incoming", "digits-0-4.npz", age_s=10)
    # when the inbox runs meanwhile
    with open_workspace(root).lock():
        code = main(["inbox", "-w", str(root)])
    # then the batch is left where it was, said so, with a non-zero exit; nothing versioned, no cycle
    out = capsys.readouterr().out
    assert code == 1
    assert "digits-0-4.npz: left in the inbox for the next run: workspace" in out and "is busy" in out
    assert "no cycle" in out
    assert batch.is_file() and not (root / "incoming" / "done").exists()
    assert list_batches(root / "data") == []


# ---- without Prefect ----------------------------------------------------------------------------


def test_without_a_prefect_api_the_inbox_runs_its_steps_directly(
    tmp_path: Path, stream_files: dict[str, Path]
) -> None:
    # given a batch in the inbox and no Prefect API anywhere Prefect would look
    root = make_workspace(tmp_path / "ws")
    drop(stream_files["digits-0-4"], root / "incoming", "digits-0-4.npz", age_s=10)
    # when `ratchet inbox` runs
    done, imported = without_prefect("inbox", "-w", str(root), cwd=tmp_path)
    # then the batch is versioned, moved to done/ and trained on, and Prefect was never imported
    assert done.returncode == 0, done.stderr
    assert re.search(r"digits-0-4.npz: versioned as batch \S+ .* -> done/digits-0-4.npz", done.stdout)
    assert "version 1 promoted" in done.stdout
    assert "ratchet.intake" in imported and "prefect" not in imported


def test_scan_lists_batches_oldest_first_and_never_reads_done_rejected_or_hidden(tmp_path: Path) -> None:
    # given an inbox with batches of several ages, a batch still being written, an unmarked folder
    # and what earlier runs left
    inbox = tmp_path / "incoming"
    now = time.time()
    for name, age_s in [("b.npz", 30), ("a.npz", 30), ("old.npz", 90), ("c.npz.tmp", 10), (".x.npz", 5)]:
        os.utime(drop(Path(__file__), inbox, name, 0), (now - age_s, now - age_s))
    (inbox / "unmarked" / "cat").mkdir(parents=True)
    (inbox / "marked" / "cat").mkdir(parents=True)
    (inbox / "marked" / "_READY").touch()
    for folder in ("done", "rejected"):
        (inbox / folder / "z.npz").mkdir(parents=True)
    # when scanned
    found = [(a.path.name, a.waiting_for) for a in intake.scan(inbox, "_READY")]
    # then oldest first (the same age: by name), hidden names and done/, rejected/ left out
    assert found[:4] == [("old.npz", ""), ("a.npz", ""), ("b.npz", ""), ("c.npz.tmp", "still being written")]
    assert sorted(found[4:]) == [("marked", ""), ("unmarked", "no _READY in it yet")]
    assert intake.scan(tmp_path / "nowhere", "_READY") == []


def test_an_inbox_inside_data_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace(tmp_path / "ws")
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  path: incoming", "  path: data/incoming"))
    assert main(["inbox", "-w", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ratchet: error: params: inbox.path 'data/incoming' is inside data/, which DVC versions"]


def test_a_corrupted_workspace_is_not_the_batchs_fault(tmp_path: Path, stream_files: dict[str, Path]) -> None:
    # given a workspace whose one batch lost its manifest, and a good batch in the inbox
    root = make_workspace(tmp_path / "ws")
    done = app.ingest(root, stream_files["digits-0-4"])
    assert done.report.batch_dir is not None
    (done.report.batch_dir / "manifest.json").unlink()
    batch = drop(stream_files["digits-5-9"], root / "incoming", "digits-5-9.npz", age_s=10)
    # when the inbox takes it, the error is the workspace's: the batch is not set aside
    with pytest.raises(InputError, match="corrupted workspace"):
        intake.take(open_workspace(root), batch)
    assert batch.is_file() and not (root / "incoming" / "rejected").exists()


def test_the_ready_marker_is_a_file_name() -> None:
    with pytest.raises(InputError, match="inbox.ready_marker must be a file name"):
        parse_params({"inbox": {"ready_marker": "done/_READY"}})
