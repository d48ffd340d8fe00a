"""Two machines at the same moment: clones of one workspace that share a git remote, a DVC remote
and a registry (one sqlite store both name), racing to publish.

The git remote decides: a push that is not a fast-forward means the other clone published first.
An ingest that loses is undone and ingested again on top of the winner's batch; a cycle that loses
is undone and not registered, its batches pending for the next cycle. The races are real: the
other clone's command runs inside the window, between this one's pull and its push.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ratchet import app, cycle
from ratchet.data import catalog, versioning
from ratchet.errors import RatchetError
from ratchet.registry import open_registry
from ratchet.workspace import open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")


def clones(base: Path) -> tuple[Path, Path]:
    shared = base / "shared.git"
    versioning.git(base, "init", "-q", "--bare", str(shared))
    store = f"sqlite:///{base / 'registry.db'}"
    first, second = base / "a" / "ws", base / "b" / "ws"
    app.init(first, "race-it", tracking_uri=store, remote=str(base / "dvc-remote"), git_remote=str(shared))
    params = first / "params.yaml"
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 1", params.read_text()))
    versioning.commit(first, ["params.yaml"], "one epoch")
    app.init(second, git_remote=str(shared))
    return first, second


def batches(root: Path) -> list[str]:
    return [b.batch_id for b in catalog.list_batches(root / "data")]


def test_the_loser_of_a_race_ingests_again_and_records_no_cycle(
    tmp_path: Path, stream_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = clones(tmp_path)
    raced: list[str] = []

    def meanwhile(done: int, total: int) -> None:
        # the other machine ingests and pushes after this one pulled, before it pushes
        if not raced:
            raced.append(app.ingest(second, stream_files["digits-5-9"]).report.batch_id or "")

    said: list[str] = []
    result = app.ingest(first, stream_files["digits-0-4"], progress=meanwhile, recovered=said.append)
    assert raced and raced[0].startswith("b001-")
    assert result.report.batch_id is not None and result.report.batch_id.startswith("b002-")
    assert any("not published: another machine changed the same records first" in line for line in said)
    assert batches(first) == [raced[0], result.report.batch_id]  # the loser's first try left nothing
    assert versioning.data_changes(first) == []
    shared = versioning.git(first, "rev-parse", "origin/main").strip()
    assert versioning.head(first) == shared

    # then both run the cycle over the two batches; the other machine records it first
    ws = open_workspace(first)
    with ws.lock():
        planned = cycle.plan(ws)
        assert planned is not None and planned.new_batches == tuple(batches(first))
        cycle.run_prepare(ws)
        cycle.run_train(ws)
        cycle.run_evaluate(ws)
        won = app.retrain(second)  # its own process and lock in real life; the same store and remotes
        assert won is not None and won.cycle_id == planned.cycle_id and won.version == "1"
        # the same cycle made the same commit there (deterministic training): git merges the two
        # as one, and the registry refuses the second version of the cycle
        with pytest.raises(RatchetError, match="already registered as version 1 by another worker"):
            cycle.record(ws, planned)
    assert [v.version for v in open_registry(ws).versions()] == ["1"]  # no second version
    assert versioning.head(first) == versioning.git(first, "rev-parse", "origin/main").strip()
    assert app.retrain(first) is None  # its batches were learned by the winner's version
    assert batches(second) == batches(first)
