"""Data arrival as a Prefect event: `ratchet.batch.ingested`, which the deployment of `ratchet deploy`
is triggered by.

Sent only where a Prefect API is configured (PREFECT_API_URL, or the active Prefect profile's
setting): without one nothing is sent, and no temporary server is started just to send it. A failed
send is a warning line for the caller, never a failed ingest: the deployment's cron picks the batch up.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from prefect.events import Event, Resource
from prefect.events.clients import PrefectEventsClient
from prefect.settings import get_current_settings
from prefect.utilities.asyncutils import run_coro_as_sync

BATCH_INGESTED = "ratchet.batch.ingested"


def api_url() -> str | None:
    """The configured Prefect API, or None: Prefect's own settings (environment, then profile)."""
    url = get_current_settings().api.url
    return str(url) if url else None


def workspace_resource(root: Path) -> str:
    """The event resource id of a workspace: stable for its absolute path."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return f"ratchet.workspace.{digest}"


async def _send(url: str, event: Event) -> None:
    # one reconnection, and a checkpoint (ping/pong) after each event: on return the server has it
    async with PrefectEventsClient(api_url=url, reconnection_attempts=1, checkpoint_every=1) as client:
        await client.emit(event)


def batch_ingested(root: Path, batch_id: str) -> str | None:
    """Tell the Prefect API that `batch_id` was versioned in the workspace at `root`. Returns a
    warning line when that failed; None when sent, or when no API is configured."""
    url = api_url()
    if url is None:
        return None
    event = Event(
        event=BATCH_INGESTED,
        resource=Resource(
            {
                "prefect.resource.id": workspace_resource(root),
                "ratchet.workspace": str(root.resolve()),
                "ratchet.batch": batch_id,
            }
        ),
    )
    client_log = logging.getLogger("prefect.events.clients")
    level = client_log.level
    client_log.setLevel(logging.ERROR)  # its connection warning would be a second line of the same
    try:
        run_coro_as_sync(_send(url, event))
    except Exception as exc:  # noqa: BLE001 - any failure to announce leaves the ingest as it is
        cause = (str(exc).strip().splitlines() or [""])[0]
        return (
            f"batch {batch_id} is versioned, but the Prefect API at {url} did not get its "
            f"{BATCH_INGESTED} event ({type(exc).__name__}{': ' + cause if cause else ''}); "
            "the deployment's schedule picks it up"
        )
    finally:
        client_log.setLevel(level)
    return None
