"""Evaluation costs what is new: each cycle scores the champion only on held-out sets it has not
been scored on, decodes only new sets, and a warm cache never changes a number. DVC stores what is
new: a later cycle grows the DVC cache by about its batch and its candidate, not by all old data.

Three cycles of the digits stream through the real cycle steps (no Prefect: the flow only
sequences them), three epochs each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ratchet import app, cycle, state
from ratchet.data import catalog, versioning
from ratchet.stages import evaluate, prepare, train
from ratchet.stages.evaluate import Evaluation
from ratchet.stages.predictions import model_content
from ratchet.stages.sets import SETS, PreparedSets
from ratchet.train.checkpoint import MEMORY_FILE
from ratchet.workspace import Workspace, init_workspace

BATCHES = ("digits-0-4", "digits-5-9", "digits-more")


@dataclass(frozen=True)
class Cycled:
    sets: PreparedSets
    evaluation: Evaluation
    champion: str | None  # model_content of the parent, None for a bootstrap
    candidate: str
    batch_bytes: int  # the new batch's files under data/
    checkpoint_bytes: int  # the candidate's checkpoint: weights, spec, replay memory
    memory_pixels: int  # rows of the replay memory stored as pixels, not as references to data/
    memory_size: int  # samples in the replay memory
    cache_growth: int  # bytes the DVC cache grew by, ingest and cycle together


@dataclass(frozen=True)
class Run:
    ws: Workspace
    cycles: list[Cycled]


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, stream_files: dict[str, Path]) -> Run:
    ws, _ = init_workspace(tmp_path_factory.mktemp("evalcache") / "ws", model_name="evalcache-it")
    ws.params_path.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 3", ws.params_path.read_text()))
    versioning.commit(ws.root, ["params.yaml"], "three epochs")
    dvc_cache = ws.root / ".dvc" / "cache"
    cycles = []
    for name in BATCHES:
        before = tree_bytes(dvc_cache)
        batch_id = app.ingest(ws.root, stream_files[name]).report.batch_id
        assert batch_id is not None
        planned = cycle.plan(ws)
        assert planned is not None
        cycle.run_prepare(ws)
        cycle.run_train(ws)
        evaluation = cycle.run_evaluate(ws)
        version = cycle.record(ws, planned)
        cycle.apply(ws, planned, version, dry_run=False, resumed=False)
        paths = ws.stage_paths()
        parent = paths.prepared / prepare.PARENT
        checkpoint = paths.candidate / train.CHECKPOINT
        cycles.append(
            Cycled(
                sets=PreparedSets.load(paths.prepared / SETS),
                evaluation=evaluation,
                champion=model_content(parent) if parent.is_dir() else None,
                candidate=model_content(checkpoint),
                batch_bytes=tree_bytes(catalog.batches_dir(ws.data_dir) / batch_id),
                checkpoint_bytes=tree_bytes(checkpoint),
                memory_pixels=len(np.load(checkpoint / MEMORY_FILE)["images"]),
                memory_size=len(np.load(checkpoint / MEMORY_FILE)["labels"]),
                cache_growth=tree_bytes(dvc_cache) - before,
            )
        )
    return Run(ws, cycles)


def test_each_cycle_scores_the_champion_only_on_sets_it_was_not_scored_on(run: Run) -> None:
    for n, c in enumerate(run.cycles):
        new = [r.key("held_out") for r in c.sets.new]
        every = [r.key("held_out") for r in c.sets.old + c.sets.new]
        scored = c.evaluation.scored
        # the candidate is new: scored on every held-out set, each once
        assert [key for model, key in scored if model == c.candidate] == every
        if n == 0:
            assert c.champion is None and len(scored) == len(every)
            continue
        # the champion was scored on the old sets when it was a candidate (or a champion): only the
        # new set costs a prediction, however many old sets there are
        assert c.champion is not None and c.sets.old
        assert [key for model, key in scored if model == c.champion] == new
        # and only the new held-out set is decoded from data/: the old ones are in the cache
        assert list(c.evaluation.decoded) == new


def test_metrics_with_a_warm_cache_equal_metrics_with_none(run: Run, tmp_path: Path) -> None:
    paths = run.ws.stage_paths()
    params = run.ws.params()
    recorded = (paths.eval / evaluate.METRICS).read_text()
    decision = (paths.eval / evaluate.DECISION).read_text()
    warm_cache, cold_cache = state.cache(run.ws.root), tmp_path / "deleted"
    # warm: everything read from the cache
    warm = evaluate.run(paths.prepared, paths.candidate, tmp_path / "warm", params, paths.data, warm_cache)
    assert warm.scored == () and warm.decoded == ()
    # cold: an empty cache (as after deleting it), and no cache at all
    cold = evaluate.run(paths.prepared, paths.candidate, tmp_path / "cold", params, paths.data, cold_cache)
    assert len(cold.scored) == 2 * len(run.cycles)  # both models on every held-out set
    evaluate.run(paths.prepared, paths.candidate, tmp_path / "none", params, paths.data, None)
    for out in ("warm", "cold", "none"):
        assert (tmp_path / out / evaluate.METRICS).read_text() == recorded, out
        assert (tmp_path / out / evaluate.DECISION).read_text() == decision, out


def test_a_later_cycle_grows_the_dvc_cache_by_its_batch_and_candidate(run: Run) -> None:
    for c in run.cycles[1:]:
        # the replay memory names the samples it keeps (all from batches in data/), not their pixels
        assert c.memory_size > 0 and c.memory_pixels == 0
        # what is new: the batch and the candidate, and small files; no copy of the batch or of the
        # memory's samples, no old held-out set, no parent stored again
        assert c.cache_growth <= 1.2 * (c.batch_bytes + c.checkpoint_bytes), (
            c.cache_growth,
            c.batch_bytes,
            c.checkpoint_bytes,
        )
