"""The reviewer's desk in the Prefect UI: a paused retrain run, answered through the real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pydantic
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.flow_runs import resume_flow_run

from ratchet import app
from ratchet.flows import review
from ratchet.workspace import init_workspace, open_workspace

# the flow as a deployment run would call it, in its own process: the test answers from outside
CHILD = """
import sys
from ratchet.flows.retrain import retrain
retrain.with_options(flow_run_name=sys.argv[2])(workspace=sys.argv[1], wait_for_review=True)
"""


def manual_workspace(root: Path) -> Path:
    init_workspace(root, model_name="review-ui")
    params = root / "params.yaml"
    text = params.read_text().replace("approval: auto", "approval: manual")
    # four passes learn digits 0-4 well past the gate's floors: the answer is what is under test
    params.write_text(re.sub(r"num_epochs: 12", "num_epochs: 4", text))
    return root


def run_named(name: str) -> FlowRun | None:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return runs[0] if runs else None


def run_log(run: FlowRun) -> str:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return "\n".join(log.message for log in logs)


def test_an_answer_in_the_prefect_ui_is_recorded_as_the_command_line_records_it(
    tmp_path: Path, stream_files: dict[str, Path], prefect_server: str
) -> None:
    # given a manual workspace and a retrain run that pauses for review, in its own process
    root = manual_workspace(tmp_path / "ws")
    app.ingest(root, stream_files["digits-0-4"])
    name = f"review-{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), name],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (run := run_named(name)) is None or run.state is None or not run.state.is_paused():
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "the run never paused"
            time.sleep(0.5)
        # while it waits the workspace is free, and version 1 waits as @challenger
        with open_workspace(root).lock():
            assert app.status(root).awaiting == ["1"]

        # when a blank reason is sent, the server refuses it against the form and the run stays paused
        with pytest.raises(RuntimeError, match="reason"):
            resume_flow_run(run.id, run_input={"action": "approve", "reason": ""})
        # and a proper answer resumes it
        resume_flow_run(
            run.id, run_input={"action": "approve", "reason": "spot-checked 20 images", "by": "ana"}
        )
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # then version 1 is champion with the record `ratchet approve` writes, and the run completed
    assert child.returncode == 0, out
    done = run_named(name)
    assert done is not None and done.state is not None and done.state.is_completed()
    champion = app.status(root).champion
    assert champion is not None and champion.version == "1"
    assert champion.review is not None
    assert (champion.review.action, champion.review.by, champion.review.reason) == (
        "approve",
        "ana",
        "spot-checked 20 images",
    )
    assert champion.tag("review") == champion.review.to_json()
    assert champion.description.startswith(f"{champion.review.sentence()}\n\n")
    said = run_log(done)
    assert "version 1 passed the gate and waits as @challenger" in said and "waiting up to 60 min" in said
    assert f"version 1: {champion.review.sentence()} (now champion)" in said
    event = next(e for e in app.history(root) if e.what == "approve")
    assert (event.by, event.versions, event.reason) == ("ana", "- -> 1", "spot-checked 20 images")

    # and an answer arriving after a version was decided (from the command line, say) changes nothing
    late = review.ChallengerAnswer(action="reject", reason="too late", by="ben")
    said = review.record(root, "1", late)
    assert "already reviewed" in said and "Approved by ana" in said
    assert app.status(root).champion == champion


@flow
def unanswered(wait_s: float) -> review.Asked:
    return review.pause_for(review.ChallengerAnswer, "nobody answers this one", wait_s=wait_s)


@pytest.mark.usefixtures("prefect_server")
def test_an_unanswered_pause_ends_the_run_cleanly() -> None:
    # given a run that pauses for two seconds, when nobody answers
    state = unanswered(2.0, return_state=True)
    # then the run completes (Prefect's own pause timeout fails it) and says nobody answered
    assert state.is_completed(), state
    asked = state.result()
    assert asked.answer is None and asked.note == "no answer in the Prefect UI within 2 s"


@pytest.mark.parametrize(
    "given",
    [
        {"action": "approve", "reason": "   "},
        {"action": "override", "reason": "fine"},
        {"action": "approve"},
        {"action": "approve", "reason": "fine", "by": ""},
    ],
)
def test_the_challenger_form_refuses_what_does_not_fit(given: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        review.ChallengerAnswer(**given)
