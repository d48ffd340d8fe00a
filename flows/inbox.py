"""The inbox flow: version every complete batch upstream dropped in the inbox, then retrain.

The steps are `intake.run_inbox`'s: each batch is its own task (the ingest `ratchet ingest` runs),
oldest first, so a batch refused whole is set aside with its reason while the others go on. Then,
if a batch was versioned or one is pending, the retrain flow runs as a subflow. The only parameter is the
workspace: where the inbox is (a local directory or an s3:// prefix) and what marks a batch complete
are in its params.yaml.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import deployment

from ratchet import intake
from ratchet.cycle import Outcome
from ratchet.flows.events import batch_ingested
from ratchet.flows.retrain import as_task, retrain
from ratchet.workspace import Workspace, open_workspace


@flow(name="ingest-and-retrain", log_prints=True)
def ingest_and_retrain(workspace: str = ".") -> intake.InboxRun:
    """Take the inbox's complete batches, oldest first, then run one cycle if there is anything to
    train on; returns what became of each batch and the cycle's outcome."""

    def cycle(ws: Workspace) -> Outcome | None:
        # a scheduled run has nobody at a terminal: like the retrain flow's deployments, it may
        # pause for a reviewer in the Prefect UI; `ratchet inbox` never does
        scheduled = deployment.get_id() is not None
        outcome: Outcome | None = retrain(workspace=str(ws.root), wait_for_review=scheduled)
        return outcome

    return intake.run_inbox(open_workspace(Path(workspace)), cycle, as_task, announce=batch_ingested)


if __name__ == "__main__":
    # `python -m ratchet.flows.inbox WORKSPACE` serves the flow every ten minutes
    import sys

    ingest_and_retrain.serve(
        name="ratchet-inbox-every-10-minutes",
        interval=600,
        parameters={"workspace": sys.argv[1] if len(sys.argv) > 1 else "."},
    )
