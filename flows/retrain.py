"""The retraining flow: one cycle over the batches no cycle has decided on yet.

Tasks are thin calls into ratchet; the stages pass data through files under artifacts/, so a task
can be retried or the whole flow re-run after a crash. Parameters are operational only.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment

from ratchet import cycle as cyc
from ratchet.flows import review
from ratchet.registry import VersionInfo, open_registry
from ratchet.stages.inputs import Cycle
from ratchet.workspace import Workspace, open_workspace


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(ws: Workspace, strategy: str | None) -> Cycle | None:
    return cyc.plan(ws, strategy)


@task(name="find-registered", cache_policy=NO_CACHE)
def find_task(ws: Workspace, cycle: Cycle) -> VersionInfo | None:
    return open_registry(ws).find_cycle(cycle.cycle_id)


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(ws: Workspace) -> None:
    cyc.run_prepare(ws)


@task(name="train", cache_policy=NO_CACHE)
def train_task(ws: Workspace) -> None:
    cyc.run_train(ws)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(ws: Workspace) -> None:
    cyc.run_evaluate(ws)


@task(name="record", cache_policy=NO_CACHE)
def record_task(ws: Workspace, cycle: Cycle) -> VersionInfo:
    return cyc.record(ws, cycle)


@task(name="apply-decision", cache_policy=NO_CACHE)
def apply_task(
    ws: Workspace, cycle: Cycle, version: VersionInfo, dry_run: bool, resumed: bool
) -> cyc.Outcome:
    return cyc.apply(ws, cycle, version, dry_run, resumed)


@flow(name="ratchet-retrain", log_prints=True)
def retrain(
    workspace: str = ".",
    dry_run: bool = False,
    strategy: str | None = None,
    wait_for_review: bool | None = None,
) -> cyc.Outcome | None:
    """Plan, train, evaluate, record and apply one cycle; returns the outcome, or None with nothing new.

    Under review.approval manual, a run that leaves a version for a person (a challenger, or a gate
    rejection to override) then pauses up to review.wait_minutes for the answer in the Prefect UI:
    `wait_for_review` True or False says whether, None pauses deployment runs only (a scheduled run
    has nobody at a terminal; `ratchet retrain` has, and never pauses).
    """
    ws = open_workspace(Path(workspace))
    with ws.lock():
        cycle = plan_task(ws, strategy)
        if cycle is None:
            print(cyc.NOTHING_PENDING)
            return None
        # a version registered for this exact cycle means an earlier run crashed after recording it
        version = find_task(ws, cycle)
        resumed = version is not None
        if version is None:
            prepare_task(ws)
            train_task(ws)
            evaluate_task(ws)
            version = record_task(ws, cycle)
        outcome = apply_task(ws, cycle, version, dry_run, resumed)
    # after the lock: while the run waits, `ratchet approve` and every other command can run
    params = ws.params().review
    if wait_for_review is None:
        wait_for_review = deployment.get_id() is not None
    if wait_for_review and review.should_ask(outcome, params.approval, dry_run):
        review.ask(ws.root, outcome, params.wait_minutes)
    return outcome


if __name__ == "__main__":
    # a schedule: `python -m ratchet.flows.retrain WORKSPACE` serves the flow every hour
    import sys

    retrain.serve(
        name="ratchet-retrain-hourly",
        interval=3600,
        parameters={"workspace": sys.argv[1] if len(sys.argv) > 1 else "."},
    )
