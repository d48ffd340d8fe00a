"""The whole cycle against a real MLflow tracking server on PostgreSQL, with proxied artifacts.

The same three batches (digits 0-4, digits 5-9, then scrambled labels the gate must reject) run
through a workspace on its own sqlite store and through one whose MLFLOW_TRACKING_URI names the
server. On CPU in deterministic mode both train bit for bit the same, so the server must record the
same decisions and metrics; then the commands a person runs (status, history, rollback) and a
version's load through `models:/<name>@champion` must work over REST alone. A second workspace on
the same server, under another model name, must not see the first one's versions.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from ratchet import app
from ratchet.cli import main
from ratchet.cycle import Outcome
from ratchet.data import versioning
from ratchet.data.digits import StreamBatch
from ratchet.ledger import BatchMark, Review
from ratchet.registry import TEXT_LIMIT, Registry, now, open_registry
from ratchet.workspace import init_workspace, open_workspace
from services import MlflowServer
from test_registry import record

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]

STREAM = ("digits-0-4", "digits-5-9", "digits-scrambled")
ACTIONS = ["promoted", "promoted", "rejected"]
METRICS = "artifacts/eval/metrics.json"


@dataclass(frozen=True)
class Streamed:
    root: Path
    outcomes: list[Outcome]
    metrics: list[str]  # metrics.json after each cycle
    seconds: list[float]  # ingest + retrain, per cycle


def new_workspace(root: Path, model_name: str) -> Path:
    init_workspace(root, model_name=model_name)
    params = root / "params.yaml"
    # three epochs: the comparison needs the same training, not a good model
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 3", params.read_text()))
    versioning.commit(root, ["params.yaml"], "three epochs")
    return root


def cycle(root: Path, batch: Path) -> tuple[Outcome, str, float]:
    """One batch in, one cycle: its outcome, metrics.json, and the seconds of ingest + retrain."""
    started = time.monotonic()
    app.ingest(root, batch)
    outcome = app.retrain(root)
    seconds = time.monotonic() - started
    assert outcome is not None, f"no cycle ran for {batch.name}"
    return outcome, (root / METRICS).read_text(), seconds


@pytest.fixture(scope="module")
def streams(
    tmp_path_factory: pytest.TempPathFactory, stream_files: dict[str, Path], mlflow_server: MlflowServer
) -> tuple[Streamed, Streamed]:
    """The stream through a workspace on its own sqlite store (the reference) and through one whose
    MLFLOW_TRACKING_URI names the server, a cycle of each in turn, so that the process's first-cycle
    warm-up and the machine's load weigh on both alike."""
    local = new_workspace(tmp_path_factory.mktemp("local") / "ws", "server-it")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        served = new_workspace(tmp_path_factory.mktemp("served") / "ws", "server-it")
    runs: dict[Path, list[tuple[Outcome, str, float]]] = {local: [], served: []}
    for name in STREAM:
        runs[local].append(cycle(local, stream_files[name]))
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
            runs[served].append(cycle(served, stream_files[name]))
    here, there = (
        Streamed(root, [o for o, _, _ in done], [m for _, m, _ in done], [t for _, _, t in done])
        for root, done in runs.items()
    )
    print(
        "\nseconds per cycle (ingest + retrain), local sqlite vs tracking server: "
        + ", ".join(f"{a:.1f} vs {b:.1f}" for a, b in zip(here.seconds, there.seconds, strict=True))
        + f"; after the first: mean {np.mean(here.seconds[1:]):.1f} vs {np.mean(there.seconds[1:]):.1f}"
        + f" (PostgreSQL + server up in {mlflow_server.seconds_to_start:.1f} s)"
    )
    return here, there


@pytest.fixture(scope="module")
def local(streams: tuple[Streamed, Streamed]) -> Streamed:
    return streams[0]


@pytest.fixture(scope="module")
def served(streams: tuple[Streamed, Streamed]) -> Streamed:
    return streams[1]


@pytest.fixture()
def on_server(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return mlflow_server.url


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_server_records_the_same_cycles_as_a_local_store(
    served: Streamed, local: Streamed, on_server: str
) -> None:
    assert [o.action for o in local.outcomes] == ACTIONS
    assert [o.action for o in served.outcomes] == ACTIONS
    for here, there in zip(local.outcomes, served.outcomes, strict=True):
        assert (there.version, there.parent, there.batches) == (here.version, here.parent, here.batches)
        assert there.metrics == here.metrics  # the candidate's and champion's headline accuracies
        assert there.reasons == here.reasons  # the gate's sentences carry every number it used
    assert served.metrics == local.metrics

    registry = open_registry(open_workspace(served.root))
    assert registry.tracking_uri == on_server
    versions = registry.versions()
    assert [v.version for v in versions] == ["1", "2", "3"]  # one version per cycle
    assert [v.action for v in versions] == ACTIONS
    # the record and the six display tags made it through the REST store
    assert versions[2].tag("decision") == "reject"
    assert versions[2].display()["verdict"].startswith("rejected")
    assert versions[1].tags["parent"] == "1"


def test_champion_is_the_last_promoted_version(served: Streamed, on_server: str) -> None:
    champion = open_registry(open_workspace(served.root)).champion()
    assert champion is not None and champion.version == "2"


def test_status_and_history_read_the_server(
    served: Streamed, on_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli_json(capsys, "status", "-w", str(served.root))
    assert isinstance(status, dict)
    assert status["champion"] == {"version": "2"}
    assert [v["status"] for v in status["versions"]] == ["promoted earlier", "champion", "rejected"]
    events = cli_json(capsys, "history", "-w", str(served.root))
    assert isinstance(events, list)
    assert [(e["what"], e["versions"]) for e in events if e["what"] != "gate promote"][:3] == [
        ("promoted", "- -> 1"),
        ("promoted", "1 -> 2"),
        ("gate reject", "3"),
    ]


def test_the_champion_loads_and_predicts_through_the_server(
    served: Streamed, on_server: str, stream: list[StreamBatch]
) -> None:
    import mlflow.pyfunc

    registry = open_registry(open_workspace(served.root))
    source = registry.client.get_model_version(registry.name, "2").source
    # the proxied store: nothing names a path on the server's disk
    assert not source.startswith(("/", "file:")), source
    model = mlflow.pyfunc.load_model(f"models:/{registry.name}@champion")
    batch = next(b for b in stream if b.name == "digits-5-9")
    predicted = model.predict(batch.images[:64, :, :, None])  # uint8 (N, H, W, C), as the signature says
    assert list(predicted.columns) == ["label", "class_index", "confidence"]
    accuracy = float(np.mean(predicted["label"].astype(str).to_numpy() == batch.labels[:64].astype(str)))
    assert accuracy > 0.5, accuracy


def test_another_workspace_on_the_server_sees_only_its_own_model(
    served: Streamed,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
    stream_files: dict[str, Path],
) -> None:
    # named in params.yaml this time, not by the environment
    root = new_workspace(tmp_path_factory.mktemp("other") / "ws", "other-it")
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("tracking_uri: null", f"tracking_uri: {mlflow_server.url}"))
    assert open_registry(open_workspace(root)).tracking_uri == mlflow_server.url
    assert app.status(root).versions == []
    assert app.history(root) == []
    app.ingest(root, stream_files["digits-0-4"])
    outcome = app.retrain(root)
    assert outcome is not None and (outcome.version, outcome.action) == ("1", "promoted")
    assert [v.version for v in app.status(root).versions] == ["1"]


def server_registry(server: MlflowServer, model_name: str) -> Registry:
    return Registry(server.url, server.url, model_name, "ratchet")


def test_texts_that_grow_stay_within_the_servers_columns(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """PostgreSQL refuses what SQLite let through: descriptions and registered-model tags over 5000."""
    registry = server_registry(mlflow_server, "limits-it")
    for n, verdict, parent in ((1, "promote", None), (2, "promote", "1"), (3, "reject", "2")):
        registry.log_candidate(replace(record(tmp_path, f"c-{n}"), verdict=verdict, parent_version=parent))
    registry.promote("1", expected_parent=None)
    registry.promote("2", expected_parent="1")
    registry.reject("3")
    # a champion history longer than a description holds: the newest rows, and where the rest are
    for _ in range(15):
        for to in ("1", "2"):
            registry.rollback(to, by="reviewer " + "x" * 150)
    description = registry.client.get_registered_model(registry.name).description
    assert len(description) <= TEXT_LIMIT
    assert description.endswith("earlier changes: `ratchet history` lists every one.")
    assert "| rollback | reviewer" in description
    # a person's long reason on a version (the champion is 2 again, version 3's parent)
    registry.review("3", Review("override", "because " + "y" * 6000, "reviewer", now()))
    assert registry.version("3").description.startswith("Gate overridden by reviewer")
    # a batch's marks, more than one tag holds, escapes included; an overlong reason is cut
    for n in range(30):
        registry.mark_batch("b001-0000", BatchMark("requeue", f"{n} " + "\u00e9" * 300, "me", now(), None))
    registry.mark_batch("b001-0000", BatchMark("drop", "z" * 6000, "me", now(), "3"))
    marks = registry.batch_mark_history()["b001-0000"]
    assert [m.reason.split(" ")[0] for m in marks[:-1]] == [str(n) for n in range(30)]
    assert marks[-1].action == "drop" and marks[-1].reason.startswith("zzz")
    tags = registry.client.get_registered_model(registry.name).tags
    assert all(len(v) <= TEXT_LIMIT for v in tags.values()) and len(tags) > 1


def test_repair_leaves_another_models_cycle_on_the_server_alone(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    mine, theirs = server_registry(mlflow_server, "mine-it"), server_registry(mlflow_server, "theirs-it")
    experiment = mine.ensure_store()
    assert theirs.ensure_store() == experiment  # the same experiment name: the same experiment
    # another workspace's cycle, in flight now
    running = mine.client.create_run(experiment, tags={"ratchet.model": "theirs-it"}).info.run_id
    assert mine.repair() == []
    assert mine.client.get_run(running).info.status == "RUNNING"
    assert theirs.repair() == [f"run {running}: left running by a stopped process, marked FAILED"]
    assert mine.client.get_run(running).info.status == "FAILED"


def test_rollback_moves_the_champion_back(
    served: Streamed, on_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # last in the module: it changes the champion the cases above read
    assert main(["rollback", "-w", str(served.root), "--by", "tester"]) == 0
    registry = open_registry(open_workspace(served.root))
    champion = registry.champion()
    assert champion is not None and champion.version == "1"
    assert registry.version("2").status == "rolled back"
    events = cli_json(capsys, "history", "-w", str(served.root))
    assert isinstance(events, list)
    assert (events[-1]["what"], events[-1]["versions"], events[-1]["by"]) == ("rollback", "2 -> 1", "tester")
