"""A class-incremental stream on the real stack: every batch brings two new digits, and replay passes
every cycle. The old gate read the interference of new classes as forgetting and locked the champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ratchet import app
from ratchet.cycle import ledger
from ratchet.data.digits import StreamBatch
from ratchet.registry import open_registry
from ratchet.workspace import init_workspace, open_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")


def two_digits_at_a_time() -> list[StreamBatch]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    return [
        StreamBatch(f"digits-{k}-{k + 1}", f"digits {k} and {k + 1}", images[idx], labels[idx])
        for k in range(0, 10, 2)
        for idx in [np.flatnonzero((labels == k) | (labels == k + 1))]
    ]


def test_replay_passes_every_cycle_of_a_class_incremental_stream(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    init_workspace(root, model_name="class-il-it")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    outcomes = []
    for batch in two_digits_at_a_time():
        app.ingest(root, batch.save_npz(incoming))
        outcome = app.retrain(root)
        assert outcome is not None
        outcomes.append(outcome)

    # every cycle is promoted, each new pair learned and told apart, the old ones not forgotten
    assert [o.action for o in outcomes] == ["promoted"] * 5, [o.reasons for o in outcomes]
    for o in outcomes[1:]:
        checks = {r.split(": ")[1] for r in o.reasons}
        assert {"forgetting", "class forgetting", "interference", "new classes"} <= checks
        assert o.metrics.champion.new == 0.0 and o.metrics.candidate.new > 0.9
    ws = open_workspace(root)
    champion = open_registry(ws).champion()
    assert champion is not None and champion.version == outcomes[-1].version
    assert champion.metrics.candidate.all is not None and champion.metrics.candidate.all > 0.9
    assert {s.state for s in ledger(ws, open_registry(ws))} == {"learned"}
