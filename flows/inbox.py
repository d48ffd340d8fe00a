"""The inbox flow: version every complete batch upstream dropped in the inbox, then retrain.

Each batch is its own task (`intake.take`, the ingest `ratchet ingest` runs), oldest first, so a
batch refused whole is set aside with its reason while the others go on. Then, if a batch was
versioned or one is pending, the retrain flow runs as a subflow. The only parameter is the
workspace: where the inbox is (a local directory or an s3:// prefix) and what marks a batch complete
are in its params.yaml.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment

from ratchet import intake
from ratchet.errors import RatchetError
from ratchet.flows.events import batch_ingested
from ratchet.flows.retrain import retrain
from ratchet.workspace import Workspace, open_workspace


@task(name="version-batch", task_run_name="version {arrival.name}", cache_policy=NO_CACHE)
def take_task(ws: Workspace, inbox: intake.Inbox, arrival: intake.Arrival) -> intake.Taken:
    taken = inbox.take(ws, arrival, say=print)
    if taken.batch_id is not None:  # a deployment's trigger hears of it as of `ratchet ingest`
        warning = batch_ingested(ws.root, taken.batch_id)
        if warning:
            print(f"warning: {warning}")
    return taken


@task(name="pending", cache_policy=NO_CACHE)
def pending_task(ws: Workspace) -> list[str]:
    return intake.pending(ws)


@flow(name="ingest-and-retrain", log_prints=True)
def ingest_and_retrain(workspace: str = ".") -> intake.InboxRun:
    """Take the inbox's complete batches, oldest first, then run one cycle if there is anything to
    train on; returns what became of each batch and the cycle's outcome."""
    ws = open_workspace(Path(workspace))
    params = ws.params()
    inbox = intake.open_inbox(ws, params)
    taken: list[intake.Taken] = []
    try:
        arrivals = inbox.scan()
    except RatchetError as exc:  # an S3 inbox out of reach: nothing taken, pending batches still trained
        print(f"{exc}: nothing versioned")
        arrivals, unreadable = [], str(exc)
    else:
        unreadable = ""
    for arrival in arrivals:
        name = arrival.name
        if arrival.waiting_for:  # left alone, untouched, until upstream finishes it
            taken.append(intake.Taken(name, "waiting", arrival.waiting_for))
            continue
        try:
            taken.append(take_task(ws, inbox, arrival))
        except RatchetError as exc:  # git, DVC or the lock, not the batch: it stays for the next run
            print(f"{name}: left in the inbox for the next run: {exc}")
            taken.append(intake.Taken(name, "left", str(exc)))
    if not any(t.status == "versioned" for t in taken) and not pending_task(ws):
        print("no cycle: nothing was versioned and no batch is pending")
        return intake.InboxRun(
            inbox.location, tuple(taken), cycle_ran=False, outcome=None, unreadable=unreadable
        )
    # a scheduled run has nobody at a terminal: like the retrain flow's deployments, it may pause
    # for a reviewer in the Prefect UI; `ratchet inbox` never does
    outcome = retrain(workspace=str(ws.root), wait_for_review=deployment.get_id() is not None)
    return intake.InboxRun(
        inbox.location, tuple(taken), cycle_ran=True, outcome=outcome, unreadable=unreadable
    )


if __name__ == "__main__":
    # `python -m ratchet.flows.inbox WORKSPACE` serves the flow every ten minutes
    import sys

    ingest_and_retrain.serve(
        name="ratchet-inbox-every-10-minutes",
        interval=600,
        parameters={"workspace": sys.argv[1] if len(sys.argv) > 1 else "."},
    )
