"""The gate is pure: edge cases of the policy, and reasons that carry the numbers."""

import pytest

from ratchet.config import GateParams
from ratchet.gate import GateInput, decide

POLICY = GateParams(max_old_drop_pt=1.0, min_new_gain_pt=0.0, min_accuracy=0.5)


def metrics(**kw: object) -> GateInput:
    base: dict[str, object] = dict(
        candidate_old=0.90,
        candidate_new=0.80,
        candidate_all=0.85,
        champion_old=0.90,
        champion_new=0.70,
        has_champion=True,
    )
    base.update(kw)
    return GateInput(**base)  # type: ignore[arg-type]


def test_first_model_is_promoted_when_above_the_floor() -> None:
    d = decide(metrics(has_champion=False, champion_old=None, champion_new=None, candidate_old=None), POLICY)
    assert d.promote
    assert any("first model" in r for r in d.reasons)


def test_first_model_below_the_floor_is_rejected() -> None:
    d = decide(metrics(has_champion=False, champion_old=None, champion_new=None, candidate_all=0.42), POLICY)
    assert not d.promote
    assert "FAIL: accuracy on all held-out data 0.420 is below the floor 0.500" in d.reasons


def test_forgetting_beyond_the_allowed_drop_rejects_with_numbers() -> None:
    d = decide(metrics(champion_old=0.912, candidate_old=0.897), POLICY)
    assert not d.promote
    assert "FAIL: old accuracy 0.912 -> 0.897, drop 1.5 pt > allowed 1.0 pt" in d.reasons


def test_drop_exactly_at_the_limit_passes() -> None:
    # 91.2 - 90.2 is 1.0000000000000142 in floats: the gate must compare the rounded points it prints
    d = decide(metrics(champion_old=0.912, candidate_old=0.902), POLICY)
    assert d.promote, d.reasons


def test_gain_below_the_minimum_rejects() -> None:
    policy = GateParams(max_old_drop_pt=1.0, min_new_gain_pt=2.0, min_accuracy=0.5)
    d = decide(metrics(champion_new=0.70, candidate_new=0.71), policy)
    assert not d.promote
    assert "FAIL: new accuracy 0.700 -> 0.710, gain +1.0 pt < required +2.0 pt" in d.reasons


def test_no_old_data_skips_the_forgetting_check() -> None:
    d = decide(metrics(candidate_old=None, champion_old=None), POLICY)
    assert d.promote
    assert any("forgetting cannot be measured" in r for r in d.reasons)


@pytest.mark.parametrize("promote", [True, False])
def test_summary_is_one_paragraph_leading_with_the_verdict(promote: bool) -> None:
    d = decide(metrics(candidate_old=0.90 if promote else 0.5), POLICY)
    assert d.promote is promote
    text = d.summary()
    assert "\n" not in text
    assert text.startswith("Promoted" if promote else "Rejected")


def test_same_input_same_decision() -> None:
    assert decide(metrics(), POLICY) == decide(metrics(), POLICY)
