"""The use cases: what a person or a schedule asks of ratchet. `cli`, `demo`, the flows' callers
and the tests call these; nothing here prints except through the callbacks it is given.

Each opens the workspace, takes its lock where it writes, and raises RatchetError (one line) for
anything a user can cause.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ratchet.errors import InputError, RatchetError
from ratchet.workspace import Workspace, open_workspace

if TYPE_CHECKING:  # lazy at run time: these import numpy, mlflow or prefect
    from ratchet.cycle import Outcome
    from ratchet.data.catalog import BatchInfo
    from ratchet.data.ingest import ProgressFn
    from ratchet.data.journal import Intent
    from ratchet.data.versioning import DataVersion
    from ratchet.intake import InboxRun, Ingested
    from ratchet.ledger import BatchMark, BatchState, MarkAction, ReviewAction
    from ratchet.registry import Event, VersionInfo
    from ratchet.replay import Replayed


def init(
    directory: Path,
    model_name: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    tracking_uri: str | None = None,
    remote: str | None = None,
    git_remote: str | None = None,
) -> tuple[Workspace, list[str]]:
    """Create, complete or (with a git remote that has a history) join a workspace, its remotes and
    its MLflow store; returns what it did."""
    from ratchet.data import remotes
    from ratchet.registry import open_registry
    from ratchet.workspace import init_workspace

    ws, done = init_workspace(
        directory,
        model_name=model_name,
        image_size=image_size,
        channels=channels,
        tracking_uri=tracking_uri,
        remote=remote,
        git_remote=git_remote,
    )
    with ws.lock():
        remotes.join(ws.root, ws.params().remotes, done.append)
    open_registry(ws).ensure_store()
    return ws, done


def ingest(
    workspace: Path,
    source: Path,
    progress: ProgressFn | None = None,
    version: bool = True,
    recovered: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Ingested:
    """Ingest one batch and (unless told not to) version it with DVC, as one transaction
    (`ratchet.data.journal`). An ingest a killed process left is finished first, and `recovered`
    told what that did. A versioned batch is announced to a configured Prefect API (`announce`)."""
    from ratchet import intake

    ws = open_workspace(workspace)
    params = ws.params()
    if not source.exists():
        raise InputError(f"batch not found: {source}")
    with ws.lock():
        done = intake.ingest(ws, params, source, progress, version, recovered)
    if version and done.report.batch_id is not None:
        announce(ws, done.report.batch_id, warn)
    return done


def announce(ws: Workspace, batch_id: str, warn: Callable[[str], None] | None) -> None:
    """Tell a configured Prefect API that a batch was versioned (the event a deployment of `ratchet
    deploy` is triggered by); a failure is one line for `warn`, never a failed ingest."""
    if not prefect_api_configured():  # nothing to tell, and no reason to import Prefect
        return
    from ratchet.flows.events import batch_ingested

    warning = batch_ingested(ws.root, batch_id)
    if warning and warn is not None:
        warn(warning)


def _checked(workspace: Path, strategy: str | None) -> Workspace:
    """The workspace, its params and the strategy asked for, checked: bad ones fail in one line
    before Prefect starts."""
    from ratchet.train import strategies

    ws = open_workspace(workspace)
    ws.params()
    if strategy is not None:
        strategies.check(strategy)
    return ws


def settle(workspace: Path, strategy: str | None = None) -> bool:
    """Whether a retrain would run a cycle now. Does the housekeeping a cycle's plan does first
    (`cycle.would_train`, which prints what it did, as the flow's plan does), under the lock, without
    Prefect. A refusal on the way (data/ changed, a lost registry, a busy workspace) is left
    to the flow, whose plan meets it again and reports it as any failed run: True."""
    from ratchet import cycle

    ws = _checked(workspace, strategy)
    try:
        with ws.lock():
            needed = cycle.would_train(ws, strategy)
    except RatchetError:
        return True
    return needed


def prefect_api_configured() -> bool:
    """Whether Prefect's settings name an API (PREFECT_API_URL, from the environment, the active
    profile or a settings file of the current directory): then a cycle runs as the Prefect flow,
    on that server. Without one, Prefect would start a temporary server for each command (over ten
    seconds), so the steps run directly. Prefect itself is asked only where something could name an
    API, since importing it takes seconds."""
    import os
    import sys

    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    files = {
        Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml"): "PREFECT_API_URL",
        Path(".env"): "PREFECT_API_URL",
        Path("prefect.toml"): "",
        Path("pyproject.toml"): "tool.prefect",
    }
    if "prefect" not in sys.modules and not any(
        f.is_file() and marker in f.read_text(errors="replace") for f, marker in files.items()
    ):
        return False
    from ratchet.flows.events import api_url

    return api_url() is not None


def retrain(workspace: Path, dry_run: bool = False, strategy: str | None = None) -> Outcome | None:
    """One cycle over the pending batches (the Prefect flow where a Prefect API is configured, the
    same steps directly otherwise); None when nothing is pending."""
    from ratchet import cycle

    ws = _checked(workspace, strategy)
    if not prefect_api_configured():
        return cycle.run(ws, dry_run, strategy)
    from ratchet.flows.retrain import retrain as flow

    # a person at a terminal answers with `ratchet approve`: the command never pauses for the Prefect UI
    outcome: Outcome | None = flow(
        workspace=str(ws.root), dry_run=dry_run, strategy=strategy, wait_for_review=False
    )
    return outcome


def inbox(workspace: Path) -> InboxRun:
    """Version every complete batch in the workspace's inbox, then, if one was versioned or a batch
    is pending, run one cycle (the Prefect flow `ingest-and-retrain` where a Prefect API is
    configured, the same steps directly otherwise)."""
    from ratchet import cycle, intake

    # fail with one line before starting Prefect: a local inbox where it cannot be, an S3 one out of reach
    ws = open_workspace(workspace)
    box = intake.open_inbox(ws, ws.params())
    if isinstance(box, intake.S3Inbox):
        box.scan()
    if not prefect_api_configured():
        return intake.run_inbox(ws, cycle.run)
    from ratchet.flows.inbox import ingest_and_retrain

    run: InboxRun = ingest_and_retrain(workspace=str(ws.root))
    return run


def deploy(workspace: Path, say: Callable[[str], None]) -> str:
    """Create or update the workspace's deployment of `ingest-and-retrain` on the configured Prefect
    server (its work pool too): cron schedule, data-arrival trigger, one run at a time. Returns its id."""
    ws = _checked(workspace, None)
    from ratchet.flows.deploy import deploy as register

    deployment_id: str = register(ws, say)
    return deployment_id


def worker(workspace: Path, say: Callable[[str], None]) -> None:
    """Run a Prefect process worker on the workspace's work pool until Ctrl-C or SIGTERM."""
    ws = _checked(workspace, None)
    from ratchet.flows.deploy import work

    work(ws, say)


@dataclass(frozen=True)
class Status:
    model_name: str
    tracking_uri: str  # the MLflow store in use
    versions: list[VersionInfo]  # oldest first
    batches: list[BatchState]  # every ingested batch, oldest first
    sources: dict[str, str]  # batch id -> the name it was ingested from
    interrupted: Intent | None  # an ingest a killed process left; the next ingest or retrain finishes it
    unpushed: str | None  # committed but not on the DVC remote yet (a failed push); the next command retries

    @property
    def champion(self) -> VersionInfo | None:
        return next((v for v in self.versions if v.status == "champion"), None)

    @property
    def awaiting(self) -> list[str]:
        """Versions marked @challenger (manual approval or a dry run), waiting for a person."""
        return [v.version for v in self.versions if v.action == "challenger"]

    def in_state(self, state: str) -> list[str]:
        return [b.batch_id for b in self.batches if b.state == state]


def status(workspace: Path) -> Status:
    from ratchet.cycle import ledger
    from ratchet.data import catalog, journal, versioning
    from ratchet.registry import open_registry

    ws = open_workspace(workspace)
    registry = open_registry(ws)
    registry.ensure_store()
    return Status(
        model_name=registry.name,
        tracking_uri=registry.tracking_uri,
        versions=registry.versions(),
        batches=ledger(ws, registry),
        sources={b.batch_id: b.source_name for b in catalog.list_batches(ws.data_dir)},
        interrupted=journal.pending(ws.root),
        unpushed=versioning.unpushed(ws.root),
    )


def find_batch(states: list[BatchState], batches: list[BatchInfo], name: str) -> BatchState:
    """A batch by id, unique id prefix or the name it was ingested from."""
    by_id = {s.batch_id: s for s in states}
    matches = sorted(
        {b.batch_id for b in batches if b.batch_id == name}
        or {b.batch_id for b in batches if name in (b.source_name, Path(b.source_name).stem)}
        or {b.batch_id for b in batches if b.batch_id.startswith(name)}
    )
    if not matches:
        known = ", ".join(b.batch_id for b in batches) or "none"
        raise InputError(f"no batch {name!r} in this workspace (known: {known})")
    if len(matches) > 1:
        raise InputError(f"{name!r} names several batches ({', '.join(matches)}): give the batch id")
    return by_id[matches[0]]


def _who(by: str | None) -> str:
    try:
        return by or getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry: a bare container
        raise InputError("cannot tell who you are: pass --by NAME") from None


def requeue(
    workspace: Path, batch: str, reason: str, by: str | None = None, strategy: str | None = None
) -> tuple[BatchState, BatchMark]:
    """Put a held (or dropped) batch back in the queue, on record; returns it as it was, and the mark."""
    from ratchet.train import strategies

    if strategy is not None:
        strategies.check(strategy)
    return _mark(workspace, batch, "requeue", reason, _who(by), strategy)


def drop(workspace: Path, batch: str, reason: str, by: str | None = None) -> tuple[BatchState, BatchMark]:
    """Retire a held or pending batch on record, never to train on; returns it as it was, and the mark."""
    return _mark(workspace, batch, "drop", reason, _who(by), None)


def _mark(
    workspace: Path, batch: str, action: MarkAction, reason: str, by: str, strategy: str | None
) -> tuple[BatchState, BatchMark]:
    from ratchet.cycle import ledger
    from ratchet.data import catalog
    from ratchet.ledger import BatchMark
    from ratchet.registry import now, open_registry

    ws = open_workspace(workspace)
    with ws.lock():
        registry = open_registry(ws)
        registry.ensure_store()
        state = find_batch(ledger(ws, registry), catalog.list_batches(ws.data_dir), batch)
        allowed = ("held", "dropped") if action == "requeue" else ("held", "pending")
        if state.state not in allowed:
            raise InputError(
                f"batch {state.batch_id} is {state.state}: only {' or '.join(allowed)} batches can be "
                + ("requeued" if action == "requeue" else "dropped")
            )
        mark = BatchMark(
            action=action,
            reason=reason,
            by=by,
            at=now(),
            after_version=state.version,
            strategy=strategy,
        )
        registry.mark_batch(state.batch_id, mark)
    return state, mark


def review(
    workspace: Path, version: str, action: ReviewAction, reason: str, by: str | None = None
) -> VersionInfo:
    """Approve or reject a waiting challenger, or override the gate's rejection; returns the version after."""
    from ratchet.ledger import Review
    from ratchet.registry import now, open_registry

    ws = open_workspace(workspace)
    who = _who(by)
    with ws.lock():
        registry = open_registry(ws)
        registry.review(version, Review(action, reason, who, now()))
        return registry.version(version)


def history(workspace: Path) -> list[Event]:
    """Every change of @champion and every decision on a version or a batch, oldest first."""
    from ratchet.registry import history as rebuild
    from ratchet.registry import open_registry

    registry = open_registry(open_workspace(workspace))
    registry.ensure_store()
    return rebuild(registry.versions(), registry.batch_mark_history())


def rollback(workspace: Path, to: str | None = None, by: str | None = None) -> tuple[str, str]:
    """Point @champion back at an earlier promoted version; returns (from, to)."""
    from ratchet.registry import open_registry

    ws = open_workspace(workspace)
    with ws.lock():
        return open_registry(ws).rollback(to, _who(by))


def replay(workspace: Path, to: str | None, into: Path | None, say: Callable[[str], None]) -> list[Replayed]:
    """Rebuild the workspace's cycles (up to `to`: a version number or cycle id prefix) from git and
    its DVC remote in a clone under `into` (kept; a temporary directory otherwise), comparing each
    with its record; `say` hears a line as each cycle starts and ends."""
    from ratchet import replay as chain

    return chain.replay(open_workspace(workspace), to, into, say)


def reference_data(directory: Path, on_batch: Callable[[str, str | None], None] | None = None) -> DataVersion:
    """Regenerate the committed reference stream into DIR/data, byte for byte (no commit, no push),
    and the parent path of a bootstrap cycle (the no-parent marker, tracked by parent.dvc)."""
    import tempfile

    from ratchet.cycle import track_parent
    from ratchet.data import versioning
    from ratchet.data.digits import digits_stream
    from ratchet.stages.inputs import Cycle

    ws = open_workspace(directory)
    with tempfile.TemporaryDirectory() as incoming:
        for batch in digits_stream():
            done = ingest(ws.root, batch.save_npz(Path(incoming)), version=False)
            if on_batch is not None:
                on_batch(batch.name, done.report.batch_id)  # None: already present
    # cache what was regenerated under data.dvc's hash; if the hash moved, the data is not that version
    versioning.dvc(ws.root, "commit", "-f", versioning.DATA_DVC)
    if versioning.git(ws.root, "status", "--porcelain", "--", versioning.DATA_DVC).strip():
        versioning.git(ws.root, "checkout", "--", versioning.DATA_DVC)
        raise RatchetError("the regenerated reference data does not match data.dvc: not that data version")
    paths = ws.stage_paths()
    if Cycle.load(paths.cycle).parent_version is None:
        # a bootstrap's parent is the no-parent marker: regenerated too, so `dvc repro` needs no remote
        track_parent(ws, None)
    return versioning.data_version(ws.root)
