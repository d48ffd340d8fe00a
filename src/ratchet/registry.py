"""The only door to MLflow: runs, registered versions, lineage tags, aliases, promotion, rollback.

Conventions: one registered model per workspace; alias `champion` serves, alias `challenger` marks a
candidate that passed the gate but waits for approval (dry runs, manual approval). The record of a
version lives in the `ratchet.*` tags of the run that made it: lineage, metrics, the gate's reasons,
and what was done since (outcome, review, promotion, rollbacks). The version itself carries what a
reviewer reads in the UI: six plain tags (`DISPLAY`) rewritten from that record whenever it changes,
and a description led by the verdict and the reason that decided it. The registered model's
description lists every change of the champion.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, cast, get_args

from ratchet import faults
from ratchet.errors import RatchetError
from ratchet.ledger import BatchMark, Decided, Restoration, Review, marks_from_json, marks_to_json
from ratchet.metrics import MODELS, SPLITS, Action, CycleMetrics, Headline, Split, Verdict
from ratchet.stages.inputs import code_version

PREFIX = "ratchet."
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
RUN_VERSION = "model_version"  # the run's tag naming the version it registered
RUN_MODEL = "model"  # the run's tag naming the registered model it is a cycle of
BATCH_MARK = PREFIX + "batch."  # registered-model tag per batch: its requeues and drops, a JSON list
# the version tags a reviewer reads in the versions table; everything else is on the run
DISPLAY = ("verdict", "parent", "strategy", "data", "old accuracy", "new accuracy")
MODEL_DESCRIPTION = "Managed by ratchet: the champion only moves forward."
# The guard (`Registry.guard`): a registered model named `<model>.lock` exists while a worker holds it.
# Creating a registered model whose name exists fails (the store's unique key on the name), on a
# tracking server as on a sqlite file, so only one worker at a time holds it. Its tags say who holds
# it, for what, and until when; a lock past its expiry is taken to be left by a dead process.
LOCK_SUFFIX = ".lock"
LOCK_DESCRIPTION = "Held by ratchet while a worker registers or promotes a version of {model}; not a model."
GUARD_TTL = 900.0  # seconds a holder may keep the lock: registering (a model upload) takes seconds
GUARD_WAIT = 300.0  # seconds a worker waits for another's lock before it gives up
# MLflow's SQL stores keep registered-model and version descriptions and registered-model tag values
# in VARCHAR(5000) columns. SQLite ignores the length; PostgreSQL (and MySQL) refuse a longer value, so
# against a tracking server on PostgreSQL an unbounded text fails the write. Texts that grow (the
# champion history, a batch's marks, a person's reason) are kept within it.
TEXT_LIMIT = 5000
# What a registered version runs when it is loaded and asked to predict, so that it loads where ratchet
# is not installed: these ratchet modules (paths under the package) travel inside the model as its
# code, copied from the ratchet that trained it; these packages, pinned, are its pip requirements.
# tests/test_boundaries.py checks that the modules are exactly those serving.py reaches and that they
# import no other package.
SERVING_MODULES = (
    "__init__.py",
    "errors.py",
    "atomic.py",
    "serving.py",
    "train/__init__.py",
    "train/checkpoint.py",
    "train/memory.py",
    "train/model.py",
    "train/strategies/__init__.py",
)
SERVING_PACKAGES = ("mlflow", "torch", "torchvision", "numpy", "pandas")
if TYPE_CHECKING:  # mlflow is imported when a method needs it
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

    from ratchet.config import Params, Scalar
    from ratchet.workspace import Workspace

_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    description: str
    run_id: str
    created: str = ""  # ISO time the version was registered

    def tag(self, key: str, default: str = "") -> str:
        return self.tags.get(PREFIX + key, default)

    def tag_list(self, key: str) -> list[str]:
        return [x for x in self.tag(key).split(",") if x]

    @property
    def verdict(self) -> Verdict | None:
        """The gate's call, recorded with the version."""
        raw = self.tag("decision")
        return "promote" if raw == "promote" else "reject" if raw == "reject" else None

    @property
    def action(self) -> Action | None:
        """What was done about the verdict; None until the decision is applied."""
        raw = self.tag("outcome")
        return cast(Action, raw) if raw in get_args(Action) else None

    @property
    def status(self) -> str:
        if CHAMPION in self.aliases:
            return "champion"
        if self.tag("rolled_back_at"):
            return "rolled back"
        if self.tag("promoted_at"):
            return "promoted earlier"
        if self.verdict == "reject" or self.action == "rejected":
            return "rejected"
        if self.verdict == "promote":
            return "awaiting approval"
        return "unknown"

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(r for r in self.tag("reasons").split("\n") if r)

    @property
    def restorations(self) -> list[Restoration]:
        """Every rollback that made this version champion again, oldest first."""
        if raw := self.tag("restorations"):
            return Restoration.list_from_json(raw)
        if old := self.tag("restored_at"):  # one restoration, as it was kept before there could be more
            at, _, rest = old.partition(" ")
            return [Restoration(at, rest.strip("()").removeprefix("from version "), self.tag("restored_by"))]
        return []

    def display(self) -> dict[str, str]:
        """The version tags a reviewer reads in the versions table (`DISPLAY`), from the record."""
        failed = [r.split(": ")[1] for r in self.reasons if r.startswith("FAIL")]
        review = self.review
        if CHAMPION not in self.aliases and self.tag("rolled_back_at"):
            verdict = "rolled back"
        elif review is not None:
            verdict = {"approve": "approved", "reject": "rejected", "override": "overridden"}[review.action]
            verdict += f" by {review.by}"
        elif self.action == "rejected" or self.verdict == "reject":
            verdict = f"rejected: {', '.join(failed)}" if failed else "rejected"
        else:
            verdict = {"promoted": "promoted", "challenger": "awaiting approval"}.get(self.action or "", "?")
        commit = self.tag("data_version").partition(":")[0]
        return {
            "verdict": verdict,
            "parent": self.tag("parent_version") or "none",
            "strategy": self.tag("strategy"),
            "data": f"+{', '.join(self.tag_list('batches'))} @ {commit[:8]}",
            "old accuracy": self.headline_pair("old"),
            "new accuracy": self.headline_pair("new"),
        }

    def headline_pair(self, split: Split) -> str:
        """'0.995 -> 0.938': champion -> candidate on one split; the candidate alone without a champion."""
        m = self.metrics
        champion, candidate = m.champion.split(split), m.candidate.split(split)
        if candidate is None:
            return "-"
        return f"{champion:.3f} -> {candidate:.3f}" if champion is not None else f"{candidate:.3f}"

    @property
    def review(self) -> Review | None:
        """A person's approval, rejection or override; None when the gate's call stood alone."""
        raw = self.tag("review")
        return Review.from_json(raw) if raw else None

    @property
    def metrics(self) -> Headline:
        return Headline.from_tags(self.tag)

    @property
    def per_batch(self) -> dict[str, float]:
        """The version's accuracy on each batch's held-out set, as its cycle measured it."""
        return {str(k): float(v) for k, v in json.loads(self.tag("per_batch") or "{}").items()}

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "status": self.status,
            "aliases": list(self.aliases),
            "parent": self.tag("parent_version") or None,
            "batches": self.tag_list("batches"),
            "batches_seen": self.tag_list("batches_seen"),
            "data_version": self.tag("data_version"),
            "git_commit": self.tag("git_commit"),
            "strategy": self.tag("strategy"),
            "params_hash": self.tag("params_hash"),
            "decision": self.verdict,
            "metrics": self.metrics.to_json(),
            "reasons": list(self.reasons),
            "review": asdict(self.review) if self.review else None,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class CandidateRecord:
    """Everything a finished cycle hands over for one registered version."""

    cycle_id: str
    parent_version: str | None
    new_batches: Sequence[str]
    seen_batches: Sequence[str]
    data_version: str
    git_commit: str
    strategy: str
    params: dict[str, Scalar]  # flattened params.yaml, logged as run params
    params_hash: str
    history: Sequence[dict[str, float]]  # per epoch: epoch, loss, accuracy, seconds
    metrics: CycleMetrics
    verdict: Verdict
    reasons: Sequence[str]
    summary: str
    checkpoint_dir: Path
    report_files: Sequence[Path]
    plot_files: Sequence[Path] = ()  # logged under plots/
    # for an audit: what the parent was, where and with what it trained, what DVC recorded
    parent_hash: str | None = None  # content hash of the parent's checkpoint, as cycle.json names it
    parent_run_id: str | None = None  # the MLflow run that made the parent
    environment: Mapping[str, str] = field(default_factory=dict)  # python, libraries, device, threads
    dvc_hashes: Mapping[str, str] = field(default_factory=dict)  # path -> md5 of each input and output


class Registry:
    """One registered model and its experiment, in the tracking and registry stores the URIs name.

    `artifact_location` is where a new experiment keeps its artifacts; None leaves it to the store
    (a tracking server's default artifact root). Which URIs to use is `open_registry` below's call.
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str,
        model_name: str,
        experiment: str,
        artifact_location: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.name = model_name
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._held: str | None = None  # the token of the guard this Registry holds, if it does
        self._use_globally()

    def _use_globally(self) -> None:
        """Point mlflow's process-wide URIs (start_run, register_model, download_artifacts) here.

        Set here, not at import; and again before each use, as another Registry may have moved them.
        mlflow also copies them into MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI for child processes;
        those variables are put back as they were: they are the user's choice of store (see
        `open_registry` below), and the next workspace opened here or in a child must not inherit this one.
        """
        import mlflow

        saved = {var: os.environ.get(var) for var in _URI_VARS}
        try:
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.registry_uri)
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value

    def ensure_store(self) -> str:
        """Create the experiment and the registered model; idempotent, also when two workers start
        on a new model at once (the one whose create is refused uses what the other made)."""
        client, name = self.client, self.experiment
        exp = client.get_experiment_by_name(name)
        if exp is None:
            _unless_exists(lambda: client.create_experiment(name, artifact_location=self.artifact_location))
            exp = client.get_experiment_by_name(name)
            assert exp is not None  # noqa: S101 - created just now, by this worker or another
        if not client.search_registered_models(f"name='{self.name}'"):
            _unless_exists(lambda: client.create_registered_model(self.name, description=MODEL_DESCRIPTION))
        return str(exp.experiment_id)

    # ---- the guard -----------------------------------------------------------------------------

    @property
    def lock_name(self) -> str:
        return self.name + LOCK_SUFFIX

    @contextlib.contextmanager
    def guard(self, what: str, ttl: float = GUARD_TTL, wait: float = GUARD_WAIT) -> Iterator[None]:
        """Hold the model's lock (`LOCK_SUFFIX`) while `what` runs: the steps that must not interleave
        with another worker's on the same registered model (finding-or-registering a cycle's version,
        checking the champion and moving it). Waits up to `wait` seconds for another holder; a lock
        past its expiry (`ttl` after it was taken), or held by an ended process of this machine, is
        broken as left by a dead one (`_abandoned`). Re-entering on the same Registry holds nothing more."""
        if self._held is not None:
            yield
            return
        token = self._acquire(what, ttl, wait)
        self._held = token
        try:
            yield
        finally:
            self._held = None
            self._release(token)

    def _acquire(self, what: str, ttl: float, wait: float) -> str:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        deadline, pause = time.monotonic() + wait, 0.05
        while True:
            tags = {"holder": token, "what": what, "since": now(), "expires": f"{time.time() + ttl:.3f}"}
            try:
                description = LOCK_DESCRIPTION.format(model=self.name)
                self.client.create_registered_model(self.lock_name, tags=tags, description=description)
                return token
            except MlflowException as exc:
                # the server answers a refused create by reading the lock back; when its holder
                # released it in between, that read says "does not exist": taken and freed, retry
                if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    continue
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            held = self._lock_tags()
            if held is None:
                continue  # released between the two requests
            if held.get("holder") == token:
                return token  # a retried request whose first attempt had taken it
            if _abandoned(held):
                self._break(held)
                continue
            if time.monotonic() > deadline:
                raise RatchetError(
                    f"the registry of {self.name} is busy: {held.get('holder', '?')} has been "
                    f"{held.get('what', '?')} since {held.get('since', '?')}; try again later "
                    f"(its lock {self.lock_name} expires at {_iso(int(_float(held.get('expires')) * 1000))})"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _lock_tags(self) -> dict[str, str] | None:
        """The lock's tags (holder, what, since, expires); None when nobody holds it."""
        return self._model_tags(self.lock_name)

    def _model_tags(self, name: str) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        try:
            return dict(self.client.get_registered_model(name).tags or {})
        except MlflowException as exc:
            if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return None
            raise

    def _break(self, stale: dict[str, str]) -> None:
        """Remove an abandoned lock (`_abandoned`), and only that one: it is renamed aside first (a
        rename, like the create, succeeds for one worker only), then deleted if it is still the
        abandoned holder's. A fresh lock that another worker took between the look and the rename is
        put back."""
        from mlflow.exceptions import MlflowException

        aside = f"{self.lock_name}.broken.{uuid.uuid4().hex[:12]}"
        try:
            self.client.rename_registered_model(self.lock_name, aside)
        except MlflowException:
            return  # another worker broke it, or its holder released it, first
        moved = self._model_tags(aside) or {}
        if moved.get("holder") == stale.get("holder"):
            self.client.delete_registered_model(aside)
            print(
                f"broke the registry lock of {self.name}: {stale.get('holder', '?')} took it for "
                f"{stale.get('what', '?')} at {stale.get('since', '?')} and never gave it back"
            )
            return
        try:
            self.client.rename_registered_model(aside, self.lock_name)
        except MlflowException:  # a third worker holds it now: the one set aside finds out at its check
            self.client.delete_registered_model(aside)

    def _check_held(self) -> None:
        """Before a write the guard protects: the lock is still this worker's. It is not when it was
        held past its expiry and another worker broke it; then nothing is written."""
        if self._held is None:
            return
        if (self._lock_tags() or {}).get("holder") != self._held:
            raise RatchetError(
                f"not writing to {self.name}: this worker's registry lock expired and another worker "
                "took it over; run `ratchet status`, then retry"
            )

    def _release(self, token: str) -> None:
        if (self._lock_tags() or {}).get("holder") == token:  # never another worker's lock
            self.client.delete_registered_model(self.lock_name)

    # ---- reading -------------------------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        found = self.client.search_model_versions(f"name='{self.name}'")
        if not found:
            return []
        # aliases are authoritative on the registered model; some stores omit them on search results
        alias_map: dict[str, list[str]] = {}
        for alias, version in self._aliases().items():
            alias_map.setdefault(version, []).append(alias)
        records = self._run_records()
        infos = [
            self._info(mv, alias_map.get(str(mv.version), []), records.get(mv.run_id or "")) for mv in found
        ]
        return sorted(infos, key=lambda i: int(i.version))

    def has_versions(self) -> bool:
        """Whether any version is registered: one row read, where `versions` reads every run."""
        return bool(self.client.search_model_versions(f"name='{self.name}'", max_results=1))

    def version(self, version: str) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version(self.name, version))
        except MlflowException as exc:
            raise RatchetError(f"no version {version} of {self.name}") from exc

    def champion(self) -> VersionInfo | None:
        """The version @champion points at; None while there is none (or no registered model yet)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import (
            INVALID_PARAMETER_VALUE,
            RESOURCE_DOES_NOT_EXIST,
            ErrorCode,
        )

        try:
            mv = self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException as exc:
            code = exc.error_code
            if code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):  # no registered model
                return None
            # an unset alias is INVALID_PARAMETER_VALUE (sqlite and REST stores), as is a bad name:
            # None only when the model really has no such alias
            if code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and CHAMPION not in self._aliases():
                return None
            raise
        return self._info(mv)

    def find_cycle(self, cycle_id: str) -> VersionInfo | None:
        """The version a cycle registered (the lowest, should there be several); None if none did."""
        runs = {
            run_id
            for run_id, tags in self._run_records().items()
            if tags.get(PREFIX + "cycle_id") == cycle_id
        }
        found = [mv for mv in self.client.search_model_versions(f"name='{self.name}'") if mv.run_id in runs]
        if not found:
            return None
        first = min(found, key=lambda mv: int(mv.version))
        # search results carry no aliases in every store: the version itself does
        return self._info(self.client.get_model_version(self.name, str(first.version)))

    def _run_records(self) -> dict[str, dict[str, str]]:
        """The `ratchet.*` tags of every run in the experiment, by run id: one query for all versions."""
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return {}
        runs = self.client.search_runs([exp.experiment_id], max_results=50_000)
        return {run.info.run_id: _record_tags(run.data.tags) for run in runs}

    def _info(
        self, mv: ModelVersion, aliases: Sequence[str] | None = None, record: dict[str, str] | None = None
    ) -> VersionInfo:
        """A registry ModelVersion as a VersionInfo: its tags merged with its run's record, which wins
        (a version registered before the record moved to the run keeps it in its own tags)."""
        from mlflow.exceptions import MlflowException

        if record is None and mv.run_id:
            try:
                record = _record_tags(self.client.get_run(mv.run_id).data.tags)
            except MlflowException:  # the run was deleted: what the version carries is all there is
                record = {}
        return VersionInfo(
            version=str(mv.version),
            tags=dict(mv.tags or {}) | (record or {}),
            aliases=tuple(sorted((getattr(mv, "aliases", None) or []) if aliases is None else aliases)),
            description=mv.description or "",
            run_id=mv.run_id or "",
            created=_iso(mv.creation_timestamp) if mv.creation_timestamp else "",
        )

    def created_at(self) -> float | None:
        """When the registered model was created (unix seconds); None if it does not exist."""
        found = self.client.search_registered_models(f"name='{self.name}'")
        return found[0].creation_timestamp / 1000 if found else None

    def _aliases(self) -> dict[str, str]:
        model = self.client.get_registered_model(self.name)
        return {alias: str(v) for alias, v in (getattr(model, "aliases", None) or {}).items()}

    def decided(self) -> list[Decided]:
        """Every applied decision (promoted or rejected), for the batch ledger.

        A version registered but not yet applied (a crash) or only marked challenger (a dry run)
        decides nothing: its batches stay pending, and the next cycle with the same inputs resumes it.
        """
        return [
            Decided(
                version=v.version,
                batches=tuple(v.tag_list("batches")),
                promoted=v.action == "promoted",
                reasons=tuple(r for r in v.reasons if r.startswith("FAIL"))
                + ((v.review.sentence(),) if v.review and v.review.action == "reject" else ()),
            )
            for v in self.versions()
            if v.action in ("promoted", "rejected")
        ]

    def batch_marks(self) -> dict[str, BatchMark]:
        """The latest requeue or drop of each batch that has one."""
        return {batch: marks[-1] for batch, marks in self.batch_mark_history().items()}

    def batch_mark_history(self) -> dict[str, list[BatchMark]]:
        """Every requeue and drop of each batch that has one, oldest first."""
        return {
            batch: [mark for text in chunks for mark in marks_from_json(text)]
            for batch, chunks in self._mark_tags().items()
        }

    def _mark_tags(self) -> dict[str, list[str]]:
        """Each batch's mark tags, in order: `<batch>` holds the first marks, `<batch>.<n>` the n-th
        chunk after them (batch ids have no dot)."""
        found: dict[str, dict[int, str]] = {}
        for key, value in (self.client.get_registered_model(self.name).tags or {}).items():
            if key.startswith(BATCH_MARK):
                batch, _, n = key.removeprefix(BATCH_MARK).partition(".")
                found.setdefault(batch, {})[int(n or 0)] = value
        return {batch: [chunks[n] for n in sorted(chunks)] for batch, chunks in found.items()}

    def mark_batch(self, batch_id: str, mark: BatchMark) -> None:
        # appended, never replaced: a batch requeued twice keeps both. A tag holds TEXT_LIMIT characters,
        # so the marks fill numbered tags in turn; a chunk is written only when it changed
        stored = self._mark_tags().get(batch_id, [])
        marks = [m for text in stored for m in marks_from_json(text)]
        for n, text in enumerate(_chunk_marks([*marks, _fit_mark(mark)])):
            if n >= len(stored) or stored[n] != text:
                key = BATCH_MARK + batch_id + (f".{n}" if n else "")
                self.client.set_registered_model_tag(self.name, key, text)

    def download_checkpoint(self, version: str, dst: Path) -> Path:
        """The version's checkpoint directory (weights, spec, replay memory), copied under `dst`."""
        import mlflow

        self._use_globally()
        dst.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{self.name}/{version}", dst_path=str(dst)
        )
        ckpt = Path(local) / "artifacts" / "checkpoint"
        if not ckpt.is_dir():
            raise RatchetError(f"registry version {version} of {self.name} has no checkpoint artifact")
        return ckpt

    # ---- writing -------------------------------------------------------------------------------

    def register_cycle(self, rec: CandidateRecord) -> VersionInfo:
        """Register the cycle's candidate (`log_candidate`) unless a version of the same cycle is
        registered already: under the guard, so two workers finishing the same cycle register it once."""
        with self.guard(f"registering cycle {rec.cycle_id}"):
            if found := self.find_cycle(rec.cycle_id):
                raise RatchetError(
                    f"cycle {rec.cycle_id} is already registered as version {found.version} by another "
                    "worker: not registering it again"
                )
            return self.log_candidate(rec)

    def log_candidate(self, rec: CandidateRecord) -> VersionInfo:
        """One run (params, per-epoch metrics, evaluation, report, the record as tags) and one
        registered version with the display tags and the decision's summary as its description."""
        import mlflow

        self._use_globally()
        exp_id = self.ensure_store()
        tags = self._record(rec)
        headline = rec.metrics.headline()
        # the model's name from the start: workspaces sharing a server can share the experiment too,
        # and `repair` must tell its own runs from another workspace's cycle in flight
        owner = {PREFIX + RUN_MODEL: self.name}
        with mlflow.start_run(experiment_id=exp_id, run_name=f"cycle {rec.cycle_id}", tags=owner) as run:
            faults.reached("retrain:run-started")
            mlflow.set_tags(tags)
            mlflow.log_params({**rec.params, "strategy": rec.strategy, "batches": ",".join(rec.new_batches)})
            for epoch in rec.history:
                step = int(epoch["epoch"])
                mlflow.log_metrics(
                    {"train_loss": epoch["loss"], "train_accuracy": epoch["accuracy"]}, step=step
                )
            mlflow.log_metrics(
                {
                    f"{model}_{split}_accuracy": value
                    for model in MODELS
                    for split in SPLITS
                    if (value := headline.of(model).split(split)) is not None
                }
                # the gate's measurements, e.g. gate_forgetting_drop_pt, comparable across versions in the UI
                | {
                    f"gate_{check.replace(' ', '_')}_{key}": float(value)
                    for check, numbers in rec.metrics.gate.items()
                    for key, value in numbers.items()
                    if value is not None
                }
            )
            for path in rec.report_files:
                mlflow.log_artifact(str(path), artifact_path="report")
            for path in rec.plot_files:
                mlflow.log_artifact(str(path), artifact_path="plots")
            with warnings.catch_warnings():
                # the signature says what goes in; an example would cost a model load per cycle
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                info = self._log_model(rec)
            faults.reached("retrain:model-logged")
            run_id = run.info.run_id
        faults.reached("retrain:run-ended")
        display = VersionInfo("", tags, (), "", run_id).display()
        # MLflow prints "Registered model ... already exists" and "Created version ..." to stderr
        # itself, past its logger's level: ratchet says which version it made, once
        self._check_held()
        with contextlib.redirect_stderr(io.StringIO()):
            mv = mlflow.register_model(info.model_uri, self.name, tags=display)
        self.client.update_model_version(self.name, mv.version, description=_fit(rec.summary))
        faults.reached("retrain:registered")
        # the run names its version (the version names its run): `repair` adds it should a process die here
        self.client.set_tag(run_id, PREFIX + RUN_VERSION, str(mv.version))
        tags[PREFIX + RUN_VERSION] = str(mv.version)
        return VersionInfo(str(mv.version), display | tags, (), rec.summary, run_id)

    def _log_model(self, rec: CandidateRecord) -> ModelInfo:
        import mlflow.pyfunc

        with tempfile.TemporaryDirectory(prefix="ratchet-model-code-") as tmp:
            info: ModelInfo = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={"checkpoint": str(rec.checkpoint_dir)},
                # stored as code/ratchet/, which loading puts first on sys.path
                code_paths=[str(_stage_serving_code(Path(tmp)))],
                signature=_signature(rec.checkpoint_dir),
                # given, not inferred: inference costs seconds and guesses from the whole venv
                pip_requirements=model_requirements(),
            )
        return info

    def _record(self, rec: CandidateRecord) -> dict[str, str]:
        """The run's `ratchet.*` tags: the lineage, headline metrics and the gate's call."""
        code = code_version()
        tags = {
            "cycle_id": rec.cycle_id,
            "parent_version": rec.parent_version or "",
            "batches": ",".join(rec.new_batches),
            "batches_seen": ",".join(rec.seen_batches),
            "data_version": rec.data_version,
            "git_commit": rec.git_commit,
            "code_version": code.version,
            "code_source": code.source,
            "parent_hash": rec.parent_hash or "",
            "parent_run_id": rec.parent_run_id or "",
            "dvc_hashes": json.dumps(dict(rec.dvc_hashes), sort_keys=True),
            "strategy": rec.strategy,
            "params_hash": rec.params_hash,
            "decision": rec.verdict,
            "reasons": "\n".join(rec.reasons),
            # the candidate on each batch's held-out set: a row of the accuracy matrix later cycles draw
            "per_batch": json.dumps(rec.metrics.candidate.per_batch, sort_keys=True),
        }
        tags |= {f"env.{k}": v for k, v in rec.environment.items()}
        tags |= rec.metrics.headline().to_tags()
        return {PREFIX + k: v for k, v in tags.items()}

    def promote(self, version: str, expected_parent: str | None) -> None:
        """Move @champion to `version`, unless the champion moved since the candidate was evaluated.

        The alias moves first and the bookkeeping (promoted_at, the outcome) follows: a process that
        dies in between leaves a champion without an outcome, which `repair` finishes.
        """
        with self.guard(f"promoting version {version}"):
            if self._champion_version() != version:  # equal: a crash after the alias moved; finish the books
                self._check_parent(version, expected_parent)
                self._check_held()
                self.client.set_registered_model_alias(self.name, CHAMPION, version)
                faults.reached("retrain:alias-moved")
                # read back: a writer that bypassed the guard (an older ratchet) is said, not hidden
                now = self.champion()
                if now is None or now.version != version:
                    moved = now.version if now else "none"
                    raise RatchetError(
                        f"not promoting version {version}: @champion moved to {moved} "
                        "while it was being set; run `ratchet status`, then retrain"
                    )
            self._finish_promotion(version)

    def _champion_version(self) -> str | None:
        current = self.champion()
        return current.version if current else None

    def _check_parent(self, version: str, expected_parent: str | None) -> None:
        current = self.champion()
        now = current.version if current else None
        if now == expected_parent:
            return
        if current is not None and (current.tag("parent_version") or None) == expected_parent:
            raise RatchetError(
                f"not promoting version {version}: version {now}, evaluated against the same champion "
                f"{expected_parent or '(none)'}, was promoted first"
            )
        raise RatchetError(
            f"not promoting version {version}: it was evaluated against champion {expected_parent}, "
            f"but the champion is now {now}"
        )

    def _finish_promotion(self, version: str) -> None:
        if not self.version(version).tag("promoted_at"):
            self._write(version, "promoted_at", now())
        self._drop_alias(CHALLENGER, version)
        self._set_outcome(version, "promoted")

    def repair(self) -> list[str]:
        """Finish what a process killed mid-cycle left half-done; what it did, one line each.

        Run under the workspace lock, before a cycle: no other cycle of this workspace is running,
        so a run still RUNNING is an orphan.
        """
        done: list[str] = []
        champion = self.champion()
        if champion is not None and champion.action is None:
            self._finish_promotion(champion.version)
            done.append(
                f"version {champion.version}: @champion had moved, the promotion's records are finished"
            )
        for v in self.versions():  # what the UI shows, should a process have died before rewriting it
            self._show(v)
            if v.run_id and v.tags.get(PREFIX + RUN_VERSION) != v.version:
                self.client.set_tag(v.run_id, PREFIX + RUN_VERSION, v.version)
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            for run in self.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
                if run.data.tags.get(PREFIX + RUN_MODEL, self.name) != self.name:
                    continue  # another model's cycle, running now, on a shared server (untagged: made here)
                self.client.set_tag(
                    run.info.run_id, PREFIX + "failed", "the process stopped during the cycle"
                )
                self.client.set_terminated(run.info.run_id, status="FAILED")
                done.append(f"run {run.info.run_id}: left running by a stopped process, marked FAILED")
        return done

    def reject(self, version: str) -> None:
        self._set_outcome(version, "rejected")

    def review(self, version: str, review: Review) -> None:
        """A person's word on a version, on record: approve or reject a waiting @challenger, or
        override the gate's rejection. Approving and overriding promote exactly as the cycle does
        (only while the champion is still the version's parent)."""
        found = self.version(version)
        waiting = found.action == "challenger"
        if review.action in ("approve", "reject") and not waiting:
            raise RatchetError(
                f"version {version} is {found.status}, not a challenger awaiting review: "
                f"nothing to {review.action}"
                + (" (`ratchet override` promotes a rejected one)" if found.action == "rejected" else "")
            )
        if review.action == "override" and not (found.action == "rejected" and found.verdict == "reject"):
            raise RatchetError(
                f"version {version} is {found.status}: only a version the gate rejected can be overridden"
            )
        parent = found.tag("parent_version") or None
        if review.action != "reject" and self._champion_version() != version:
            self._check_parent(version, parent)  # before the record: a refused promotion leaves none
        # the record first: a process killed after it is finished by running the same command again
        self._write(version, "review", review.to_json())
        if not found.description.startswith(review.sentence()):
            self.client.update_model_version(
                self.name, version, description=_fit(f"{review.sentence()}\n\n{found.description}")
            )
        if review.action == "reject":
            self._drop_alias(CHALLENGER, version)
            self._set_outcome(version, "rejected")
        else:
            self.promote(version, expected_parent=parent)

    def mark_challenger(self, version: str) -> None:
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        self._set_outcome(version, "challenger")

    def _set_outcome(self, version: str, outcome: Action) -> None:
        # written last: until it is there, the cycle counts as unfinished and will be resumed
        self._write(version, "outcome", outcome)
        self._show(self.version(version))
        if outcome == "promoted":
            self._describe_model()

    def _write(self, version: str, key: str, value: str) -> None:
        """One entry of a version's record: a `ratchet.*` tag of the run that made it."""
        run_id = self.client.get_model_version(self.name, version).run_id
        if not run_id:
            raise RatchetError(f"version {version} of {self.name} has no run to keep its record")
        self.client.set_tag(run_id, PREFIX + key, value)

    def _show(self, v: VersionInfo) -> None:
        """Rewrite the version's display tags from its record, where they differ."""
        for key, value in v.display().items():
            if v.tags.get(key) != value:
                self.client.set_model_version_tag(self.name, v.version, key, value)

    def _describe_model(self) -> None:
        """The registered model's description: every change of the champion, newest first."""
        changes = [e for e in history(self.versions(), {}) if e.what in CHAMPION_CHANGES]
        head = [
            MODEL_DESCRIPTION,
            "",
            "Champion history, newest first:",
            "",
            "| when (UTC) | what | by | versions | reason |",
            "|---|---|---|---|---|",
        ]
        # the newest changes that fit in the store's TEXT_LIMIT; `ratchet history` keeps every one
        room = TEXT_LIMIT - sum(len(line) + 1 for line in head) - 100  # 100: the line on what is left out
        rows: list[str] = []
        for e in reversed(changes):
            when, reason = e.at[:19].replace("T", " "), _fit(e.reason, 200)
            row = f"| {when} | {e.what} | {e.by} | {e.versions} | {reason} |"
            room -= len(row) + 1
            if room < 0:
                break
            rows.append(row)
        if left := len(changes) - len(rows):
            rows += ["", f"{left} earlier changes: `ratchet history` lists every one."]
        self.client.update_registered_model(self.name, description="\n".join(head + rows))

    def rollback(self, to_version: str | None, by: str = "") -> tuple[str, str]:
        """Point @champion back at an earlier promoted version (default: the champion's parent)."""
        current = self.champion()
        if current is None:
            raise RatchetError("nothing to roll back: the registry has no champion")
        target = to_version or current.tag("parent_version")
        if not target:
            raise RatchetError(f"version {current.version} is the first champion: there is nothing before it")
        chosen = self.version(target)
        if not chosen.tag("promoted_at"):
            raise RatchetError(
                f"version {target} was never promoted ({chosen.status}): not rolling back to it"
            )
        with self.guard(f"rolling back to version {target}"):
            if self._champion_version() != current.version:
                raise RatchetError(
                    f"not rolling back: the champion moved from version {current.version} meanwhile; "
                    "run `ratchet status`, then retry"
                )
            self._check_held()
            self.client.set_registered_model_alias(self.name, CHAMPION, target)
        stamp = now()
        self._write(current.version, "rolled_back_at", stamp)
        # appended, never replaced: a version restored twice keeps both
        restored = [*chosen.restorations, Restoration(stamp, current.version, by or "-")]
        self._write(target, "restorations", Restoration.list_to_json(restored))
        for v in (current.version, target):
            self._show(self.version(v))
        self._describe_model()
        return current.version, target

    def _drop_alias(self, alias: str, version: str) -> None:
        if self._aliases().get(alias) == version:
            self.client.delete_registered_model_alias(self.name, alias)


@dataclass(frozen=True)
class Event:
    """One line of the champion history."""

    at: str  # ISO time
    # gate promote / gate reject / promoted / approve / reject / override / rollback / requeue / drop
    what: str
    by: str
    versions: str  # "1 -> 2", or the version concerned
    batches: str
    reason: str


CHAMPION_CHANGES = ("promoted", "approve", "override", "rollback")  # the events that move @champion


def history(versions: Sequence[VersionInfo], marks: dict[str, list[BatchMark]]) -> list[Event]:
    """Every change of @champion and every decision on a version or a batch, oldest first, rebuilt
    from the versions' records and the batches' marks."""
    events: list[Event] = []
    for v in versions:
        parent, batches = v.tag("parent_version") or "-", ", ".join(v.tag_list("batches"))
        failed = [r.removeprefix("FAIL: ") for r in v.reasons if r.startswith("FAIL")]
        verdict = f"gate {v.verdict}" if v.verdict else "gate ?"
        events.append(
            Event(v.created, verdict, "gate", v.version, batches, "; ".join(failed) or "every check passed")
        )
        if r := v.review:
            moved = f"{parent} -> {v.version}" if r.action != "reject" else v.version
            events.append(Event(r.at, r.action, r.by, moved, batches, r.reason))
        if v.tag("promoted_at") and not (v.review and v.review.action != "reject"):
            events.append(
                Event(v.tag("promoted_at"), "promoted", "gate", f"{parent} -> {v.version}", batches, "")
            )
        for back in v.restorations:
            events.append(Event(back.at, "rollback", back.by, f"{back.from_version} -> {v.version}", "", ""))
    for batch, batch_marks in marks.items():
        for mark in batch_marks:
            events.append(Event(mark.at, mark.action, mark.by, mark.after_version or "-", batch, mark.reason))
    return sorted(events, key=lambda e: e.at)


def _fit(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` cut to at most `limit` characters, the cut marked."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _fit_mark(mark: BatchMark) -> BatchMark:
    """The mark, its reason cut until its JSON fits in one tag (escapes can make it longer than the text)."""
    keep = len(mark.reason)
    fitted = mark
    while len(marks_to_json([fitted])) > TEXT_LIMIT and keep > 1:
        keep = keep * 3 // 4
        fitted = replace(mark, reason=_fit(mark.reason, keep))
    return fitted


def _chunk_marks(marks: Sequence[BatchMark]) -> list[str]:
    """A batch's marks, oldest first, as JSON lists of whole marks, each at most TEXT_LIMIT long.
    Every chunk but the last is full, so earlier chunks never change as marks are added."""
    chunks: list[list[BatchMark]] = [[]]
    for mark in marks:
        if chunks[-1] and len(marks_to_json([*chunks[-1], mark])) > TEXT_LIMIT:
            chunks.append([])
        chunks[-1].append(mark)
    return [marks_to_json(c) for c in chunks]


def _record_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith(PREFIX)}


def _unless_exists(create: Callable[[], object]) -> None:
    """Run `create`; a refusal because the thing already exists means another worker made it."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        create()
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _abandoned(lock: Mapping[str, str]) -> bool:
    """Whether a lock's holder is gone: past its expiry, or a process of this machine that has ended
    (a worker killed mid-cycle here is known dead at once; one on another machine, at the expiry)."""
    if _float(lock.get("expires")) < time.time():
        return True
    host, _, rest = lock.get("holder", "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process, alive
        return False
    return False


def _float(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def _iso(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def now() -> str:
    """The time stamp of every record (milliseconds: the history orders what one second holds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def model_requirements() -> list[str]:
    """The pip requirements of a registered version: every package its code imports, at this version.

    A local version label (torch's `+cpu`, `+cu130`) is left off, as MLflow does: package indexes
    hold the plain version, which is the same release.
    """
    return [f"{p}=={metadata.version(p).partition('+')[0]}" for p in SERVING_PACKAGES]


def _stage_serving_code(dst: Path) -> Path:
    """The ratchet modules a loaded version runs (`SERVING_MODULES`), copied from this ratchet into
    `dst/ratchet`: the package directory that `code_paths` stores with the model."""
    src, package = Path(__file__).parent, dst / "ratchet"
    for rel in SERVING_MODULES:
        target = package / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
    return package


def _signature(checkpoint_dir: Path) -> ModelSignature:
    """What the UI shows and pyfunc enforces: uint8 images (N, H, W, C) in; label, index, confidence
    out; an optional batch_size."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    from ratchet.serving import BATCH_SIZE

    spec = json.loads((checkpoint_dir / "spec.json").read_text())
    size, channels = int(spec["image_size"]), int(spec["in_channels"])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, channels))]),
        outputs=Schema(
            [ColSpec("string", "label"), ColSpec("long", "class_index"), ColSpec("float", "confidence")]
        ),
        # predict(images, params={"batch_size": n}): images per forward pass, which bounds memory
        params=ParamSchema([ParamSpec("batch_size", "long", BATCH_SIZE)]),
    )


def preload() -> None:
    """Import what registering a version imports, and build MLflow's map of installed packages,
    which logging a model builds first (half a second): for a warm process (`ratchet.warm`)."""
    import mlflow.pyfunc  # noqa: F401
    from mlflow.utils import requirements_utils

    build_map = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    if callable(build_map):
        build_map()


def open_registry(ws: Workspace, params: Params | None = None) -> Registry:
    """The workspace's registry, in the one place that decides which MLflow stores it lives in.

    Tracking: MLFLOW_TRACKING_URI, else params registry.tracking_uri, else the workspace's own sqlite
    file under mlruns/. Registry: MLFLOW_REGISTRY_URI, else registry.registry_uri (unless the tracking
    URI came from the environment), else the tracking URI.
    """
    p = params or ws.params()
    tracking_uri, registry_uri = _store_uris(ws, p)
    local = tracking_uri == ws.tracking_uri
    if ws.tracking_uri in (tracking_uri, registry_uri):  # mlruns/ only for the workspace's own store
        ws.mlruns.mkdir(parents=True, exist_ok=True)
        if moved_from := follow_move(ws, p.registry.experiment):
            print(f"workspace moved from {moved_from}: its MLflow store now reads the artifacts beside it")
    return Registry(
        tracking_uri,
        registry_uri,
        p.registry.model_name,
        p.registry.experiment,
        # the local store keeps artifacts beside it; any other store (a server) decides for itself
        artifact_location=ws.artifact_uri if local else None,
    )


# Where MLflow's sqlite store (the pinned MLflow 3) writes absolute artifact locations. A workspace's
# own store keeps its artifacts beside it, under mlruns/artifacts, but these columns name them by the
# directory the workspace was created in: tests/test_repro.py checks that no other column does.
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def follow_move(ws: Workspace, experiment: str) -> str | None:
    """Point the workspace's own store at the artifacts beside it, when the workspace was moved or
    copied since the store was made; returns the directory it was made in, None when unmoved.

    Without this a moved workspace fails to read its versions, and a copy reads (and writes!) the
    original's artifacts. One transaction: a process killed here leaves the store as it was.
    """
    import sqlite3
    from contextlib import closing
    from urllib.parse import unquote, urlparse

    db = ws.registry_db
    if not db.is_file():
        return None
    with closing(sqlite3.connect(db)) as con, con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'experiments'").fetchone():
            return None  # an empty file (a store emptied, or not made yet): MLflow makes the tables
        query = "SELECT artifact_location FROM experiments WHERE name = ?"
        row = con.execute(query, (experiment,)).fetchone()
        suffix = "/artifacts"
        if row is None or row[0] == ws.artifact_uri or not str(row[0]).endswith(suffix):
            return None  # unmoved, or a location ratchet did not choose
        old_uri = str(row[0])[: -len(suffix)]  # file:///old/mlruns
        new_uri = ws.mlruns.as_uri()
        old_path, new_path = Path(unquote(urlparse(old_uri).path)), ws.mlruns
        # the same directory as a URI and as a plain path (MLflow writes both forms)
        for old, new in ((old_uri, new_uri), (str(old_path), str(new_path))):
            for table, column in ARTIFACT_COLUMNS:
                con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                    f"WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old) + 1, old + "/"),
                )
    return str(old_path.parent)


def existing_registry(ws: Workspace) -> Registry | None:
    """The workspace's registry for reading only: None when it would be the workspace's own sqlite
    file and that file is missing (moved away, or never made), since opening it would create it."""
    p = ws.params()
    if ws.tracking_uri in _store_uris(ws, p) and not ws.registry_db.is_file():
        return None
    return open_registry(ws, p)


def _store_uris(ws: Workspace, p: Params) -> tuple[str, str]:
    """(tracking URI, registry URI), as `open_registry` describes."""
    env_tracking = os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = env_tracking or p.registry.tracking_uri or ws.tracking_uri
    # a tracking URI from the environment overrides params.yaml's registry too: it names the whole store
    registry_uri = (
        os.environ.get("MLFLOW_REGISTRY_URI")
        or (None if env_tracking else p.registry.registry_uri)
        or tracking_uri
    )
    return tracking_uri, registry_uri
