"""One retraining cycle, as steps: plan, run the stages, record, apply (`run`, directly or as the
Prefect flow's tasks).

The stages (`ratchet.stages`) are the same code `dvc repro` runs; this module adds what happens
around them: choosing the batches and the parent, committing the cycle, and talking to the registry.
Each step is safe to repeat after a crash: a cycle is identified by its inputs (`cycle_id`), and a
version already registered for that id is resumed, never registered twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ratchet import atomic, faults, state
from ratchet.config import Params, Scalar
from ratchet.data import catalog, journal, remotes, versioning
from ratchet.errors import InputError, RatchetError
from ratchet.ledger import BatchState, batch_states
from ratchet.metrics import Action, CycleMetrics, Headline, Verdict
from ratchet.registry import Registry, VersionInfo, open_registry
from ratchet.stages.inputs import NO_PARENT, NO_PARENT_TEXT, Cycle, code_version, content_hash
from ratchet.steps import Steps, Timed, directly
from ratchet.train import strategies
from ratchet.workspace import Workspace

if TYPE_CHECKING:
    from ratchet.stages.evaluate import Evaluation

# the libraries whose versions a version's record names (their releases can change the weights)
LINEAGE_PACKAGES = ("torchvision", "numpy", "mlflow", "dvc")  # and torch
# every cycle's commit says this (releases before this one did too): how git history counts cycles
CYCLE_COMMIT = "cycle {id}: candidate for {batches}"
# what a retrain says when `plan` finds nothing to train on (the flow and `ratchet retrain`'s fast path)
NOTHING_PENDING = "nothing to train on: no batch is pending (held and dropped batches wait for a person)"


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
        code=code_version(),
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
    registry, params = _settled(ws, strategy)
    try:
        cycle = next_cycle(ws, registry, params, strategy)
    except InputError:  # data/ unreadable (a manifest gone): said as the files that changed, if any
        _check_data(ws)
        raise
    if cycle is None:
        return None
    _check_data(ws)
    if ws.upgrade_pipeline():
        print("dvc.yaml: upgraded from an earlier release's (committed with this cycle)")
    champion = registry.champion()
    with tempfile.TemporaryDirectory() as download:
        checkpoint = registry.download_checkpoint(champion.version, Path(download)) if champion else None
        cycle = dataclasses.replace(cycle, parent_hash=track_parent(ws, checkpoint))
    cycle.save(ws.stage_paths().cycle)
    faults.reached("retrain:planned")
    return cycle


def run(
    ws: Workspace, dry_run: bool = False, strategy: str | None = None, step: Steps = directly
) -> Outcome | None:
    """Plan, train, evaluate, record and apply one cycle, under the workspace lock; returns the
    outcome, or None with nothing to train on. Says where the cycle's time went, and keeps it in
    `state.CYCLE_TIMES`."""
    timed, before = Timed(step), dict(versioning.SPENT)
    with ws.lock():
        cycle = timed("plan", plan)(ws, strategy)
        if cycle is None:
            print(NOTHING_PENDING)
            return None
        # a version registered for this exact cycle means an earlier run crashed after recording it
        version = timed("find-registered", find_registered)(ws, cycle)
        resumed, loop = version is not None, 0.0
        if version is None:
            timed("prepare", run_prepare)(ws)
            loop = timed("train", run_train)(ws)
            timed("evaluate", run_evaluate)(ws)
            version = timed("record", record)(ws, cycle)
        outcome = timed("apply-decision", apply)(ws, cycle, version, dry_run, resumed)
    waited = {tool: seconds - before.get(tool, 0.0) for tool, seconds in versioning.SPENT.items()}
    # this process's peak (a forked process's starts at its parent's: the warm process's imports)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = {
        "cycle_id": cycle.cycle_id,
        "steps": timed.seconds,
        "training_loop": loop,
        "commands": waited,
        "peak_rss_mb": peak_mb,
    }
    state.directory(ws.root)
    atomic.write_text(ws.root / state.CYCLE_TIMES, json.dumps(times, indent=2) + "\n")
    steps = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timed.seconds.items())
    commands = ", ".join(f"{tool} {seconds:.1f}s" for tool, seconds in waited.items())
    print(f"cycle {cycle.cycle_id} took {sum(timed.seconds.values()):.1f}s: {steps} (waiting on {commands})")
    return outcome


def find_registered(ws: Workspace, cycle: Cycle) -> VersionInfo | None:
    return open_registry(ws).find_cycle(cycle.cycle_id)


def would_train(ws: Workspace, strategy: str | None = None) -> bool:
    """Whether `plan` would make a cycle now: plan's own first half (the same housekeeping, which it
    does here, then the same choice), stopping before anything a cycle alone does. Under the lock.

    `ratchet retrain` asks this before starting Prefect: with nothing to train on it answers here,
    in seconds. False is final; True hands over to the flow, whose `plan` repeats the housekeeping
    (by then nothing is left to do) and makes the cycle.
    """
    registry, params = _settled(ws, strategy)
    return next_cycle(ws, registry, params, strategy) is not None


def _settled(ws: Workspace, strategy: str | None) -> tuple[Registry, Params]:
    """What comes before choosing a cycle: the strategy checked, what a killed process left finished
    (an ingest, a push, half-done registry records), the workspace brought up to its git remote (team
    mode), and the registry opened and found whole. Returns the registry and the params as they
    are after all that (a pull may change them)."""
    if strategy is not None:
        strategies.check(strategy)
    shared = ws.params().remotes
    # the remotes params.yaml names, before anything pushes (a fixed URL is what the retry needs)
    for line in remotes.configure(ws.root, shared):
        print(line)
    recovered = journal.recover(ws.root, ws.data_dir)
    if recovered:
        print(recovered)
    if pushed := versioning.push_unpushed(ws.root):
        print(pushed)
    # team mode: what other machines ingested and decided, before anything is planned from it
    remotes.sync(ws.root, shared, print)
    params = ws.params()
    registry = open_registry(ws, params)
    _check_not_lost(ws, registry)
    registry.ensure_store()
    for line in registry.repair():
        print(f"repaired: {line}")
    return registry, params


def _check_data(ws: Workspace) -> None:
    """Refuse to train on data/ unless it is the version data.dvc records. Asked only when there is
    a cycle to run: with nothing to train on, nothing reads data/ (and DVC is not even loaded)."""
    changed = versioning.data_changes(ws.root)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise InputError(
            f"data/ is not the version data.dvc records ({'; '.join(changed[:3])}{more}): not training on "
            "it; restore it with `dvc checkout --force data`"
        )


def next_cycle(ws: Workspace, registry: Registry, params: Params, strategy: str | None) -> Cycle | None:
    """The cycle the pending batches make now (its parent not yet tracked), or None: none pending,
    or under manual approval a challenger still awaiting review (said in one line). Writes nothing."""
    if params.review.approval == "manual":
        waiting = [v.version for v in registry.versions() if v.action == "challenger"]
        if waiting:
            # one candidate under review at a time: the next trains from the champion it decides
            print(f"version {', '.join(waiting)} awaits review: pending batches wait for the decision")
            return None
    champion = registry.champion()
    pending = [s for s in ledger(ws, registry) if s.state == "pending"]
    if not pending:
        return None
    chosen = strategy or pending[0].strategy or params.train.strategy
    if strategy is None:
        pending = [s for s in pending if (s.strategy or params.train.strategy) == chosen]
    return make_cycle(
        [s.batch_id for s in pending],
        champion.tag_list("batches_seen") if champion else [],
        champion.version if champion else None,
        chosen,
        params,
        {s.batch_id: s.retry_of for s in pending if s.retry_of is not None},
    )


def track_parent(ws: Workspace, checkpoint: Path | None) -> str | None:
    """Copy the parent's checkpoint directory (weights, spec, replay memory, strategy state) to the
    path dvc.yaml's prepare stage reads, `dvc add` it, and return its content hash for cycle.json.
    Without a parent (a bootstrap) the path holds only a marker, since DVC needs the dependency to
    exist, and the hash is None.

    The cycle's commit then names its parent by hash (the .dvc file), so `git checkout` and `dvc
    checkout` bring back exactly that parent, with no registry.
    """
    target = ws.stage_paths().parent
    shutil.rmtree(target, ignore_errors=True)
    if checkpoint is None:
        target.mkdir(parents=True)
        (target / NO_PARENT).write_text(NO_PARENT_TEXT, encoding="utf-8")
    else:
        shutil.copytree(checkpoint, target)
    versioning.dvc_add(ws.root, target)
    return content_hash(target) if checkpoint is not None else None


def _check_not_lost(ws: Workspace, registry: Registry) -> None:
    """Refuse to start over when git records cycles the registry cannot have seen: it holds no version
    and its model is missing or younger than the first cycle commit, so the store was deleted,
    emptied, or is not the one this workspace used. A new "version 1" would orphan them all.

    A cycle killed between its commit and its registration leaves a commit and no version too; its
    registered model (made by `ratchet init`) is older than the commit, so it is resumed, not refused.
    """
    if registry.has_versions():
        return
    cycle_line = "^" + CYCLE_COMMIT.format(id="[0-9a-f]{12}", batches="")
    committed = versioning.commit_times(ws.root, cycle_line)
    created = registry.created_at()
    if committed and (created is None or int(created) > min(committed)):  # git keeps whole seconds
        raise RatchetError(
            f"registry lost: {len(committed)} cycle(s) recorded in git, 0 versions of {registry.name} in "
            f"{registry.tracking_uri}; restore that store (or point registry.tracking_uri / "
            "MLFLOW_TRACKING_URI at the one holding them) before retraining"
        )


# The stages, with the paths dvc.yaml names and this workspace's params. Imported when run: they
# import torch, which `ratchet status` never needs.


def run_prepare(ws: Workspace) -> None:
    from ratchet.stages import prepare

    paths = ws.stage_paths()
    prepare.run(paths.cycle, paths.data, paths.parent, paths.prepared, ws.params())
    faults.reached("retrain:prepared")


def run_train(ws: Workspace) -> float:
    """The train stage; returns the seconds training took (`stages.train.run`; the rest is setup)."""
    from ratchet.stages import train

    paths = ws.stage_paths()
    seconds = train.run(paths.prepared, paths.candidate, ws.params(), paths.data, state.cache(ws.root))
    faults.reached("retrain:trained")
    return seconds


def run_evaluate(ws: Workspace) -> Evaluation:
    from ratchet.stages import evaluate

    paths = ws.stage_paths()
    done = evaluate.run(
        paths.prepared, paths.candidate, paths.eval, ws.params(), paths.data, state.cache(ws.root)
    )
    faults.reached("retrain:evaluated")
    return done


@dataclass(frozen=True)
class Outcome:
    """What one cycle did, for the demo table, `ratchet retrain` output and the flow's return value."""

    cycle_id: str
    version: str
    parent: str | None
    batches: tuple[str, ...]
    strategy: str
    metrics: Headline
    action: Action
    reasons: tuple[str, ...]
    resumed: bool  # an earlier run registered this cycle, then crashed before applying the decision


def record(ws: Workspace, cycle: Cycle) -> VersionInfo:
    """Commit the cycle (cycle.json, parent.dvc, dvc.lock, report), push what DVC tracks to the
    workspace's remote, and register the candidate with its lineage."""
    from ratchet.registry import CandidateRecord
    from ratchet.stages import evaluate, train

    params = ws.params()
    paths = ws.stage_paths()
    # dvc commit records the stage outputs this process just produced in dvc.lock,
    # exactly as `dvc repro` would have: the lock then names this candidate's inputs and outputs
    versioning.dvc_commit(ws.root)
    faults.reached("retrain:dvc-committed")
    before = versioning.head(ws.root)
    commit = versioning.commit(
        ws.root,
        [str(p.relative_to(ws.root)) for p in paths.committed()] + ["dvc.yaml", "dvc.lock"],
        CYCLE_COMMIT.format(id=cycle.cycle_id, batches=", ".join(cycle.new_batches)),
    )
    faults.reached("retrain:git-committed")
    # before registering: a version on record is one a clone can reproduce with `dvc pull`
    if unpushed := versioning.push(ws.root, f"cycle {cycle.cycle_id}"):
        print(unpushed)  # the cycle stands; the next command pushes it
    try:
        # the git remote decides between machines: the first cycle pushed from a parent is recorded
        remotes.publish(ws.root, params.remotes, f"cycle {cycle.cycle_id}", undo_to=before)
    except remotes.Superseded as exc:
        why = f"{exc}; nothing registered, its batches stay pending for the next retrain"
        raise RatchetError(why) from None
    faults.reached("retrain:pushed")
    metrics = CycleMetrics.from_json(json.loads((paths.eval / evaluate.METRICS).read_text()))
    decision = json.loads((paths.eval / evaluate.DECISION).read_text())
    history = json.loads((paths.candidate / train.HISTORY).read_text())
    registry = open_registry(ws, params)
    parent_run = registry.version(cycle.parent_version).run_id if cycle.parent_version else None
    verdict: Verdict = "promote" if decision["promote"] else "reject"
    plots = _draw(registry.versions(), cycle, metrics, verdict, state.directory(ws.root) / "plots")
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
        verdict=verdict,
        reasons=tuple(decision["reasons"]),
        summary=str(decision["summary"]),
        checkpoint_dir=paths.candidate / train.CHECKPOINT,
        report_files=[paths.eval / name for name in (evaluate.REPORT, evaluate.METRICS, evaluate.DECISION)],
        plot_files=plots,
        parent_hash=cycle.parent_hash,
        parent_run_id=parent_run or None,
        environment=environment(params),
        dvc_hashes=versioning.lock_hashes(ws.root),
    )
    return registry.register_cycle(rec)


def environment(params: Params) -> dict[str, str]:
    """What a candidate was trained with, beyond the code and params: an audit's answer to why a
    repro elsewhere may differ (another torch, a GPU, another thread count)."""
    import platform
    from importlib import metadata

    import torch

    from ratchet.train.feed import select_device

    device = select_device(params.train.device)
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return {
        "python": platform.python_version(),
        **{package: metadata.version(package) for package in LINEAGE_PACKAGES},
        "torch": torch.__version__,  # with its build (+cpu, +cu130), which the package metadata omits
        "device": on,
        # what train.threads pinned; 0 leaves torch's count, which this process reports
        "threads": str(params.train.threads or torch.get_num_threads()),
        "deterministic": str(params.train.deterministic).lower(),
    }


def _draw(
    versions: list[VersionInfo], cycle: Cycle, metrics: CycleMetrics, verdict: Verdict, out: Path
) -> list[Path]:
    """The cycle's pictures: every version so far, and this cycle's candidate as the next one."""
    from ratchet import plots

    def row(v: VersionInfo) -> plots.VersionRow:
        return plots.VersionRow(v.version, v.action or v.verdict or "?", v.metrics, v.per_batch)

    upcoming = str(max((int(v.version) for v in versions), default=0) + 1)  # the number it will get
    rows = [row(v) for v in versions]
    rows.append(plots.VersionRow(upcoming, verdict, metrics.headline(), metrics.candidate.per_batch))
    shutil.rmtree(out, ignore_errors=True)
    return plots.render(rows, metrics, out, parent=cycle.parent_version)


def apply(ws: Workspace, cycle: Cycle, version: VersionInfo, dry_run: bool, resumed: bool) -> Outcome:
    """Promote (move @champion) or leave rejected. A passing candidate becomes @challenger instead in
    a dry run, and with review.approval manual (where it waits for `ratchet approve` or `reject`)."""
    registry = open_registry(ws)
    promote = version.verdict == "promote"
    action: Action
    if promote and (dry_run or ws.params().review.approval == "manual"):
        registry.mark_challenger(version.version)
        action = "challenger"
    elif promote:
        registry.promote(version.version, expected_parent=cycle.parent_version)
        action = "promoted"
    else:
        registry.reject(version.version)
        action = "rejected"
    faults.reached("retrain:outcome-set")
    return Outcome(
        cycle_id=cycle.cycle_id,
        version=version.version,
        parent=cycle.parent_version,
        batches=cycle.new_batches,
        strategy=cycle.strategy,
        metrics=version.metrics,
        action=action,
        reasons=version.reasons,
        resumed=resumed,
    )


def _flatten(d: dict[str, object], prefix: str = "") -> Iterator[tuple[str, Scalar]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", cast(Scalar, v)
