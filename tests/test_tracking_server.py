"""Team mode on real services: the whole cycle against a real MLflow tracking server on PostgreSQL,
with proxied artifacts, from two clones of one workspace that share a git remote and a DVC remote.

The same four batches (digits 0-4, digits 5-9, more of all ten, then scrambled labels the gate must
reject) run through a workspace on its own sqlite store and through two clones, as on two machines,
that take the cycles in turn: each pulls what the other pushed (git + DVC) before it ingests and
plans, and pushes after it records. On CPU in deterministic mode both train bit for bit the same, so
the server must record the same versions, decisions and metrics as the one local workspace; then
the commands a person runs (status, history, rollback) and a version's load through
`models:/<name>@champion` must work over REST alone. A second workspace on the same server, under
another model name, must not see the first one's versions.
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

STREAM = ("digits-0-4", "digits-5-9", "digits-more", "digits-scrambled")
ACTIONS = ["promoted", "promoted", "promoted", "rejected"]
METRICS = "artifacts/eval/metrics.json"


@dataclass(frozen=True)
class Streamed:
    root: Path  # the workspace that ran the last cycle
    outcomes: list[Outcome]
    metrics: list[str]  # metrics.json after each cycle
    seconds: list[float]  # ingest + retrain, per cycle
    clones: tuple[Path, ...] = ()  # team mode: the clones that took the cycles in turn


def epochs(root: Path) -> None:
    params = root / "params.yaml"
    # three epochs: the comparison needs the same training, not a good model
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 3", params.read_text()))
    versioning.commit(root, ["params.yaml"], "three epochs")


def new_workspace(root: Path, model_name: str) -> Path:
    init_workspace(root, model_name=model_name)
    epochs(root)
    return root


def team(base: Path, server: MlflowServer, model_name: str) -> tuple[Path, Path]:
    """Two clones of one workspace, as on two machines: the first made by `ratchet init` with the
    tracking server, a DVC remote and an empty bare git repository; the second joining it by
    `ratchet init --git-remote` alone (a clone, whose params name the rest)."""
    shared = base / "shared.git"
    versioning.git(base, "init", "-q", "--bare", str(shared))
    first = base / "machine-a" / "ws"
    _, done = app.init(
        first, model_name, tracking_uri=server.url, remote=str(base / "dvc-remote"), git_remote=str(shared)
    )
    assert any("pushed main to the new git remote" in line for line in done), done
    epochs(first)  # committed here, reaches the other clone through the remote with the first ingest
    second = base / "machine-b" / "ws"
    _, done = app.init(second, git_remote=str(shared))
    assert any(f"clone of {shared}" in line for line in done), done
    return first, second


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
    """The stream through a workspace on its own sqlite store (the reference) and through the two
    clones on the server, a cycle of each in turn, so that the process's first-cycle warm-up and the
    machine's load weigh on both alike."""
    local = new_workspace(tmp_path_factory.mktemp("local") / "ws", "server-it")
    clones = team(tmp_path_factory.mktemp("team"), mlflow_server, "server-it")
    here: list[tuple[Outcome, str, float]] = []
    there: list[tuple[Outcome, str, float]] = []
    for n, name in enumerate(STREAM):
        here.append(cycle(local, stream_files[name]))
        there.append(cycle(clones[n % 2], stream_files[name]))
    print(
        "\nseconds per cycle (ingest + retrain), local sqlite vs two clones on the tracking server: "
        + ", ".join(f"{a[2]:.1f} vs {b[2]:.1f}" for a, b in zip(here, there, strict=True))
        + f"; after the first: mean {np.mean([a[2] for a in here[1:]]):.1f} vs "
        + f"{np.mean([b[2] for b in there[1:]]):.1f} (PostgreSQL + server up in "
        + f"{mlflow_server.seconds_to_start:.1f} s)"
    )
    last = clones[(len(STREAM) - 1) % 2]
    return (
        Streamed(local, [o for o, _, _ in here], [m for _, m, _ in here], [t for _, _, t in here]),
        Streamed(last, [o for o, _, _ in there], [m for _, m, _ in there], [t for _, _, t in there], clones),
    )


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
    assert [v.version for v in versions] == ["1", "2", "3", "4"]  # one version per cycle
    assert [v.action for v in versions] == ACTIONS
    # the record and the six display tags made it through the REST store
    assert versions[3].tag("decision") == "reject"
    assert versions[3].display()["verdict"].startswith("rejected")
    assert versions[1].tags["parent"] == "1"


def test_the_clones_share_one_history_through_the_remotes(served: Streamed, local: Streamed) -> None:
    first, second = served.clones
    # the clone that ran the third cycle catches up on the fourth: nothing left to train
    assert app.retrain(first) is None
    heads = {versioning.head(root) for root in served.clones}
    assert len(heads) == 1
    shared = versioning.git(first, "rev-parse", "origin/main").strip()
    assert heads == {shared}
    registry = open_registry(open_workspace(first))
    # every version's commit is in the shared history, made on the clone that ran its cycle
    for v in registry.versions():
        assert versioning.git(first, "merge-base", "--is-ancestor", v.tag("git_commit"), shared) == ""
    # the same data, batch for batch, as the local workspace; pulled from the DVC remote
    for root in served.clones:
        assert (root / "data.dvc").read_text() == (local.root / "data.dvc").read_text()
        assert versioning.data_changes(root) == []
    subjects = versioning.git(first, "log", "--format=%s", shared).splitlines()
    assert sum(s.startswith("cycle ") for s in subjects) == len(STREAM)


def test_champion_is_the_last_promoted_version(served: Streamed, on_server: str) -> None:
    champion = open_registry(open_workspace(served.root)).champion()
    assert champion is not None and champion.version == "3"


def test_status_and_history_read_the_server(
    served: Streamed, on_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli_json(capsys, "status", "-w", str(served.root))
    assert isinstance(status, dict)
    assert status["champion"] == {"version": "3"}
    statuses = [v["status"] for v in status["versions"]]
    assert statuses == ["promoted earlier", "promoted earlier", "champion", "rejected"]
    events = cli_json(capsys, "history", "-w", str(served.root))
    assert isinstance(events, list)
    assert [(e["what"], e["versions"]) for e in events if e["what"] != "gate promote"][:4] == [
        ("promoted", "- -> 1"),
        ("promoted", "1 -> 2"),
        ("promoted", "2 -> 3"),
        ("gate reject", "4"),
    ]


def test_the_champion_loads_and_predicts_through_the_server(
    served: Streamed, on_server: str, stream: list[StreamBatch]
) -> None:
    import mlflow.pyfunc

    registry = open_registry(open_workspace(served.root))
    source = registry.client.get_model_version(registry.name, "3").source
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
    assert champion is not None and champion.version == "2"
    assert registry.version("3").status == "rolled back"
    events = cli_json(capsys, "history", "-w", str(served.root))
    assert isinstance(events, list)
    assert (events[-1]["what"], events[-1]["versions"], events[-1]["by"]) == ("rollback", "3 -> 2", "tester")
