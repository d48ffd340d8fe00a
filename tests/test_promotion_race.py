"""Two workers on one registered model of a real tracking server (PostgreSQL behind `mlflow server`),
racing where ratchet must not interleave: registering the same cycle, and promoting two candidates
evaluated against the same champion.

Each worker is a thread with a Registry of its own (its own REST client), as two machines would have.
A barrier at the critical point holds the first worker there until the second reaches it too, so
without the guard both always pass their check before either writes (the `guarded=False` cases show
the race is really run: a duplicate version, two promotions). With the guard the second worker cannot
reach the point while the first holds the lock: the barrier times out, the first writes, and the
second then finds what the first did and refuses in one line.

Last, the whole thing end to end: two workspaces with the same data, each a real `ratchet retrain`
process, meeting after training, just before they register.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ratchet import app
from ratchet.errors import RatchetError
from ratchet.registry import Registry, VersionInfo, open_registry
from ratchet.workspace import open_workspace
from services import MlflowServer
from test_registry import record
from test_tracking_server import new_workspace

pytestmark = pytest.mark.services

MEET = 3.0  # seconds the first worker waits at the barrier for the second


def race(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at once, one thread each; what each returned, or the RatchetError it raised."""
    results: list[object] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def work(n: int) -> None:
        start.wait()
        try:
            results[n] = calls[n]()
        except RatchetError as exc:
            results[n] = exc

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


def meet_after(monkeypatch: pytest.MonkeyPatch, method: str, stagger: float = 0.0) -> None:
    """Make `Registry.<method>` (a check) wait, once it has run, until the other worker has run it
    too, or MEET seconds; then the worker that met second goes on `stagger` seconds later."""
    original = getattr(Registry, method)
    barrier = threading.Barrier(2)

    def checked_then_meet(self: Registry, *args: object, **kwargs: object) -> object:
        result = original(self, *args, **kwargs)
        try:
            if barrier.wait(timeout=MEET) == 0:
                time.sleep(stagger)
        except threading.BrokenBarrierError:
            pass  # the other worker cannot come: it waits for the lock this one holds
        return result

    monkeypatch.setattr(Registry, method, checked_then_meet)


def unguarded(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def no_guard(self: Registry, what: str, ttl: float = 0, wait: float = 0) -> Iterator[None]:
        yield

    monkeypatch.setattr(Registry, "guard", no_guard)


def workers(server: MlflowServer, name: str) -> tuple[Registry, Registry]:
    first, second = (Registry(server.url, server.url, name, "ratchet") for _ in range(2))
    first.ensure_store()
    return first, second


def test_two_workers_starting_a_new_model_at_once_share_one_experiment_and_model(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    barrier = threading.Barrier(2)
    for method in ("get_experiment_by_name", "search_registered_models"):
        original = getattr(MlflowClient, method)

        def looked_then_meet(self: MlflowClient, *args: object, _original: Callable = original) -> object:
            found = _original(self, *args)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=MEET)  # both have looked, and found nothing, before either creates
            return found

        monkeypatch.setattr(MlflowClient, method, looked_then_meet)
    first, second = (Registry(mlflow_server.url, mlflow_server.url, "race-new", "race-new") for _ in range(2))
    experiments = race(first.ensure_store, second.ensure_store)
    assert experiments[0] == experiments[1] and isinstance(experiments[0], str)
    assert [m.name for m in first.client.search_registered_models("name='race-new'")] == ["race-new"]


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_the_same_cycle_is_registered_once(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guarded: bool
) -> None:
    first, second = workers(mlflow_server, f"race-register-{guarded}")
    if not guarded:
        unguarded(monkeypatch)
    meet_after(monkeypatch, "find_cycle")  # both have looked for the cycle's version, found none
    # two workspaces finishing the same cycle: the same id, each its own checkpoint
    candidates = [record(tmp_path / str(n), "c-same") for n in (1, 2)]
    results = race(lambda: first.register_cycle(candidates[0]), lambda: second.register_cycle(candidates[1]))
    versions = first.client.search_model_versions(f"name='{first.name}'")
    if not guarded:  # the interleaving the guard prevents really happens here
        assert len(versions) == 2 and all(isinstance(r, VersionInfo) for r in results)
        return
    assert [str(v.version) for v in versions] == ["1"]
    registered = [r for r in results if isinstance(r, VersionInfo)]
    refused = [str(r) for r in results if isinstance(r, RatchetError)]
    assert [v.version for v in registered] == ["1"]
    assert refused == [
        "cycle c-same is already registered as version 1 by another worker: not registering it again"
    ]
    assert first.client.search_registered_models(f"name='{first.lock_name}'") == []  # released


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_two_candidates_of_one_champion_promote_once(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guarded: bool
) -> None:
    first, second = workers(mlflow_server, f"race-promote-{guarded}")
    first.log_candidate(record(tmp_path, "c-1"))
    first.promote("1", expected_parent=None)
    for cycle_id in ("c-2", "c-3"):  # two candidates, both evaluated against champion 1
        first.log_candidate(replace(record(tmp_path, cycle_id), parent_version="1"))
    if not guarded:
        unguarded(monkeypatch)
    # both have checked that @champion is still 1; the one that met second then sets it later
    meet_after(monkeypatch, "_check_parent", stagger=0.5)
    results = race(
        lambda: first.promote("2", expected_parent="1"), lambda: second.promote("3", expected_parent="1")
    )
    promoted = [v for v in first.versions() if v.action == "promoted" and v.version != "1"]
    if not guarded:  # both were recorded as promoted: one of them silently lost @champion
        assert len(promoted) == 2 and results == [None, None]
        return
    assert len(promoted) == 1
    winner = promoted[0].version
    champion = first.champion()
    assert champion is not None and champion.version == winner
    loser = "3" if winner == "2" else "2"
    assert [str(r) for r in results if isinstance(r, RatchetError)] == [
        f"not promoting version {loser}: version {winner}, evaluated against the same champion 1, "
        "was promoted first"
    ]
    assert first.version(loser).action is None  # left unapplied, its batches still pending


def test_an_expired_lock_left_by_a_dead_worker_is_broken(mlflow_server: MlflowServer) -> None:
    first, second = workers(mlflow_server, "race-expired")
    dead = first.guard("registering a cycle", ttl=0.5)
    dead.__enter__()  # a worker that took the lock and died: it never leaves
    first._held = None
    with pytest.raises(RatchetError, match="is busy: .* has been registering a cycle since"):
        with second.guard("promoting", wait=0.2):
            pass
    time.sleep(0.6)
    with second.guard("promoting", wait=0.2):
        held = second._lock_tags()
        assert held is not None and held["what"] == "promoting"
    assert second._lock_tags() is None


def test_a_lock_left_by_an_ended_process_of_this_machine_is_broken_at_once(
    mlflow_server: MlflowServer,
) -> None:
    first, second = workers(mlflow_server, "race-killed")
    gone = subprocess.Popen(["true"])  # noqa: S607
    gone.wait()
    # what a worker killed -9 mid-registration leaves: a lock an hour from expiry, its process gone
    tags = {"holder": f"{socket.gethostname()}:{gone.pid}:x", "what": "registering", "since": "-"}
    first.client.create_registered_model(first.lock_name, tags=tags | {"expires": str(time.time() + 3600)})
    with second.guard("promoting", wait=0.2):
        held = second._lock_tags()
        assert held is not None and held["what"] == "promoting"


# A whole `ratchet retrain` in a child process that, once its cycle is committed and pushed (just
# before it registers), waits for the other one to get there too.
RETRAIN_AFTER_MEETING = """
import sys, time
from pathlib import Path
from ratchet import faults
from ratchet.cli import main

workspace, meet, me, other = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
reached = faults.reached

def meet_then_go(point: str) -> None:
    reached(point)
    if point == "retrain:pushed":
        (meet / me).touch()
        deadline = time.monotonic() + 120
        while not (meet / other).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

faults.reached = meet_then_go
sys.exit(main(["retrain", "-w", workspace]))
"""


def test_two_workspaces_retraining_the_same_cycle_register_it_once(
    mlflow_server: MlflowServer,
    prefect_server: str,
    stream_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    roots = [new_workspace(tmp_path / name / "ws", "race-cycle") for name in ("a", "b")]
    for root in roots:
        app.ingest(root, stream_files["digits-0-4"])  # the same data: the same batch id, the same cycle
    meet = tmp_path / "meet"
    meet.mkdir()
    env = os.environ | {"PREFECT_API_URL": prefect_server}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", RETRAIN_AFTER_MEETING, str(root), str(meet), me, other],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for root, me, other in ((roots[0], "a", "b"), (roots[1], "b", "a"))
    ]
    done = [(w.wait(timeout=300), *w.communicate()) for w in workers]
    # both had trained and committed before either registered
    assert sorted(os.listdir(meet)) == ["a", "b"], done
    assert sorted(code for code, _, _ in done) == [0, 1], done
    _, _, refusal = next(d for d in done if d[0] == 1)
    assert re.fullmatch(
        r"ratchet: error: cycle \w+ is already registered as version 1 by another worker: "
        "not registering it again",
        refusal.strip(),
    ), refusal
    assert "Traceback" not in "".join(out + err for _, out, err in done)
    registry = open_registry(open_workspace(roots[0]))
    assert [v.version for v in registry.versions()] == ["1"]
    champion = registry.champion()
    assert champion is not None and champion.version == "1" and champion.action == "promoted"
