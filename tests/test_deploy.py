"""`ratchet deploy` and `ratchet worker` on the real `prefect server start` (the session's `real_server`):
the deployment as the server reads it back, data arrival running a cycle with nobody calling `ratchet
retrain`, and a worker killed in the middle of a cycle.

Real Prefect server, worker processes, git, DVC and MLflow; one epoch a cycle, a two-second
debounce, and a yearly cron that never fires during a test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed

from ratchet import app
from ratchet.cli import main
from ratchet.data import versioning
from ratchet.data.catalog import list_batches
from ratchet.registry import open_registry
from ratchet.stages.inputs import Cycle
from ratchet.workspace import open_workspace
from services import PrefectServer, free_port, stop_group

T = TypeVar("T")
LOUD = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO"}  # the flow runs' lines in the worker's log
NEVER = "0 0 1 1 *"  # New Year's midnight: no scheduled run interferes with a test
CYCLE_TIMEOUT_S = 240.0  # a worker's flow run: ~10 s of imports, ~20 s for a one-epoch cycle on 2 cores

ASYNCIO_STOP_NOISE = re.compile(
    r"^[\d:.]+ \| ERROR +\| asyncio - Exception in callback StreamReaderProtocol\.connection_made"
    r".*?(?=^[\d:.]+ \||\Z)",
    re.S | re.M,
)


def make_workspace(root: Path, model: str, pool: str, **schedule: str | int) -> Path:
    """A workspace (with its MLflow store) training one epoch a cycle, deployed to `pool`."""
    app.init(root, model_name=model)
    params = root / "params.yaml"
    text = re.sub(r"num_epochs: \d+", "num_epochs: 1", params.read_text())
    values: dict[str, str | int] = {"cron": NEVER, "debounce_seconds": 2, "work_pool": pool, **schedule}
    for key, value in values.items():
        text = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {value!r}".replace("'", '"'), text)
    params.write_text(text)
    assert open_workspace(root).params().schedule.work_pool == pool
    versioning.commit(root, ["params.yaml"], "deploy test params")
    return root


def child_env(server: PrefectServer | None, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `ratchet` child: the server's API (or none at all), its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    if server is not None:
        env["PREFECT_API_URL"] = server.api_url
    env.update(extra)
    return env


def ratchet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratchet.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@contextmanager
def api(server: PrefectServer) -> Iterator[SyncPrefectClient]:
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            yield client


@contextmanager
def running_worker(root: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ratchet worker` in its own process group (its flow runs are its children), stopped with them."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ratchet.cli", "worker", "-w", str(root)],
            env={
                **env,
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_group(process)


def wait_for(
    what: str, check: Callable[[], T | None], log: Path, timeout: float = CYCLE_TIMEOUT_S, poll: float = 1
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            pytest.fail(f"{what}: not after {timeout:.0f} s; the worker's log ends:\n{tail}")
        time.sleep(poll)


def deployment_runs(client: SyncPrefectClient, deployment_id: UUID) -> list[FlowRun]:
    """The deployment's runs created by a trigger or by hand, not the cron's future ones."""
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(),
    )
    return sorted((r for r in runs if not r.auto_scheduled), key=lambda r: r.created or 0)


def deployed_id(client: SyncPrefectClient, model: str) -> UUID:
    return client.read_deployment_by_name(f"ingest-and-retrain/{model}").id


def versions(root: Path) -> list[str]:
    return [v.version for v in app.status(root).versions]


def listing(path: Path) -> tuple[int, int]:
    return path.stat().st_size, path.stat().st_mtime_ns


# ---- the deployment as registered ----------------------------------------------------------------


@pytest.mark.services
def test_deploy_registers_the_schedule_the_trigger_and_one_run_at_a_time(
    tmp_path: Path, real_server: PrefectServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a workspace with its own schedule
    root = make_workspace(
        tmp_path / "ws",
        "deploy-d",
        "pool-d",
        cron="*/30 6-18 * * 1-5",
        timezone="Europe/Paris",
        debounce_seconds=45,
    )
    env = child_env(real_server, tmp_path / "home")

    # when deployed
    done = ratchet(env, "deploy", "-w", str(root))

    # then each thing made is one line, with where to see it
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        lines[0]
        == f"work pool pool-d (process) created: {real_server.api_url[:-4]}/work-pools/work-pool/pool-d"
    )
    assert lines[1].startswith(f"deployment ingest-and-retrain/deploy-d created for {root}: ")
    assert done.stderr == ""
    # and the server holds them as configured
    with api(real_server) as client:
        pool = client.read_work_pool("pool-d")
        assert pool.type == "process"
        deployment = client.read_deployment_by_name("ingest-and-retrain/deploy-d")
        assert deployment.work_pool_name == "pool-d"
        assert deployment.parameters == {"workspace": str(root)}
        # the installed package is the code: a module path, nothing to pull
        assert deployment.entrypoint == "ratchet.flows.inbox.ingest_and_retrain"
        assert not deployment.pull_steps
        [schedule] = deployment.schedules
        assert schedule.active
        assert schedule.schedule.model_dump(include={"cron", "timezone"}) == {
            "cron": "*/30 6-18 * * 1-5",
            "timezone": "Europe/Paris",
        }
        # one run at a time; one arriving meanwhile waits
        limit = deployment.global_concurrency_limit
        assert limit is not None and limit.limit == 1
        assert deployment.concurrency_options is not None
        assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
        # the trigger: this workspace's data-arrival event, first one fires, a run 45 s later
        [automation] = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
        trigger = automation.trigger.model_dump()
        assert trigger["expect"] == {"ratchet.batch.ingested"}
        assert trigger["match"] == {"prefect.resource.id": resource_of(root)}
        assert (trigger["posture"], trigger["threshold"]) == ("Reactive", 1)
        assert trigger["within"].total_seconds() == 45
        [action] = automation.actions
        action_doc = action.model_dump()
        assert action_doc["type"] == "run-deployment" and action_doc["deployment_id"] == deployment.id
        assert action_doc["schedule_after"].total_seconds() == 45

    # when deployed again (in this process): updated in place, still one trigger
    with temporary_settings(updates={PREFECT_API_URL: real_server.api_url}):
        assert main(["deploy", "-w", str(root)]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0] == "work pool pool-d (process): already there"
        assert f"deployment ingest-and-retrain/deploy-d updated for {root}: " in out
        with get_client(sync_client=True) as client:
            automations = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
        assert len(automations) == 1

        # refused in one line: another workspace with the same registered model
        other = make_workspace(tmp_path / "other", "deploy-d", "pool-d")
        capsys.readouterr()  # what making it said
        assert main(["deploy", "-w", str(other)]) == 1
        assert capsys.readouterr().err == (
            f"ratchet: error: the Prefect deployment ingest-and-retrain/deploy-d runs the workspace {root}: "
            "one deployment per registered model; give this workspace its own registry.model_name\n"
        )


def resource_of(root: Path) -> str:
    from ratchet.flows.events import workspace_resource

    return workspace_resource(root)


# ---- runs on a worker ----------------------------------------------------------------------------


@pytest.mark.services
def test_arriving_data_runs_the_cycle_on_the_worker_with_nobody_asking(
    tmp_path: Path, real_server: PrefectServer, stream_files: dict[str, Path]
) -> None:
    root = make_workspace(tmp_path / "ws", "deploy-c", "pool-c")
    env = child_env(real_server, tmp_path / "home")
    deployed = ratchet(env, "deploy", "-w", str(root))
    assert deployed.returncode == 0, deployed.stderr
    log = tmp_path / "worker.log"
    with api(real_server) as client, running_worker(root, env, log) as worker:
        deployment_id = deployed_id(client, "deploy-c")

        # when a batch is ingested, and nobody runs `ratchet retrain`
        ingested = ratchet(env, "ingest", str(stream_files["digits-0-4"]), "-w", str(root))
        assert ingested.returncode == 0, ingested.stderr
        assert "warning" not in ingested.stderr
        [first] = [b.batch_id for b in list_batches(root / "data")]

        # then the trigger runs a cycle on the worker: a version of that batch
        wait_for("a version after the ingest event", lambda: versions(root) == ["1"], log)
        [run] = wait_for(
            "the triggered run's end", lambda: final(deployment_runs(client, deployment_id)), log
        )
        assert run.state is not None and run.state.is_completed()
        assert app.status(root).versions[0].tag_list("batches") == [first]

        # when upstream drops a complete batch and a half-written one in the inbox, and a run goes
        inbox = root / "incoming"
        inbox.mkdir()
        shutil.copyfile(stream_files["digits-5-9"], inbox / "digits-5-9.npz")
        half = inbox / "digits-rest.npz.part"
        shutil.copyfile(stream_files["digits-rest"], half)
        before = listing(half)
        with temporary_settings(updates={PREFECT_API_URL: real_server.api_url}):
            asked = run_deployment("ingest-and-retrain/deploy-c", timeout=0)
        assert isinstance(asked, FlowRun)

        # then it versions and trains the complete one; the batch it versioned is announced too, and
        # the run that event triggers finds nothing to do: three runs, two cycles, two versions
        wait_for("a second version", lambda: versions(root) == ["1", "2"], log)

        def three_ended() -> list[FlowRun] | None:
            runs = deployment_runs(client, deployment_id)
            return final(runs) if len(runs) == 3 else None

        runs = wait_for("three finished runs", three_ended, log)
        assert all(r.state is not None and r.state.is_completed() for r in runs), [r.state for r in runs]
        assert asked.id == runs[1].id

    # the worker stopped by SIGTERM says so, and nothing else went wrong in it
    output = log.read_text()
    assert worker.returncode == 0 and output.rstrip().endswith("worker stopped"), output[-2000:]
    # on a loaded machine asyncio may report, with its traceback, a connection the stopping worker
    # cancelled mid-handshake: the stop itself, not a fault in a run
    faults = ASYNCIO_STOP_NOISE.sub("", output)
    assert "Traceback" not in faults and "| ERROR" not in faults, faults[-4000:]
    batches = [b.batch_id for b in list_batches(root / "data")]
    assert len(batches) == 2 and batches[0] == first
    now = app.status(root)
    assert [v.tag_list("batches") for v in now.versions] == [[first], [batches[1]]]
    cycles = [v.tag("cycle_id") for v in now.versions]
    assert len(set(cycles)) == 2 and all(cycles)  # one version per cycle
    assert (inbox / "done" / "digits-5-9.npz").is_file() and not (inbox / "digits-5-9.npz").exists()
    assert listing(half) == before  # the half-written one untouched, still waiting
    assert sorted(p.name for p in inbox.iterdir()) == ["digits-rest.npz.part", "done"]


def final(runs: list[FlowRun]) -> list[FlowRun] | None:
    """The runs, once there are some and every one has ended."""
    ended = runs and all(r.state is not None and r.state.is_final() for r in runs)
    return runs if ended else None


@pytest.mark.services
def test_a_worker_killed_mid_training_leaves_a_cycle_the_next_worker_completes_once(
    tmp_path: Path, real_server: PrefectServer, stream_files: dict[str, Path]
) -> None:
    root = make_workspace(tmp_path / "ws", "deploy-e", "pool-e")
    env = child_env(real_server, tmp_path / "home")
    assert ratchet(env, "deploy", "-w", str(root)).returncode == 0
    trace = tmp_path / "points.txt"
    log = tmp_path / "worker.log"
    with api(real_server) as client:
        deployment_id = deployed_id(client, "deploy-e")
        with running_worker(root, {**env, "RATCHET_TRACE_POINTS": str(trace)}, log) as worker:
            ingested = ratchet(env, "ingest", str(stream_files["digits-0-4"]), "-w", str(root))
            assert ingested.returncode == 0, ingested.stderr

            # when the worker and its flow run are killed (SIGKILL, the whole group) while it trains
            def training() -> bool:
                return trace.exists() and "retrain:prepared" in trace.read_text().split()

            wait_for("the cycle's train step", training, log, poll=0.1)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        points = trace.read_text().split()
        assert points[-1] == "retrain:prepared"  # killed while training: nothing trained, nothing recorded
        [killed] = deployment_runs(client, deployment_id)
        planned = Cycle.load(open_workspace(root).stage_paths().cycle).cycle_id
        assert versions(root) == []

        # the dead run still holds the deployment's one slot until its lease runs out (five minutes
        # without renewal); an operator marks it crashed, which frees the slot now
        client.set_flow_run_state(killed.id, Crashed(message="worker killed"), force=True)

        # when a new worker runs the deployment again
        with running_worker(root, env, tmp_path / "worker2.log"):
            with temporary_settings(updates={PREFECT_API_URL: real_server.api_url}):
                again = run_deployment("ingest-and-retrain/deploy-e", timeout=0)
            assert isinstance(again, FlowRun)
            wait_for(
                "the rerun's end",
                lambda: final([client.read_flow_run(again.id)]),
                tmp_path / "worker2.log",
            )
        assert client.read_flow_run(again.id).state.is_completed()  # type: ignore[union-attr]

    # then the cycle the killed run planned is completed once, and its batch is not lost
    [batch] = list_batches(root / "data")
    now = app.status(root)
    assert versions(root) == ["1"]
    assert now.versions[0].tag("cycle_id") == planned
    assert open_registry(open_workspace(root)).find_cycle(planned) is not None
    assert now.versions[0].tag_list("batches") == [batch.batch_id]
    assert now.in_state("pending") == []


# ---- without a Prefect server ---------------------------------------------------------------------


def test_without_a_prefect_api_ingest_sends_nothing_and_an_unreachable_one_costs_one_warning(
    tmp_path: Path, stream_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace(tmp_path / "ws", "deploy-none", "pool-none")
    port = free_port()  # nothing listens there
    unreachable = f"http://127.0.0.1:{port}/api"

    # no API configured: the ingest says nothing of Prefect, and starts no server to tell (the real
    # command, with a Prefect home of its own: no profile names an API)
    plain = ratchet(
        child_env(None, tmp_path / "home"), "ingest", str(stream_files["digits-0-4"]), "-w", str(root)
    )
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr

    # an API that does not answer: versioned all the same, and one warning line
    with temporary_settings(updates={PREFECT_API_URL: unreachable}):
        assert main(["ingest", str(stream_files["digits-5-9"]), "-w", str(root)]) == 0
        [second] = [b.batch_id for b in list_batches(root / "data")][1:]
        # (MLflow's INFO lines on opening its store in this process are not the command's)
        err = [ln for ln in capsys.readouterr().err.splitlines() if " INFO mlflow." not in ln]
        assert len(err) == 1, err
        [line] = err
        assert line.startswith(
            f"ratchet: warning: batch {second} is versioned, but the Prefect API at {unreachable} did not "
            "get its ratchet.batch.ingested event ("
        )
        assert line.endswith("); the deployment's schedule picks it up")

        # deploy and worker refuse in one line
        for command in ("deploy", "worker"):
            assert main([command, "-w", str(root)]) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"ratchet: error: the Prefect API at {unreachable} does not answer: "), err
            assert len(err.splitlines()) == 1
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        for command in ("deploy", "worker"):
            assert main([command, "-w", str(root)]) == 1
            err = capsys.readouterr().err
            assert (
                err.startswith("ratchet: error: no Prefect API configured: ") and len(err.splitlines()) == 1
            )

    # a cron Prefect refuses (the five fields params.yaml checks are there) is refused before the server
    params = root / "params.yaml"
    params.write_text(params.read_text().replace(f'cron: "{NEVER}"', 'cron: "61 * * * *"'))
    assert main(["deploy", "-w", str(root)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "ratchet: error: params: schedule.cron '61 * * * *' is not a valid cron expression ("
    )
