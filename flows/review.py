"""The reviewer's desk in the Prefect UI: a run that leaves a version for a person pauses for the answer.

In manual approval, a deployment run of the retrain flow that marks a @challenger (or sees the gate
reject a candidate) pauses with a form: approve or reject the challenger, or override or keep the
rejection, with a reason and who answers. The answer is recorded by `Registry.review`, exactly as
`ratchet approve|reject|override` records it, under the workspace lock, which the pause does not
hold: the command line can answer meanwhile, and then the form's answer changes nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import pydantic
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.input import RunInput, keyset_from_paused_state, read_flow_run_input
from prefect.states import Paused, Running

from ratchet.cycle import Outcome
from ratchet.errors import RatchetError
from ratchet.ledger import Review
from ratchet.registry import now, open_registry
from ratchet.workspace import open_workspace

# Prefect keeps no user names: the form's default says where the answer came from
UI_REVIEWER = "prefect-ui"
# how often the paused run looks for the answer; a person does not notice two seconds
POLL_S = 2.0
# The server fails a pause left past its deadline (a rule on leaving Paused, and a service that
# sweeps expired pauses): an unanswered review is no failure, so this process ends the pause itself
# at review.wait_minutes, and the server's later deadline only fails a run whose process died.
SERVER_GRACE_S = 60

NonBlank = Annotated[str, pydantic.StringConstraints(strip_whitespace=True, min_length=1)]


class ChallengerAnswer(RunInput):
    """The answer on a version waiting as @challenger."""

    action: Literal["approve", "reject"]
    reason: NonBlank
    by: NonBlank = UI_REVIEWER


class RejectionAnswer(RunInput):
    """The answer on a version the gate rejected."""

    action: Literal["override", "keep-rejected"]
    reason: NonBlank
    by: NonBlank = UI_REVIEWER


Answer = ChallengerAnswer | RejectionAnswer
Question = type[ChallengerAnswer] | type[RejectionAnswer]


@dataclass(frozen=True)
class Asked:
    """What came of a pause: the answer, or why there is none (`note`, one line)."""

    answer: Answer | None
    note: str = ""


def should_ask(outcome: Outcome | None, approval: str, dry_run: bool) -> bool:
    """A person has something to decide: a challenger under manual approval, or a gate rejection."""
    if outcome is None or approval != "manual" or dry_run:
        return False
    return outcome.action in ("challenger", "rejected")


def ask(workspace: Path, outcome: Outcome, wait_minutes: float) -> None:
    """Pause the current flow run for the reviewer's answer on `outcome.version`, then record it."""
    v = outcome.version
    question: Question
    if outcome.action == "challenger":
        question, what = ChallengerAnswer, f"passed the gate and waits as @challenger (`ratchet approve {v}`)"
    else:
        question, what = RejectionAnswer, f"was rejected by the gate (`ratchet override {v}` promotes it)"
    batches = ", ".join(outcome.batches)
    description = "\n".join(
        [f"Version {v} (batches {batches}) {what}. Answer here or from the command line.", ""]
        + [f"- {reason}" for reason in outcome.reasons]
    )
    print(f"version {v} {what}: waiting up to {wait_minutes:g} min for an answer in the Prefect UI")
    asked = pause_for(question, description, wait_s=wait_minutes * 60)
    if asked.answer is None:
        still = "still awaits review" if outcome.action == "challenger" else "stays rejected"
        print(f"{asked.note}: version {v} {still}; the command line can still decide")
        return
    print(record(workspace, v, asked.answer))


def record(workspace: Path, version: str, answer: Answer) -> str:
    """Record the answer as `ratchet approve|reject|override` does; returns a line saying what came of it."""
    ws = open_workspace(workspace)
    try:
        with ws.lock():
            registry = open_registry(ws)
            found = registry.version(version)
            if found.review is not None:
                return (
                    f"version {version} was already reviewed ({found.review.sentence()}): "
                    f"the answer from the Prefect UI ({answer.action}) changes nothing"
                )
            if answer.action == "keep-rejected":  # the gate's call stands: nothing to record
                return f"version {version} stays rejected ({answer.by}: {answer.reason})"
            registry.review(version, Review(answer.action, answer.reason, answer.by, now()))
            after = registry.version(version)
    except RatchetError as exc:
        return f"the answer from the Prefect UI was not recorded: {exc}"
    assert after.review is not None
    return f"version {version}: {after.review.sentence()} (now {after.status})"


def pause_for(question: Question, description: str, wait_s: float) -> Asked:
    """Pause the current flow run with `question` as its resume form, for at most `wait_s` seconds.

    What `prefect.flow_runs.pause_flow_run(wait_for_input=...)` does (the same Paused state and
    input keys, so the UI shows the same form), except at the deadline: there Prefect fails the run,
    and this resumes it and returns no answer.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("pause_for runs inside a flow run")
    run_id: UUID = context.flow_run.id
    # a key of its own: a run retried from the UI asks again (a key that has fired cannot pause)
    key = f"review-{uuid4().hex[:12]}"
    paused: State[Any] = Paused(timeout_seconds=math.ceil(wait_s) + SERVER_GRACE_S, pause_key=key)
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = {str(k): v for k, v in keyset.items()}
    with get_client(sync_client=True) as client:
        result = client.set_flow_run_state(run_id, paused)
        if not result.state or not result.state.is_paused():
            return Asked(
                None, f"the run could not pause ({getattr(result.details, 'reason', result.status)})"
            )
        question.with_initial_data(description=description).save(keyset)
        deadline = time.monotonic() + wait_s
        while True:
            state = client.read_flow_run(run_id).state
            if state is None or not state.is_paused():
                break
            if time.monotonic() >= deadline:
                client.set_flow_run_state(run_id, Running(message="no answer in time: resumed"))
                break
            time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
        if state is not None and not (state.is_paused() or state.is_running()):
            return Asked(None, f"the run was {state.name} while it waited")
    raw = read_flow_run_input(keyset["response"], flow_run_id=run_id)
    if not isinstance(raw, dict):  # None: nobody answered (one that came with the deadline counts)
        within = f"{wait_s:g} s" if wait_s < 60 else f"{wait_s / 60:g} min"
        return Asked(None, f"no answer in the Prefect UI within {within}")
    try:
        return Asked(question(**raw))
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return Asked(None, f"the answer from the Prefect UI is not valid ({problems})")
