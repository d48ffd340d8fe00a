"""git + DVC alone reproduce any cycle: its parent is a DVC-tracked input named by hash in the cycle's
commit, and everything a cycle produced is on the DVC remote when it ends; `ratchet replay` rebuilds
the whole chain that way.

One workspace, four cycles of the digits stream (three epochs: reproduction does not depend on how
long training runs); each case puts the workspace back as it found it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ratchet import app
from ratchet.data import versioning
from ratchet.registry import open_registry
from ratchet.stages.inputs import NO_PARENT, Cycle, content_hash
from ratchet.workspace import init_workspace, open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")

METRICS = "artifacts/eval/metrics.json"
WEIGHTS = "artifacts/candidate/checkpoint/weights.pt"
RunRatchet = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Recorded:
    commit: str  # the cycle's git commit, as its version records it
    metrics: str  # metrics.json as committed
    weights: str  # sha256 of the candidate's weights


@dataclass(frozen=True)
class Workspace:
    root: Path
    cycles: list[Recorded]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dvc_run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """DVC as a person runs it, with ratchet's venv active; output kept for the assertions."""
    venv = {"PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=os.environ | venv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def check_out(root: Path, commit: str) -> None:
    versioning.git(root, "checkout", "-q", commit)
    versioning.dvc(root, "checkout")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, stream_files: dict[str, Path]) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("repro") / "ws"
    init_workspace(root, model_name="repro-it")
    params = root / "params.yaml"
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 3", params.read_text()))
    versioning.commit(root, ["params.yaml"], "three epochs")
    cycles = []
    for name in ("digits-0-4", "digits-5-9", "digits-more", "digits-rest"):
        app.ingest(root, stream_files[name])
        outcome = app.retrain(root)
        assert outcome is not None
        version = next(
            v for v in open_registry(open_workspace(root)).versions() if v.version == outcome.version
        )
        cycles.append(
            Recorded(version.tag("git_commit"), (root / METRICS).read_text(), sha256(root / WEIGHTS))
        )
    yield Workspace(root, cycles)


def test_a_cycle_commits_its_parent_by_hash_and_pushes_everything(ws: Workspace) -> None:
    first = ws.cycles[0]
    # each cycle's commit holds parent.dvc; the second names the first version's checkpoint by hash
    assert "parent.dvc" in versioning.git(ws.root, "show", "--name-only", "--format=", first.commit).split()
    assert Cycle.load(ws.root / "cycle.json").parent_hash == content_hash(ws.root / "parent")
    assert versioning.git(ws.root, "status", "--porcelain") == ""
    # and nothing is left for the remote
    assert not (ws.root / ".ratchet" / "unpushed.txt").exists()
    assert "in sync" in versioning.dvc(ws.root, "status", "--cloud")


def test_repro_of_an_earlier_commit_needs_no_registry(ws: Workspace) -> None:
    first, second = ws.cycles[0], ws.cycles[1]
    away = ws.root.parent / "mlruns-away"
    shutil.move(ws.root / "mlruns", away)
    try:
        # given the registry gone, and the first cycle checked out (a bootstrap: the no-parent marker)
        check_out(ws.root, first.commit)
        assert [p.name for p in (ws.root / "parent").iterdir()] == [NO_PARENT]
        # when the second cycle's commit is checked out, DVC restores exactly its parent
        check_out(ws.root, second.commit)
        cycle = Cycle.load(ws.root / "cycle.json")
        assert cycle.parent_version == "1" and content_hash(ws.root / "parent") == cycle.parent_hash
        # then dvc repro reproduces its metrics and weights, and opens no registry
        versioning.dvc(ws.root, "repro", "-f", "--no-run-cache")
        assert (ws.root / METRICS).read_text() == second.metrics
        assert sha256(ws.root / WEIGHTS) == second.weights
        assert versioning.git(ws.root, "status", "--porcelain") == ""
        assert not (ws.root / "mlruns").exists()
    finally:
        shutil.rmtree(ws.root / "mlruns", ignore_errors=True)
        shutil.move(away, ws.root / "mlruns")
        check_out(ws.root, "main")


def test_repro_with_another_registry_trains_from_the_tracked_parent_or_refuses(ws: Workspace) -> None:
    away = ws.root.parent / "mlruns-away"
    shutil.move(ws.root / "mlruns", away)
    try:
        # given an empty registry where the old one was
        open_registry(open_workspace(ws.root)).ensure_store()
        # when the last cycle's prepare stage runs again, it takes the DVC-tracked parent all the same:
        # the same prepared data, parent included, as dvc.lock records (the rest follows from it, as
        # the repro above shows)
        versioning.dvc(ws.root, "repro", "-f", "--no-run-cache", "-s", "prepare")
        assert versioning.git(ws.root, "status", "--porcelain") == ""

        # when the parent's content is not the one cycle.json names
        weights = ws.root / "parent" / "weights.pt"
        tampered = weights.read_bytes() + b"\0"
        weights.unlink()  # never write through a link into DVC's cache
        weights.write_bytes(tampered)
        done = dvc_run(ws.root, "repro", "-f", "--no-run-cache")
        # then prepare refuses in one line, trains nothing and writes nothing
        output = done.stdout + done.stderr
        assert done.returncode != 0
        refusals = [ln for ln in output.splitlines() if ln.startswith("ratchet prepare: error:")]
        assert len(refusals) == 1 and "not training from it" in refusals[0], output
        assert "Traceback" not in output
        assert (ws.root / METRICS).read_text() == ws.cycles[-1].metrics
        assert not (ws.root / "artifacts" / ".prepared.tmp").exists()
    finally:
        shutil.rmtree(ws.root / "mlruns", ignore_errors=True)
        shutil.move(away, ws.root / "mlruns")
        # dvc repro re-records a changed .dvc input: cycle.json's hash is what refused it
        versioning.git(ws.root, "checkout", "--", "parent.dvc")
        versioning.dvc(ws.root, "checkout", "--force")
    assert versioning.git(ws.root, "status", "--porcelain") == ""


def test_a_clone_pulls_and_reproduces_the_latest_version(ws: Workspace, tmp_path: Path) -> None:
    # given a clone elsewhere, reading the workspace's DVC remote
    clone = tmp_path / "clone"
    versioning.git(tmp_path, "clone", "-q", str(ws.root), str(clone))
    versioning.dvc(clone, "remote", "modify", "--local", "local", "url", str(ws.root / ".dvc-storage"))
    # when it pulls, it has every input and output of the last cycle
    versioning.dvc(clone, "pull")
    assert (clone / METRICS).read_text() == ws.cycles[-1].metrics
    # then dvc repro reproduces the latest version's metrics
    versioning.dvc(clone, "repro", "-f", "--no-run-cache")
    assert (clone / METRICS).read_text() == ws.cycles[-1].metrics
    assert sha256(clone / WEIGHTS) == ws.cycles[-1].weights
    assert not (clone / "mlruns").exists()


def test_a_moved_copy_retrains_and_reports_from_its_own_store(
    ws: Workspace, tmp_path: Path, stream_files: dict[str, Path]
) -> None:
    # given a copy of the workspace elsewhere, and the original moved away
    copy = tmp_path / "copy"
    shutil.copytree(ws.root, copy, symlinks=True)
    away = ws.root.with_name("ws-away")
    ws.root.rename(away)
    try:
        before = sorted(p.relative_to(away) for p in (away / "mlruns").rglob("*"))
        # when the copy ingests a batch, runs a cycle and reports
        app.ingest(copy, stream_files["digits-scrambled"])
        outcome = app.retrain(copy)
        assert outcome is not None and outcome.action == "rejected"
        status = app.status(copy)
        # then every version reads, the new one among them, its model loads from the copy's store,
        assert [v.version for v in status.versions][-1] == outcome.version
        registry = open_registry(open_workspace(copy))
        checkpoint = registry.download_checkpoint(outcome.version, tmp_path / "download")
        assert (checkpoint / "weights.pt").is_file()
        # and no column of the store's tables names the directory it was made in
        assert _columns_naming(copy / "mlruns" / "mlflow.db", str(ws.root)) == []
        # and the original's store is untouched
        assert sorted(p.relative_to(away) for p in (away / "mlruns").rglob("*")) == before
    finally:
        away.rename(ws.root)


def _columns_naming(db: Path, text: str) -> list[str]:
    """Every table.column of the sqlite file `db` holding `text` in some row."""
    found = []
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [r[1] for r in con.execute(f"PRAGMA table_info({table})")]:
                query = f"SELECT 1 FROM {table} WHERE CAST({column} AS TEXT) LIKE ? LIMIT 1"  # noqa: S608
                if con.execute(query, (f"%{text}%",)).fetchone():
                    found.append(f"{table}.{column}")
    return found


def test_each_version_records_what_an_audit_needs(ws: Workspace) -> None:
    import torch

    versions = open_registry(open_workspace(ws.root)).versions()
    first, second = versions[0], versions[1]
    # the parent, by content and by run; the run and the version name each other
    planned = json.loads(versioning.git(ws.root, "show", f"{second.tag('git_commit')}:cycle.json"))
    assert second.tag("parent_hash") == planned["parent_hash"] and first.tag("parent_hash") == ""
    assert second.tag("parent_run_id") == first.run_id
    assert [v.tag("model_version") for v in versions[:2]] == ["1", "2"]
    # where and with what it trained
    assert second.tag("env.torch") == torch.__version__
    assert second.tag("env.threads") == "2" and second.tag("env.device").startswith(("cpu", "NVIDIA"))
    assert second.tag("code_source") and second.tag("env.python")
    # and what DVC recorded of its inputs and outputs, as its commit's dvc.lock has it
    lock = versioning.git(ws.root, "show", f"{second.tag('git_commit')}:dvc.lock")
    hashes = json.loads(second.tag("dvc_hashes"))
    assert {"data", "parent", "artifacts/prepared", "artifacts/candidate"} <= set(hashes)
    assert all(md5 in lock for md5 in hashes.values())


def test_a_cycle_whose_remote_is_gone_stands_and_the_next_command_pushes_it(
    ws: Workspace, tmp_path: Path, stream_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # given a copy of the workspace with a batch ingested, then its DVC remote gone
    copy = tmp_path / "copy"
    shutil.copytree(ws.root, copy, symlinks=True)
    app.ingest(copy, stream_files["digits-scrambled"])
    (tmp_path / "blocked").write_text("a file: no remote can live under it")
    versioning.dvc(copy, "remote", "modify", "--local", "local", "url", str(tmp_path / "blocked" / "remote"))
    caplog.clear()
    # when a cycle runs (the flow logs what its tasks print)
    outcome = app.retrain(copy)
    # then it stands, committed and registered, and the failed push is said in one line
    assert outcome is not None
    said = [r.getMessage() for r in caplog.records if "not backed up" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"cycle {outcome.cycle_id} is committed but not backed up (")
    assert versioning.git(copy, "status", "--porcelain") == ""
    assert app.status(copy).unpushed == f"cycle {outcome.cycle_id}"
    # when the remote is back, the next command pushes it all, and nothing waits any more
    (copy / ".dvc" / "config.local").unlink()
    assert app.retrain(copy) is None
    assert f"pushed cycle {outcome.cycle_id} to the DVC remote" in caplog.text
    assert app.status(copy).unpushed is None
    assert "in sync" in versioning.dvc(copy, "status", "--cloud")


def test_replay_rebuilds_every_cycle_exactly_with_no_registry(
    ws: Workspace, run_ratchet: RunRatchet, tmp_path: Path
) -> None:
    # given the registry gone
    away = ws.root.parent / "mlruns-away"
    shutil.move(ws.root / "mlruns", away)
    try:
        # when the whole chain is replayed from git and the DVC remote
        done = run_ratchet("replay", "-w", str(ws.root), "--into", str(tmp_path / "replay"))
        assert not (ws.root / "mlruns").exists()  # reading the version numbers created no store
    finally:
        shutil.rmtree(ws.root / "mlruns", ignore_errors=True)
        shutil.move(away, ws.root / "mlruns")
    # then every cycle, each trained from the parent the replay made, comes out bit for bit
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert done.stdout.splitlines()[-1] == "4 of 4 cycles reproduced exactly", output
    results = json.loads((tmp_path / "replay" / "replay.json").read_text())["cycles"]
    assert [r["cycle"]["commit"] for r in results] == [c.commit for c in ws.cycles]
    assert [(r["result"], r["weights_diff"], r["same_decision"]) for r in results] == [
        ("exact", 0.0, True)
    ] * 4
    assert "Traceback" not in output
    assert versioning.git(ws.root, "status", "--porcelain") == ""


def test_replay_to_an_unknown_cycle_is_refused_in_one_line(
    ws: Workspace, run_ratchet: RunRatchet, tmp_path: Path
) -> None:
    done = run_ratchet("replay", "-w", str(ws.root), "--to", "ffffff", "--into", str(tmp_path / "replay"))
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.startswith("ratchet: error: --to ffffff: no such version")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not (tmp_path / "replay").exists()  # refused before any work
