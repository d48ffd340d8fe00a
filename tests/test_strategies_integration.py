"""Strategies on the real stack: the gate stops a forgetting finetune, and continual-learning state
(replay memory, EWC importance and anchors, class map) round-trips through the registry."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ratchet import app
from ratchet.cycle import ledger
from ratchet.registry import open_registry
from ratchet.workspace import init_workspace, open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")

STATE_FILES = ("spec.json", "weights.pt", "memory.npz", "ewc.pt")
RunRatchet = Callable[..., "subprocess.CompletedProcess[str]"]


def digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in STATE_FILES}


def test_gate_rejects_a_forgetting_finetune_and_state_survives_the_registry(
    tmp_path: Path, stream_files: dict[str, Path], run_ratchet: RunRatchet
) -> None:
    root = tmp_path / "ws"
    init_workspace(root, model_name="strategies-it")
    ws = open_workspace(root)

    # given a champion trained with replay+ewc on digits 0-4
    app.ingest(root, stream_files["digits-0-4"])
    first = app.retrain(root, strategy="replay+ewc")
    assert first is not None and first.action == "promoted"
    trained = digests(ws.stage_paths().candidate / "checkpoint")

    # then its state comes back byte for byte from the registry, in a fresh process
    code = f"""
import hashlib, sys, tempfile
from pathlib import Path
from ratchet.cycle import ledger
from ratchet.registry import open_registry
from ratchet.workspace import open_workspace
from ratchet.stages.train import sample_lookup
from ratchet.train.checkpoint import load_checkpoint
ws = open_workspace(Path({str(root)!r}))
with tempfile.TemporaryDirectory() as d:
    ck_dir = open_registry(ws).download_checkpoint({first.version!r}, Path(d))
    # the memory names samples of the workspace's batches: read back from its data/
    ck = load_checkpoint(ck_dir, samples=sample_lookup(ws.data_dir, None))
    assert "ewc" in ck.states and ck.memory is not None and len(ck.memory) > 0
    assert ck.spec.classes == tuple("01234")
    for name in {STATE_FILES!r}:
        print(name, hashlib.sha256((ck_dir / name).read_bytes()).hexdigest())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    fetched = dict(line.split() for line in done.stdout.strip().splitlines()[-len(STATE_FILES) :])
    assert fetched == trained

    # when the next batch brings only new classes and the cycle naively fine-tunes on it
    app.ingest(root, stream_files["digits-5-9"])
    second = app.retrain(root, strategy="finetune")
    assert second is not None

    # then the next cycle started from the champion's stored state, not from nothing
    assert digests(ws.stage_paths().prepared / "parent") == trained
    # and the gate rejects the candidate that forgot digits 0-4 as forgetting, with the numbers
    assert second.action == "rejected"
    assert second.metrics.candidate.old < 0.5
    assert any(r.startswith("FAIL: forgetting: old data, known classes:") for r in second.reasons)
    champion = open_registry(ws).champion()
    assert champion is not None and champion.version == first.version

    # and the batch is held, not consumed: a person requeues it with another strategy
    batch = second.batches[0]
    states = {s.batch_id: s for s in ledger(ws, open_registry(ws))}
    assert states[batch].state == "held" and "forgetting" in states[batch].reason
    done = run_ratchet(
        "requeue", batch[:4], "--strategy", "replay", "--reason", "finetune forgets", "-w", str(root)
    )
    assert done.returncode == 0, done.stderr
    assert f"batch {batch} requeued" in done.stdout and "with strategy replay" in done.stdout
    third = app.retrain(root)

    # then the retry is a new cycle (not a resume of the rejected one) that learns digits 5-9
    assert third is not None and not third.resumed
    assert (list(third.batches), third.strategy, third.action) == ([batch], "replay", "promoted")
    assert third.version != second.version
    states = {s.batch_id: s for s in ledger(ws, open_registry(ws))}
    assert [s.state for s in states.values()] == ["learned", "learned"]
    assert app.retrain(root) is None
