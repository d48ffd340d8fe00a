"""The reviewer's desk on the real stack: manual approval, reject, override, history and rollback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ratchet import app
from ratchet.cli import main
from ratchet.errors import RatchetError
from ratchet.workspace import init_workspace

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_manual_approval_reject_override_and_history(
    tmp_path: Path, stream_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "ws"
    init_workspace(root, model_name="review-it")
    params = root / "params.yaml"
    params.write_text(re.sub(r"approval: auto", "approval: manual", params.read_text()))

    # a passing candidate waits as @challenger; batches that arrive meanwhile wait too
    app.ingest(root, stream_files["digits-0-4"])
    first = app.retrain(root)
    assert first is not None and first.action == "challenger"
    app.ingest(root, stream_files["digits-5-9"])
    assert app.retrain(root) is None
    waiting = app.status(root)
    assert waiting.champion is None and waiting.awaiting == ["1"]
    assert waiting.in_state("pending") == [b.batch_id for b in waiting.batches]  # none lost, none held

    # approve: promoted, with who and why on the version
    assert main(["approve", "1", "-w", str(root), "--reason", "spot-checked 20 images", "--by", "ana"]) == 0
    assert "Approved by ana" in capsys.readouterr().out
    now = app.status(root)
    assert now.champion is not None and now.champion.version == "1"
    v1 = now.champion
    assert v1.review is not None and v1.review.by == "ana" and v1.review.action == "approve"
    assert v1.description.startswith("Approved by ana at ") and "spot-checked 20 images" in v1.description
    with pytest.raises(RatchetError, match="not a challenger awaiting review"):
        app.review(root, "1", "approve", "again", by="ana")

    # the waiting batch trains now; its candidate is rejected by a person: its batch is held, with why
    second = app.retrain(root)
    assert second is not None and second.action == "challenger" and second.parent == "1"
    assert main(["reject", "2", "-w", str(root), "--reason", "class 7 looks mislabelled", "--by", "ben"]) == 0
    now = app.status(root)
    assert now.champion is not None and now.champion.version == "1" and now.awaiting == []
    held = next(b for b in now.batches if b.version == "2")
    assert held.state == "held" and "Rejected by ben" in held.reason and "mislabelled" in held.reason

    # the gate rejects the scrambled batch; a person overrides it, on record
    app.ingest(root, stream_files["digits-scrambled"])
    third = app.retrain(root)
    assert third is not None and third.action == "rejected"
    with pytest.raises(RatchetError, match="nothing to approve"):
        app.review(root, third.version, "approve", "no", by="ana")
    app.review(root, third.version, "override", "labels checked by hand: the gate is wrong here", by="cy")
    now = app.status(root)
    assert now.champion is not None and now.champion.version == third.version
    assert now.champion.review is not None and now.champion.review.action == "override"

    # and back: the history says all of it, oldest first, with actors and reasons
    assert main(["rollback", "-w", str(root), "--by", "dee"]) == 0
    capsys.readouterr()
    assert main(["history", "-w", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    whats = [line.split()[1] for line in lines]
    assert whats == [
        "gate",
        "approve",
        "gate",
        "reject",
        "gate",
        "override",
        "rollback",
    ], lines
    assert "ana" in lines[1] and "- -> 1" in lines[1] and "spot-checked" in lines[1]
    assert "ben" in lines[3] and "mislabelled" in lines[3]
    assert "cy" in lines[5] and f"1 -> {third.version}" in lines[5]
    assert "dee" in lines[6] and f"{third.version} -> 1" in lines[6]

    # rolled back to the same version twice: the history keeps both
    assert main(["rollback", "-w", str(root), "--to", third.version, "--by", "eve"]) == 0
    assert main(["rollback", "-w", str(root), "--by", "fay"]) == 0
    capsys.readouterr()
    rollbacks = [e for e in app.history(root) if e.what == "rollback"]
    assert [(e.by, e.versions) for e in rollbacks] == [
        ("dee", f"{third.version} -> 1"),
        ("eve", f"1 -> {third.version}"),
        ("fay", f"{third.version} -> 1"),
    ]
