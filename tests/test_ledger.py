"""The batch ledger is pure: every state a batch can be in, from decisions and marks."""

from __future__ import annotations

from ratchet.ledger import BatchMark, BatchState, Decided, batch_states


def mark(action: str, after: str | None, strategy: str | None = None) -> BatchMark:
    return BatchMark(action, "because", "alice", "2026-01-01T00:00:00+00:00", after, strategy)  # type: ignore[arg-type]


def rejected(version: str, *batches: str) -> Decided:
    return Decided(version, batches, False, ("FAIL: labels: suspect batch", "FAIL: forgetting: -6 pt"))


def promoted(version: str, *batches: str) -> Decided:
    return Decided(version, batches, True, ())


def states(
    decided: list[Decided], learned: set[str], marks: dict[str, BatchMark] | None = None
) -> list[BatchState]:
    return batch_states(["b1", "b2", "b3"], decided, learned, marks or {})


def test_undecided_batches_are_pending_and_the_champions_lineage_is_learned() -> None:
    out = states([promoted("1", "b1")], {"b1"})
    assert [(s.batch_id, s.state) for s in out] == [("b1", "learned"), ("b2", "pending"), ("b3", "pending")]


def test_a_rejected_batch_is_held_with_the_failed_checks_as_its_reason() -> None:
    out = states([promoted("1", "b1"), rejected("2", "b2", "b3")], {"b1"})
    assert [s.state for s in out] == ["learned", "held", "held"]
    assert out[1].version == "2"
    assert out[1].reason == "version 2 rejected: labels: suspect batch; forgetting: -6 pt"


def test_a_requeue_makes_a_held_batch_pending_until_the_next_decision() -> None:
    decided = [promoted("1", "b1"), rejected("2", "b2", "b3")]
    out = states(decided, {"b1"}, {"b2": mark("requeue", "2", "joint")})
    assert (out[1].state, out[1].strategy, out[1].retry_of) == ("pending", "joint", "2")
    assert out[2].state == "held"  # requeued one by one
    # rejected again: the requeue answered version 2, not version 3
    out = states(decided + [rejected("3", "b2")], {"b1"}, {"b2": mark("requeue", "2", "joint")})
    assert (out[1].state, out[1].version) == ("held", "3")
    # learned at last
    out = states(decided + [promoted("3", "b2")], {"b1", "b2"}, {"b2": mark("requeue", "2")})
    assert out[1].state == "learned"


def test_a_dropped_batch_stays_dropped_with_who_and_why() -> None:
    out = states([rejected("1", "b1")], set(), {"b1": mark("drop", "1"), "b3": mark("drop", None)})
    assert [s.state for s in out] == ["dropped", "pending", "dropped"]
    assert out[0].reason == "dropped by alice at 2026-01-01T00:00:00+00:00: because"


def test_a_dropped_batch_can_be_requeued() -> None:
    out = states([rejected("1", "b1")], set(), {"b1": mark("requeue", "1"), "b3": mark("requeue", None)})
    assert [(s.state, s.retry_of) for s in out] == [("pending", "1"), ("pending", None), ("pending", None)]


def test_a_rolled_back_version_puts_its_batches_back_in_the_queue() -> None:
    # version 2 learned b2 and was promoted; the champion is back at version 1
    out = states([promoted("1", "b1"), promoted("2", "b2")], {"b1"})
    assert (out[1].state, out[1].retry_of) == ("pending", "2")  # a retry: a new cycle, not a resume
    assert out[1].reason == "version 2 was promoted, then rolled back: the next cycle trains on it again"
    # and a person can still keep it out
    dropped = states([promoted("1", "b1"), promoted("2", "b2")], {"b1"}, {"b2": mark("drop", "2")})
    assert dropped[1].state == "dropped"


def test_the_latest_decision_wins_by_version_number_not_by_order_or_text() -> None:
    decided = [promoted("10", "b1"), rejected("9", "b1")]
    assert states(decided, set())[0].reason.startswith("version 10 was promoted, then rolled back")
