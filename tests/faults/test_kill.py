"""kill -9 at every step boundary of ingest and retrain, then the normal next command.

The kill is a real SIGKILL of a real `ratchet` process (it sends it to itself on reaching the point
named in RATCHET_KILL_AT, see `ratchet.faults`). After the next command the workspace must be
exactly where an uninterrupted run leaves it: no batch lost or half-recorded, no duplicate
version, no champion without its outcome, no MLflow run left RUNNING.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ratchet import app, faults, state
from ratchet.data import journal, versioning
from ratchet.data.digits import StreamBatch
from ratchet.registry import open_registry
from ratchet.workspace import init_workspace, open_workspace

MODEL = "faults-it"


@pytest.fixture(scope="module", autouse=True)
def api_url(prefect_server: str) -> Iterator[None]:
    # the child processes' flows report to the suite's server instead of each starting its own
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = prefect_server
    yield
    if saved is None:
        os.environ.pop("PREFECT_API_URL")
    else:
        os.environ["PREFECT_API_URL"] = saved


@pytest.fixture(scope="module")
def source(stream: list[StreamBatch], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder of digits 0-4 with one broken file, so ingest also quarantines."""
    root = tmp_path_factory.mktemp("incoming") / "digits-0-4"
    batch = stream[0]
    for i, (image, label) in enumerate(zip(batch.images, batch.labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    (root / "0" / "broken.png").write_bytes(b"not a png")
    return root


def ratchet(*args: str, kill_at: str | None = None, trace: Path | None = None) -> int:
    env = dict(os.environ)
    env.pop(faults.KILL_AT, None)
    if kill_at:
        env[faults.KILL_AT] = kill_at
    if trace:
        env[faults.TRACE] = str(trace)
    done = subprocess.run(
        [sys.executable, "-m", "ratchet.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    if kill_at is None:
        assert done.returncode == 0, done.stderr
    return done.returncode


@pytest.fixture(scope="module")
def templates(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Workspaces each case copies: "empty" (git, DVC, params) and "ingested" (the batch recorded).

    Copies, because making them costs more than some cases; no MLflow store yet (the first command
    makes it), so no copy shares an artifact location with another. Three epochs: the kills and
    their recovery do not depend on how long training runs.
    """
    base = tmp_path_factory.mktemp("templates")
    empty = base / "empty"
    init_workspace(empty, model_name=MODEL)
    params = empty / "params.yaml"
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 3", params.read_text()))
    versioning.commit(empty, ["params.yaml"], "three epochs")
    ingested = base / "ingested"
    shutil.copytree(empty, ingested, symlinks=True)
    app.ingest(ingested, source)
    return {"empty": empty, "ingested": ingested}


def copy_of(template: Path, where: Path) -> Path:
    return Path(shutil.copytree(template, where / "ws", symlinks=True))


def ingest_state(root: Path) -> dict[str, object]:
    """What an ingest leaves that must not depend on whether it was interrupted."""
    ws = open_workspace(root)
    cloud = versioning.dvc(root, "status", "--cloud", "--json", "data.dvc").strip()
    return {
        "data": versioning.data_version(root).md5,  # data/ byte for byte, quarantine included
        "changes": versioning.data_changes(root),
        "ingest commits": len(versioning.git(root, "log", "--format=%H", "--", "data.dvc").split()),
        "pushed": json.loads(cloud or "{}") == {},
        "journal": journal.pending(root),
        "batches": sorted(p.name for p in (ws.data_dir / "batches").iterdir()),
    }


def cycle_state(root: Path) -> dict[str, object]:
    """What a cycle leaves that must not depend on whether it was interrupted."""
    registry = open_registry(open_workspace(root))
    exp = registry.client.get_experiment_by_name(registry.experiment)
    assert exp is not None
    now = app.status(root)
    return {
        "versions": [
            (v.version, v.action, v.status, v.tag("batches"), v.tag("data_version").split(":")[1], v.metrics)
            for v in now.versions
        ],
        "batches": [(b.batch_id, b.state) for b in now.batches],
        "running": registry.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"),
        "journal": now.interrupted,
        "git": versioning.git(root, "status", "--porcelain"),
    }


@pytest.fixture(scope="module")
def reference(
    source: Path, templates: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """An uninterrupted ingest and retrain, with the kill points each crossed."""
    root = copy_of(templates["empty"], tmp_path_factory.mktemp("reference"))
    traces = tmp_path_factory.mktemp("traces")
    ratchet("ingest", str(source), "-w", str(root), trace=traces / "ingest")
    after_ingest = ingest_state(root)
    ratchet("retrain", "-w", str(root), trace=traces / "retrain")
    return {
        "ingest points": (traces / "ingest").read_text().split(),
        "retrain points": (traces / "retrain").read_text().split(),
        "ingest": after_ingest,
        "cycle": cycle_state(root),
    }


def test_the_kill_points_are_every_boundary_a_real_run_crosses(reference: dict[str, object]) -> None:
    assert reference["ingest points"] == list(faults.INGEST_POINTS)
    assert reference["retrain points"] == list(faults.RETRAIN_POINTS)
    cycle = reference["cycle"]
    assert isinstance(cycle, dict)
    assert [v[:3] for v in cycle["versions"]] == [("1", "promoted", "champion")]


@pytest.mark.fault("kill -9 ingest, then ingest again")
@pytest.mark.parametrize("point", faults.INGEST_POINTS)
def test_killed_ingest_is_completed_by_the_same_ingest(
    point: str, source: Path, templates: dict[str, Path], tmp_path: Path, reference: dict[str, object]
) -> None:
    root = copy_of(templates["empty"], tmp_path)
    assert ratchet("ingest", str(source), "-w", str(root), kill_at=point) == -signal.SIGKILL
    assert journal.pending(root) is not None  # the intent outlived the process
    ratchet("ingest", str(source), "-w", str(root))
    assert ingest_state(root) == reference["ingest"]


@pytest.mark.fault("kill -9 ingest, then retrain")
@pytest.mark.parametrize("point", ["ingest:published", "ingest:committed"])
def test_killed_ingest_is_completed_by_the_next_retrain(
    point: str, source: Path, templates: dict[str, Path], tmp_path: Path, reference: dict[str, object]
) -> None:
    root = copy_of(templates["empty"], tmp_path)
    assert ratchet("ingest", str(source), "-w", str(root), kill_at=point) == -signal.SIGKILL
    ratchet("retrain", "-w", str(root))
    assert ingest_state(root) == reference["ingest"]
    assert cycle_state(root) == reference["cycle"]


@pytest.mark.fault("kill -9 retrain, then retrain again")
@pytest.mark.parametrize("point", faults.RETRAIN_POINTS)
def test_killed_retrain_is_finished_by_the_next_retrain(
    point: str, templates: dict[str, Path], tmp_path: Path, reference: dict[str, object]
) -> None:
    root = copy_of(templates["ingested"], tmp_path)
    assert ratchet("retrain", "-w", str(root), kill_at=point) == -signal.SIGKILL
    ratchet("retrain", "-w", str(root))
    assert cycle_state(root) == reference["cycle"]
    assert not (root / state.INGEST_JOURNAL).exists()
