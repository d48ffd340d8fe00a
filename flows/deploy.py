"""A workspace's deployment on a Prefect server, and the process worker that runs it.

`deploy` registers one deployment of the `ingest-and-retrain` flow per workspace, named after its
registered model, on the work pool of params.yaml `schedule.work_pool` (a process pool, created if
missing), with:

- the cron schedule `schedule.cron` in `schedule.timezone`: a cycle runs anyway, for batches no
  event announced;
- a trigger on `ratchet.batch.ingested` from this workspace, debounced by `schedule.debounce_seconds`:
  a reactive trigger with threshold 1 fires on the first event and then ignores the rest of its
  window (`within`); its run is scheduled `schedule_after` the same window later, so it starts once
  the window is closed and takes every batch that arrived in it: five batches in a minute, one cycle;
- at most one run at a time (deployment concurrency limit 1, collision strategy ENQUEUE): a run
  arriving while another is in its cycle waits for it, then finds what is still pending.

The code location is the installed package: the entrypoint is the module path
`ratchet.flows.inbox.ingest_and_retrain`, with no storage and no pull steps, so a process worker in
the same Python environment imports the flow as a module; nothing is copied, cloned or built.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import timedelta
from types import FrameType

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import DeploymentApplyError, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.events.schemas.automations import Posture
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron, Schedule
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType
from prefect.workers.process import ProcessWorker

from ratchet.errors import InputError, RatchetError
from ratchet.flows.events import BATCH_INGESTED, api_url, workspace_resource
from ratchet.flows.inbox import ingest_and_retrain
from ratchet.workspace import Workspace

POOL_TYPE = "process"
NO_API = (
    "no Prefect API configured: start a server (`prefect server start`) and set PREFECT_API_URL to its "
    "API, e.g. `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


def deployment_name(ws: Workspace) -> str:
    """`flow/deployment`: one deployment per registered model."""
    return f"{ingest_and_retrain.name}/{ws.params().registry.model_name}"


def _api() -> str:
    url: str | None = api_url()
    if url is None:
        raise RatchetError(NO_API)
    return url


def _check_answers(client: SyncPrefectClient, url: str) -> None:
    failed = client.api_healthcheck()
    if failed is not None:
        cause = (str(failed).strip().splitlines() or [type(failed).__name__])[0]
        raise RatchetError(f"the Prefect API at {url} does not answer: {cause}")


def _ui(url: str) -> str:
    ui = get_current_settings().ui_url
    return str(ui) if ui else url.removesuffix("/api")


def _cron(expr: str, timezone: str) -> Schedule:
    try:
        return Cron(expr, timezone=timezone)
    except ValueError as exc:
        cause = (str(exc).strip().splitlines() or [""])[-1].strip()
        raise InputError(f"params: schedule.cron {expr!r} is not a valid cron expression ({cause})") from None


def _ensure_pool(client: SyncPrefectClient, name: str, say: Callable[[str], None], ui: str) -> None:
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template))
        say(f"work pool {name} (process) created: {ui}/work-pools/work-pool/{name}")
        return
    if pool.type != POOL_TYPE:
        raise InputError(
            f"params: schedule.work_pool {name!r} is a {pool.type} work pool on the Prefect server; "
            f"ratchet runs on a {POOL_TYPE} pool: name another"
        )
    say(f"work pool {name} (process): already there")


def deploy(ws: Workspace, say: Callable[[str], None]) -> str:
    """Create or update the workspace's deployment (and its work pool); returns the deployment id."""
    params = ws.params()
    schedule = params.schedule
    cron = _cron(schedule.cron, schedule.timezone)  # the params first: no server needed to refuse them
    url = _api()
    name = params.registry.model_name
    full_name = deployment_name(ws)
    root = str(ws.root)
    ui = _ui(url)
    with get_client(sync_client=True) as client:
        _check_answers(client, url)
        try:
            existing = client.read_deployment_by_name(full_name)
        except ObjectNotFound:
            existing = None
        other = existing.parameters.get("workspace") if existing is not None else root
        if other != root:
            raise RatchetError(
                f"the Prefect deployment {full_name} runs the workspace {other}: "
                "one deployment per registered model; give this workspace its own registry.model_name"
            )
        _ensure_pool(client, schedule.work_pool, say, ui)
    debounce = timedelta(seconds=schedule.debounce_seconds)
    trigger = DeploymentEventTrigger(
        name=f"{name}: batch ingested",
        description="a cycle once the batches arriving within the debounce window are versioned",
        expect={BATCH_INGESTED},
        match={"prefect.resource.id": workspace_resource(ws.root)},
        posture=Posture.Reactive,
        threshold=1,
        within=debounce,
        schedule_after=debounce,
    )
    deployment = RunnerDeployment.from_flow(
        ingest_and_retrain,
        name=name,
        schedules=[cron],
        triggers=[trigger],
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        parameters={"workspace": root},
        description=f"ratchet workspace {root}: version the inbox's batches, then one cycle",
        tags=["ratchet"],
        work_pool_name=schedule.work_pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    try:
        deployment_id = str(deployment.apply())
    except DeploymentApplyError as exc:
        cause = (str(exc).strip().splitlines() or ["no reason given"])[0]
        refused = f"the Prefect server at {url} refused the deployment {full_name}: {cause}"
        raise RatchetError(refused) from None
    say(
        f"deployment {full_name} {'updated' if existing else 'created'} for {root}: "
        f"{ui}/deployments/deployment/{deployment_id}"
    )
    say(f"  schedule: cron {schedule.cron!r} in {schedule.timezone}")
    say(
        f"  trigger: {BATCH_INGESTED} from this workspace starts a run {schedule.debounce_seconds} s later; "
        f"further batches within those {schedule.debounce_seconds} s join it: {ui}/automations"
    )
    say("  concurrency: one run at a time; a run arriving meanwhile waits for it")
    say(f"runs wait for a worker: `ratchet worker -w {root}`")
    return deployment_id


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def work(ws: Workspace, say: Callable[[str], None]) -> None:
    """Run a process worker on the workspace's work pool until Ctrl-C or SIGTERM."""
    url = _api()
    pool = ws.params().schedule.work_pool
    with get_client(sync_client=True) as client:
        _check_answers(client, url)
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise RatchetError(
                f"no work pool {pool!r} on the Prefect server at {url}: `ratchet deploy` creates it"
            ) from None

    async def main() -> None:
        async with ProcessWorker(work_pool_name=pool, create_pool_if_not_found=False) as worker:
            await worker.start(printer=lambda *args, **kwargs: None)

    say(f"worker polling work pool {pool} on {url} (Ctrl-C stops it): {_ui(url)}/work-pools/work-pool/{pool}")
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    say("worker stopped")
