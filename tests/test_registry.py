"""The registry on real MLflow stores: which store a workspace uses, and lookups by alias and by tag."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ratchet.config import Params, render_params
from ratchet.errors import RatchetError
from ratchet.metrics import CycleMetrics, ModelMetrics, SplitMetrics
from ratchet.registry import CandidateRecord, Registry, open_registry
from ratchet.workspace import Workspace


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A workspace as the registry sees it (params.yaml and its paths), outside the current directory."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "ws"
    root.mkdir()
    (root / "params.yaml").write_text(render_params(Params()))
    # a sqlite store without a server keeps artifacts under ./mlruns: never this repository's
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return Workspace(root)


def set_registry_params(ws: Workspace, **values: str) -> None:
    text = ws.params_path.read_text()
    for key, value in values.items():
        text = text.replace(f"  {key}: null ", f"  {key}: {value} ")
    ws.params_path.write_text(text)


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def record(tmp_path: Path, cycle_id: str) -> CandidateRecord:
    """The smallest real candidate: a checkpoint directory with the spec the signature reads."""
    ckpt = tmp_path / "checkpoints" / cycle_id.replace("'", "_")
    ckpt.mkdir(parents=True)
    half = SplitMetrics(accuracy=0.5, n=2, correct=1, per_class={"a": 0.5})
    (ckpt / "spec.json").write_text(json.dumps({"image_size": 8, "in_channels": 1}))
    return CandidateRecord(
        cycle_id=cycle_id,
        parent_version=None,
        new_batches=[f"batch-{cycle_id}"],
        seen_batches=[f"batch-{cycle_id}"],
        data_version="0" * 40,
        git_commit="0" * 40,
        strategy="replay",
        params={"train.lr": 0.1},
        params_hash="abc",
        history=[],
        metrics=CycleMetrics(candidate=ModelMetrics(None, half, half), champion=None, gate={}),
        verdict="promote",
        reasons=["ok: first model"],
        summary=f"cycle {cycle_id}",
        checkpoint_dir=ckpt,
        report_files=[],
    )


def model_versions(uri: str, name: str) -> list[tuple[str, str]]:
    """(version, cycle id) of every version of `name`, read back with a client of our own."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.search_model_versions(f"name='{name}'")
    # the cycle id is part of the record the version's run keeps
    return sorted((str(mv.version), client.get_run(mv.run_id).data.tags["ratchet.cycle_id"]) for mv in found)


# ---- which store ----------------------------------------------------------------------------


def test_default_store_is_the_workspace_sqlite(ws: Workspace, tmp_path: Path) -> None:
    registry = open_registry(ws)
    assert registry.tracking_uri == registry.registry_uri == ws.tracking_uri
    assert registry.artifact_location == ws.artifact_uri
    assert ws.mlruns.is_dir()
    assert mlflow.get_tracking_uri() == ws.tracking_uri
    assert mlflow.get_registry_uri() == ws.tracking_uri
    # mlflow exports the URIs it is given to the environment; they must not pass for the user's choice
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    second = tmp_path / "second"
    second.mkdir()
    (second / "params.yaml").write_text(render_params(Params()))
    assert open_registry(Workspace(second)).tracking_uri == Workspace(second).tracking_uri
    assert mlflow.get_tracking_uri() == Workspace(second).tracking_uri


def test_mlflow_tracking_uri_in_the_environment_takes_the_versions_elsewhere(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = sqlite(tmp_path / "other" / "other.db")
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    # the environment wins over params.yaml, for the registry too unless MLFLOW_REGISTRY_URI says otherwise
    set_registry_params(ws, tracking_uri=sqlite(tmp_path / "p.db"), registry_uri=sqlite(tmp_path / "r.db"))

    registry = open_registry(ws)
    assert (registry.tracking_uri, registry.registry_uri) == (other, other)
    assert registry.artifact_location is None
    registry.log_candidate(record(tmp_path, "c-env"))

    assert model_versions(other, "ratchet-classifier") == [("1", "c-env")]
    assert not ws.mlruns.exists()
    assert not (tmp_path / "p.db").exists()
    assert [v.version for v in open_registry(ws).versions()] == ["1"]


def test_mlflow_registry_uri_in_the_environment_names_the_registry(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite(tmp_path / "t.db"))
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", sqlite(tmp_path / "r.db"))
    registry = open_registry(ws)
    assert (registry.tracking_uri, registry.registry_uri) == (
        sqlite(tmp_path / "t.db"),
        sqlite(tmp_path / "r.db"),
    )
    assert mlflow.get_registry_uri() == sqlite(tmp_path / "r.db")


def test_params_tracking_uri_is_used_without_the_environment(ws: Workspace, tmp_path: Path) -> None:
    uri = sqlite(tmp_path / "params.db")
    set_registry_params(ws, tracking_uri=uri)
    assert ws.params().registry.tracking_uri == uri

    registry = open_registry(ws)
    assert (registry.tracking_uri, registry.registry_uri) == (uri, uri)
    registry.ensure_store()

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_experiment_by_name("ratchet") is not None
    assert client.get_registered_model("ratchet-classifier").name == "ratchet-classifier"
    assert not ws.mlruns.exists()

    registry_only = sqlite(tmp_path / "registry.db")
    set_registry_params(ws, registry_uri=registry_only)
    assert open_registry(ws).registry_uri == registry_only


# ---- lookups --------------------------------------------------------------------------------


def test_champion_by_alias_and_cycles_by_tag(ws: Workspace, tmp_path: Path) -> None:
    registry = open_registry(ws)
    assert registry.champion() is None  # no registered model yet
    registry.ensure_store()
    assert registry.champion() is None  # a model, no versions
    # a cycle.json edited by hand could hold a quote: the filter must still find it
    cycles = ["c-1", "c-2", "hand'edited"]
    for cycle_id in cycles:
        registry.log_candidate(record(tmp_path, cycle_id))
    # another model in the same store with a clashing cycle id: found only under its own name
    Registry(
        registry.tracking_uri, registry.registry_uri, "other-model", "ratchet", ws.artifact_uri
    ).log_candidate(record(tmp_path / "other", "c-2"))
    assert registry.champion() is None  # versions, none promoted

    registry.promote("2", expected_parent=None)
    registry.mark_challenger("3")
    by_version = {v.version: v for v in registry.versions()}
    assert sorted(by_version) == ["1", "2", "3"]

    champion = registry.champion()
    assert champion is not None and champion == by_version["2"]
    assert champion.aliases == ("champion",) and champion.status == "champion"
    for version, cycle_id in zip(("1", "2", "3"), cycles, strict=True):
        assert registry.find_cycle(cycle_id) == by_version[version]
    found = registry.find_cycle("hand'edited")
    assert found is not None and found.aliases == ("challenger",)
    assert registry.find_cycle("c-unknown") is None
    assert registry.find_cycle('it\'s "unknown"') is None  # no quoting expresses it: every version scanned


def test_champion_does_not_hide_other_registry_errors(ws: Workspace) -> None:
    registry = open_registry(ws)
    bad = Registry(registry.tracking_uri, registry.registry_uri, "", "ratchet")
    with pytest.raises(MlflowException):
        bad.champion()


# ---- moving @champion against another writer ------------------------------------------------


def test_promote_refuses_when_the_champion_moved_since_evaluation(ws: Workspace, tmp_path: Path) -> None:
    registry = open_registry(ws)
    for cycle_id in ("c-1", "c-2", "c-3"):
        registry.log_candidate(record(tmp_path, cycle_id))
    registry.promote("1", expected_parent=None)
    # another writer (its own client, as another process would have) promotes version 3 first
    MlflowClient(registry.tracking_uri, registry.registry_uri).set_registered_model_alias(
        registry.name, "champion", "3"
    )
    with pytest.raises(RatchetError, match="evaluated against champion 1, but the champion is now 3"):
        registry.promote("2", expected_parent="1")
    assert registry.champion() == next(v for v in registry.versions() if v.version == "3")
    assert next(v for v in registry.versions() if v.version == "2").action is None


def test_promote_says_so_when_another_writer_moves_the_champion_while_it_is_set(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = open_registry(ws)
    for cycle_id in ("c-1", "c-2", "c-3"):
        registry.log_candidate(record(tmp_path, cycle_id))
    registry.promote("1", expected_parent=None)
    other = MlflowClient(registry.tracking_uri, registry.registry_uri)
    set_alias = registry.client.set_registered_model_alias

    # a window no test can hit on demand: the other writer's move lands right after ours
    def ours_then_theirs(name: str, alias: str, version: str) -> None:
        set_alias(name, alias, version)
        other.set_registered_model_alias(name, alias, "3")

    monkeypatch.setattr(registry.client, "set_registered_model_alias", ours_then_theirs)
    with pytest.raises(RatchetError, match="@champion moved to 3 while it was being set"):
        registry.promote("2", expected_parent="1")
    monkeypatch.undo()
    # theirs stands, ours is not recorded as promoted: the next cycle starts from what is there
    champion = registry.champion()
    assert champion is not None and champion.version == "3"
    assert next(v for v in registry.versions() if v.version == "2").action is None
