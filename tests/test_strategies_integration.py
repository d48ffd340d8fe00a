"""Strategies on the real stack: the gate stops a forgetting finetune, and continual-learning state
(replay memory, EWC importance and anchors, class map) round-trips through the registry."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from ratchet.cli import ingest_into, run_retrain
from ratchet.cycle import open_registry
from ratchet.workspace import init_workspace, open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")

STATE_FILES = ("spec.json", "weights.pt", "memory.npz", "ewc.pt")


def digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in STATE_FILES}


def test_gate_rejects_a_forgetting_finetune_and_state_survives_the_registry(
    tmp_path: Path, stream_files: dict[str, Path]
) -> None:
    root = tmp_path / "ws"
    init_workspace(root, model_name="strategies-it")
    ws = open_workspace(root)

    # given a champion trained with replay+ewc on digits 0-4
    ingest_into(root, stream_files["digits-0-4"])
    first = run_retrain(root, strategy="replay+ewc")
    assert first is not None and first["action"] == "promoted"
    trained = digests(ws.artifacts / "candidate" / "checkpoint")

    # then its state comes back byte for byte from the registry, in a fresh process
    code = f"""
import hashlib, sys, tempfile
from pathlib import Path
from ratchet.cycle import open_registry
from ratchet.workspace import open_workspace
from ratchet.train.checkpoint import load_checkpoint
ws = open_workspace(Path({str(root)!r}))
with tempfile.TemporaryDirectory() as d:
    ck_dir = open_registry(ws).download_checkpoint({first["version"]!r}, Path(d))
    ck = load_checkpoint(ck_dir)
    assert ck.ewc is not None and len(ck.memory) > 0 and ck.spec.classes == tuple("01234")
    for name in {STATE_FILES!r}:
        print(name, hashlib.sha256((ck_dir / name).read_bytes()).hexdigest())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    fetched = dict(line.split() for line in done.stdout.strip().splitlines()[-len(STATE_FILES) :])
    assert fetched == trained

    # when the next batch brings only new classes and the cycle naively fine-tunes on it
    ingest_into(root, stream_files["digits-5-9"])
    second = run_retrain(root, strategy="finetune")
    assert second is not None

    # then the next cycle started from the champion's stored state, not from nothing
    assert digests(ws.artifacts / "prepared" / "parent") == trained
    # and the gate rejects the candidate that forgot digits 0-4, saying so with numbers
    assert second["action"] == "rejected"
    assert second["metrics"]["candidate"]["old"] < 0.5
    assert any(r.startswith("FAIL: old accuracy") for r in second["reasons"])
    champion = open_registry(ws).champion()
    assert champion is not None and champion.version == first["version"]
