"""Retrain after a crash: no batch lost, no duplicate version, no unevaluated champion."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratchet import app
from ratchet import cycle as cyc
from ratchet.data import versioning
from ratchet.errors import InputError
from ratchet.registry import open_registry
from ratchet.stages import train
from ratchet.workspace import init_workspace, open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture()
def one_batch(tmp_path: Path, stream_files: dict[str, Path]) -> Path:
    root = tmp_path / "ws"
    init_workspace(root, model_name="crash-it")
    app.ingest(root, stream_files["digits-0-4"])
    return root


def test_crash_during_training_leaves_the_batch_pending(
    one_batch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fault we cannot cause for real on demand: the trainer dies mid-cycle
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash in training")

    monkeypatch.setattr(train, "fit", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        app.retrain(one_batch)
    ws = open_workspace(one_batch)
    registry = open_registry(ws)
    assert registry.versions() == []
    assert registry.champion() is None

    monkeypatch.undo()
    outcome = app.retrain(one_batch)
    assert outcome is not None and outcome.action == "promoted"
    assert [v.version for v in registry.versions()] == ["1"]


def test_crash_after_registration_is_resumed_not_duplicated(one_batch: Path) -> None:
    ws = open_workspace(one_batch)
    # the cycle ran and registered its version, then the process died before applying the decision
    cycle = cyc.plan(ws)
    assert cycle is not None
    cyc.run_prepare(ws)
    cyc.run_train(ws)
    cyc.run_evaluate(ws)
    recorded = cyc.record(ws, cycle)
    registry = open_registry(ws)
    assert registry.champion() is None  # evaluated, but not yet crowned

    outcome = app.retrain(one_batch)
    assert outcome is not None
    assert outcome.resumed is True
    assert outcome.action == "promoted"
    assert [v.version for v in registry.versions()] == [recorded.version]
    champion = registry.champion()
    assert champion is not None and champion.version == recorded.version


def test_dry_run_marks_a_challenger_and_keeps_the_champion(
    one_batch: Path, stream_files: dict[str, Path]
) -> None:
    assert app.retrain(one_batch) is not None
    app.ingest(one_batch, stream_files["digits-5-9"])
    outcome = app.retrain(one_batch, dry_run=True)
    assert outcome is not None and outcome.action == "challenger"
    registry = open_registry(open_workspace(one_batch))
    champion = registry.champion()
    assert champion is not None and champion.version == "1"
    challenger = next(v for v in registry.versions() if v.version == outcome.version)
    assert "challenger" in challenger.aliases
    assert challenger.status == "awaiting approval"


def test_data_changed_after_ingest_stops_the_cycle_naming_the_files(one_batch: Path) -> None:
    # given a batch file edited and another deleted after ingest recorded them in data.dvc
    batch = next((one_batch / "data" / "batches").iterdir())
    with (batch / "labels.npy").open("ab") as f:
        f.write(b"\0")
    (batch / "manifest.json").unlink()
    # when a cycle starts, then it refuses in one line naming them, and trains on nothing
    with pytest.raises(InputError) as err:
        app.retrain(one_batch)
    message = str(err.value)
    assert "\n" not in message and "data/ is not the version data.dvc records" in message
    assert f"deleted data/batches/{batch.name}/manifest.json" in message
    assert f"modified data/batches/{batch.name}/labels.npy" in message
    assert open_registry(open_workspace(one_batch)).versions() == []
    # and once restored as the message says, the cycle runs
    versioning.dvc(one_batch, "checkout", "--force", "data")
    outcome = app.retrain(one_batch)
    assert outcome is not None and outcome.action == "promoted"
