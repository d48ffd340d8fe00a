"""The retraining flow: one cycle over the batches no cycle has decided on yet.

The cycle is `ratchet.cycle.run`, each of its steps a task here; the stages pass data through files
under artifacts/, so a task can be retried or the whole flow re-run after a crash. Parameters are
operational only. `ratchet retrain` runs the same steps without Prefect where no Prefect API is
configured.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment

from ratchet import cycle as cyc
from ratchet.flows import review
from ratchet.steps import P, R
from ratchet.workspace import open_workspace


def as_task(name: str, fn: Callable[P, R], /) -> Callable[P, R]:
    """The `Steps` of the flows: each step a Prefect task of its name, never cached (every step
    reads and writes the workspace)."""
    return task(name=name, cache_policy=NO_CACHE)(fn)


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
    outcome = cyc.run(ws, dry_run, strategy, as_task)
    if outcome is None:
        return None
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
