"""One retraining cycle, as steps the Prefect flow sequences: plan, run the stages, record, apply.

The stages (`ratchet.stages`) are the same code `dvc repro` runs; this module adds what happens
around them: choosing the batches and the parent, committing the cycle, and talking to the registry.
Each step is safe to repeat after a crash: a cycle is identified by its inputs (`cycle_id`), and a
version already registered for that id is resumed, never registered twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ratchet.atomic import write_text
from ratchet.config import Params, check_strategy
from ratchet.data import catalog, versioning
from ratchet.errors import InputError
from ratchet.ledger import BatchState, batch_states
from ratchet.workspace import Workspace

if TYPE_CHECKING:  # the registry imports mlflow: loaded only when a command needs it
    from ratchet.registry import Registry

PREPARED = "prepared"
CANDIDATE = "candidate"
EVAL = "eval"


@dataclass(frozen=True)
class Cycle:
    """What a cycle trains on and from: committed as cycle.json, the input `dvc repro` replays."""

    cycle_id: str
    new_batches: tuple[str, ...]  # trained on now; their held-out data is "new"
    old_batches: tuple[str, ...]  # everything the parent learned; their held-out data is "old"
    parent_version: str | None  # registry version fine-tuned from; None bootstraps from scratch
    strategy: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def load(path: Path) -> Cycle:
        if not path.is_file():
            raise InputError(f"no cycle to reproduce: {path} is missing (run `ratchet retrain` first)")
        raw = json.loads(path.read_text())
        return Cycle(
            cycle_id=str(raw["cycle_id"]),
            new_batches=tuple(raw["new_batches"]),
            old_batches=tuple(raw["old_batches"]),
            parent_version=raw["parent_version"],
            strategy=str(raw["strategy"]),
        )

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=1) + "\n")


def make_cycle(
    new_batches: list[str],
    old_batches: list[str],
    parent: str | None,
    strategy: str,
    params: Params,
    retries: dict[str, str] | None = None,
) -> Cycle:
    # a requeued batch retries with the same inputs as the rejected cycle: the version it answers
    # is part of the key, so the retry is a new cycle and not a resume of the rejected one
    key = json.dumps(
        [new_batches, old_batches, parent, strategy, params.digest()] + ([retries] if retries else [])
    )
    return Cycle(
        cycle_id=hashlib.sha256(key.encode()).hexdigest()[:12],
        new_batches=tuple(new_batches),
        old_batches=tuple(old_batches),
        parent_version=parent,
        strategy=strategy,
    )


def open_registry(ws: Workspace, params: Params | None = None) -> Registry:
    """The workspace's registry, in the one place that decides which MLflow stores it lives in.

    Tracking: MLFLOW_TRACKING_URI, else params registry.tracking_uri, else the workspace's own sqlite
    file under mlruns/. Registry: MLFLOW_REGISTRY_URI, else registry.registry_uri (unless the tracking
    URI came from the environment), else the tracking URI.
    """
    from ratchet.registry import Registry

    p = params or ws.params()
    env_tracking = os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = env_tracking or p.registry.tracking_uri or ws.tracking_uri
    # a tracking URI from the environment overrides params.yaml's registry too: it names the whole store
    registry_uri = (
        os.environ.get("MLFLOW_REGISTRY_URI")
        or (None if env_tracking else p.registry.registry_uri)
        or tracking_uri
    )
    local = tracking_uri == ws.tracking_uri
    if ws.tracking_uri in (tracking_uri, registry_uri):  # mlruns/ only for the workspace's own store
        ws.mlruns.mkdir(parents=True, exist_ok=True)
    return Registry(
        tracking_uri,
        registry_uri,
        p.registry.model_name,
        p.registry.experiment,
        # the local store keeps artifacts beside it; any other store (a server) decides for itself
        artifact_location=ws.artifact_uri if local else None,
    )


def ledger(ws: Workspace, registry: Registry) -> list[BatchState]:
    """Every ingested batch, oldest first, with where it stands: pending, learned, held or dropped."""
    champion = registry.champion()
    learned = set(champion.tag_list("batches_seen")) if champion else set()
    return batch_states(
        [b.batch_id for b in catalog.list_batches(ws.data_dir)],
        registry.decided(),
        learned,
        registry.batch_marks(),
    )


def plan(ws: Workspace, strategy: str | None = None) -> Cycle | None:
    """The next cycle: the pending batches (never decided on, or requeued), from the current champion.

    Held and dropped batches stay out. A cycle trains with one strategy: without an explicit one,
    it takes the oldest pending batch's (a requeue may ask for its own) and leaves batches that
    asked for another to the next cycle.
    """
    params = ws.params()
    if strategy is not None:
        check_strategy(strategy)
    registry = open_registry(ws, params)
    registry.ensure_store()
    champion = registry.champion()
    pending = [s for s in ledger(ws, registry) if s.state == "pending"]
    if not pending:
        return None
    chosen = strategy or pending[0].strategy or params.train.strategy
    if strategy is None:
        pending = [s for s in pending if (s.strategy or params.train.strategy) == chosen]
    cycle = make_cycle(
        [s.batch_id for s in pending],
        champion.tag_list("batches_seen") if champion else [],
        champion.version if champion else None,
        chosen,
        params,
        {s.batch_id: s.retry_of for s in pending if s.retry_of is not None},
    )
    cycle.save(ws.cycle_path)
    return cycle


def stage_dir(ws: Workspace, name: str) -> Path:
    return ws.artifacts / name


@dataclass(frozen=True)
class Outcome:
    """What one cycle did, for the demo table, `ratchet retrain` output and the flow's return value."""

    cycle_id: str
    version: str
    parent: str | None
    batches: tuple[str, ...]
    strategy: str
    metrics: dict[str, dict[str, float | None]]
    promote: bool
    action: str  # promoted | rejected | challenger (dry run)
    reasons: tuple[str, ...]
    resumed: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def record(ws: Workspace, cycle: Cycle) -> Any:
    """Commit the cycle (cycle.json, dvc.lock, report) and register the candidate with its lineage."""
    from ratchet.registry import CandidateRecord

    params = ws.params()
    # dvc commit records the stage outputs this process just produced in dvc.lock,
    # exactly as `dvc repro` would have: the lock then names this candidate's inputs and outputs
    versioning.dvc(ws.root, "commit", "-f", "-q")
    eval_dir = stage_dir(ws, EVAL)
    commit = versioning.commit(
        ws.root,
        ["cycle.json", "dvc.lock", "artifacts"],
        f"cycle {cycle.cycle_id}: candidate for {', '.join(cycle.new_batches)}",
    )
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    decision = json.loads((eval_dir / "decision.json").read_text())
    history = json.loads((stage_dir(ws, CANDIDATE) / "history.json").read_text())
    rec = CandidateRecord(
        cycle_id=cycle.cycle_id,
        parent_version=cycle.parent_version,
        new_batches=cycle.new_batches,
        seen_batches=cycle.old_batches + cycle.new_batches,
        data_version=str(versioning.data_version(ws.root)),
        git_commit=commit,
        strategy=cycle.strategy,
        params=dict(_flatten(dataclasses.asdict(params))),
        params_hash=params.digest(),
        history=history,
        metrics=metrics,
        promote=bool(decision["promote"]),
        reasons=tuple(decision["reasons"]),
        summary=str(decision["summary"]),
        checkpoint_dir=stage_dir(ws, CANDIDATE) / "checkpoint",
        report_files=[eval_dir / "report.md", eval_dir / "metrics.json", eval_dir / "decision.json"],
    )
    return open_registry(ws, params).log_candidate(rec)


def apply(ws: Workspace, cycle: Cycle, version: Any, dry_run: bool, resumed: bool) -> Outcome:
    """Promote (move @champion) or leave rejected; a dry run marks a passing candidate @challenger."""
    registry = open_registry(ws)
    promote = version.tag("decision") == "promote"
    if promote and dry_run:
        registry.mark_challenger(version.version)
        action = "challenger"
    elif promote:
        registry.promote(version.version, expected_parent=cycle.parent_version)
        action = "promoted"
    else:
        registry.reject(version.version)
        action = "rejected"
    return Outcome(
        cycle_id=cycle.cycle_id,
        version=version.version,
        parent=cycle.parent_version,
        batches=cycle.new_batches,
        strategy=cycle.strategy,
        metrics=version.metrics,
        promote=promote,
        action=action,
        reasons=version.reasons,
        resumed=resumed,
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
