"""The gate is pure: hand-computed cases of each check, edge cases, and reasons that carry the numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ratchet.config import GateParams
from ratchet.gate import Decision, GateInput, HeldOut, decide, mcnemar_worse, p_at_least, p_at_most

POLICY = GateParams(
    alpha=0.05,
    max_old_drop_pt=2.0,
    max_class_drop_pt=10.0,
    hard_drop_pt=10.0,
    max_interference_pt=25.0,
    max_new_drop_pt=1.0,
    min_new_class_lift=0.5,
    max_label_gap_pt=20.0,
    min_accuracy=0.5,
    min_class_accuracy=0.1,
)


def held(
    labels: list[str],
    champion: list[str] | None = None,
    candidate: list[str] | None = None,
    known: list[str] | None = None,
    among_new: list[str] | None = None,
) -> HeldOut:
    """A held-out set; by default both models are right everywhere, the candidate among known classes."""
    cand = candidate if candidate is not None else labels
    return HeldOut(
        labels=np.array(labels, dtype=np.str_),
        champion=np.array(champion if champion is not None else labels, dtype=np.str_),
        candidate=np.array(cand, dtype=np.str_),
        candidate_known=np.array(known if known is not None else cand, dtype=np.str_),
        candidate_among_new=np.array(
            among_new if among_new is not None else [""] * len(labels), dtype=np.str_
        ),
    )


def empty() -> HeldOut:
    return held([])


def check(d: Decision, name: str) -> str:
    return next(r for r in d.reasons if r.split(": ")[1] == name)


def failed(d: Decision) -> list[str]:
    return [r.split(": ")[1] for r in d.reasons if r.startswith("FAIL")]


# ---- statistics, by hand -------------------------------------------------------------------------


def test_binomial_tails_match_hand_computed_values() -> None:
    assert p_at_least(6, 6, 0.5) == pytest.approx(1 / 64)
    assert p_at_least(6, 8, 0.5) == pytest.approx((28 + 8 + 1) / 256)
    assert p_at_least(0, 5, 0.5) == 1.0
    assert p_at_least(3, 2, 0.5) == 0.0
    assert p_at_most(0, 3, 0.5) == pytest.approx(1 / 8)
    assert p_at_most(3, 3, 0.5) == 1.0


def test_mcnemar_counts_only_discordant_pairs() -> None:
    champion_hit = np.array([True, True, True, False, False, True])
    candidate_hit = np.array([True, False, False, True, False, True])
    b, c, p = mcnemar_worse(champion_hit, candidate_hit)
    assert (b, c) == (2, 1)
    assert p == pytest.approx(4 / 8)  # P(X >= 2), X ~ Bin(3, 1/2)


def test_no_discordant_pairs_means_no_evidence_of_a_drop() -> None:
    assert mcnemar_worse(np.array([True, False]), np.array([True, False])) == (0, 0, 1.0)


# ---- the first model ----------------------------------------------------------------------------


def test_first_model_is_promoted_when_above_the_floor() -> None:
    d = decide(GateInput((), ("a", "b"), empty(), held(["a", "b"] * 5, among_new=["a", "b"] * 5)), POLICY)
    assert d.promote, d.reasons
    assert "ok: first model: no champion to compare with, so only the floors apply" in d.reasons


def test_first_model_below_the_floor_is_rejected() -> None:
    labels = ["a", "b"] * 5
    wrong = ["b", "a"] * 3 + ["a", "b"] * 2
    d = decide(GateInput((), ("a", "b"), empty(), held(labels, candidate=wrong, among_new=wrong)), POLICY)
    assert not d.promote
    assert check(d, "floor") == (
        "FAIL: floor: accuracy on all 10 held-out samples 0.400 is below the floor 0.500"
    )


def test_a_scrambled_first_batch_is_not_a_first_model() -> None:
    # given two balanced classes the candidate separates no better than a coin
    labels = ["a"] * 10 + ["b"] * 10
    guess = ["a", "b"] * 10
    policy = dataclasses.replace(POLICY, min_accuracy=0.0)
    d = decide(GateInput((), ("a", "b"), empty(), held(labels, candidate=guess, among_new=guess)), policy)
    assert not d.promote
    assert failed(d) == ["new classes"]
    assert "chance 0.500" in check(d, "new classes") and "lift 0.00 < required 0.50" in check(
        d, "new classes"
    )


# ---- forgetting: a drop counts when larger than allowed and significant, or beyond the hard limit ---


def old_set(n: int, champion_right: int, lost: int, gained: int = 0) -> HeldOut:
    """n samples of known classes a/b; the champion gets `champion_right` right, the candidate loses
    `lost` of those and gains `gained` of the champion's misses."""
    labels = ["a", "b"] * (n // 2)
    champ = [lab if i < champion_right else ("b" if lab == "a" else "a") for i, lab in enumerate(labels)]
    cand = list(champ)
    for i in range(lost):
        cand[i] = "b" if labels[i] == "a" else "a"
    for i in range(champion_right, champion_right + gained):
        cand[i] = labels[i]
    return held(labels, champion=champ, candidate=cand)


def domain(old: HeldOut, new: HeldOut | None = None) -> GateInput:
    return GateInput(("a", "b"), (), old, new if new is not None else held(["a", "b"] * 10))


def test_a_significant_drop_beyond_the_allowed_one_rejects_with_the_numbers() -> None:
    # 90/100 -> 84/100: six discordant pairs all against the candidate, p = 1/64
    d = decide(domain(old_set(100, 90, lost=6)), POLICY)
    assert not d.promote
    assert check(d, "forgetting") == (
        "FAIL: forgetting: old data, known classes: 0.900 -> 0.840 (-6.0 pt on 100; 6 vs 0 discordant, "
        "p=0.016), more than the allowed 2.0 pt, significant at 0.05"
    )


def test_a_drop_that_noise_explains_passes_and_says_so() -> None:
    # 90/100 -> 86/100 with 6 lost and 2 gained: P(X >= 6 | 8) = 37/256
    d = decide(domain(old_set(100, 90, lost=6, gained=2)), POLICY)
    assert d.promote, d.reasons
    assert check(d, "forgetting").endswith(
        "6 vs 2 discordant, p=0.145), more than 2.0 pt but not significant at 0.05"
    )


def test_the_hard_limit_rejects_even_without_significance() -> None:
    # a tiny set: 2 of 10 lost is 20 pt, p = 0.25, and the hard limit of 10 pt still rejects
    d = decide(domain(old_set(10, 10, lost=2)), POLICY)
    assert not d.promote
    assert "beyond the hard limit of 10.0 pt" in check(d, "forgetting")


def test_a_tiny_set_cannot_make_a_small_drop_significant() -> None:
    # 50 samples, 3 lost: 6 pt, but p = 1/8 on three discordant pairs
    d = decide(domain(old_set(50, 50, lost=3)), POLICY)
    assert d.promote, d.reasons
    assert "(-6.0 pt on 50; 3 vs 0 discordant, p=0.125)" in check(d, "forgetting")


def test_one_old_sample_and_no_change_is_no_drop() -> None:
    d = decide(domain(held(["a"]), held(["a", "b"])), POLICY)
    assert check(d, "forgetting").startswith(
        "ok: forgetting: old data, known classes: 1.000 -> 1.000 (+0.0 pt on 1; 0 vs 0 discordant, p=1.000)"
    )


def test_a_drop_exactly_at_the_allowed_one_passes() -> None:
    # 91.2 - 90.2 is 1.0000000000000142 in floats: the gate compares the rounded points it prints
    d = decide(domain(old_set(1000, 912, lost=10)), dataclasses.replace(POLICY, max_old_drop_pt=1.0))
    assert "within the allowed 1.0 pt" in check(d, "forgetting")


def test_one_class_forgotten_rejects_although_the_average_holds() -> None:
    # given 10 classes of 40 samples, the candidate loses 16 of class c0 and gains 10 elsewhere
    labels = [f"c{k}" for k in range(10) for _ in range(40)]
    cand = list(labels)
    for i in range(16):
        cand[i] = "c1"
    champ = list(labels)
    for i in range(40, 50):
        champ[i] = "c0"  # the champion missed 10 of class c1 that the candidate gets right
    classes = tuple(f"c{k}" for k in range(10))
    d = decide(GateInput(classes, (), held(labels, champ, cand), held(labels[:20])), POLICY)
    assert check(d, "forgetting").startswith("ok: ")  # -1.5 pt overall
    assert failed(d) == ["class forgetting"]
    assert "class c0 1.000 -> 0.600 (-40.0 pt on 40; 16 vs 0 discordant, p<0.001)" in check(
        d, "class forgetting"
    )


def test_a_class_the_champion_never_predicts_is_no_drop() -> None:
    # the champion says "a" for everything; the candidate learned "b"
    labels = ["a", "b"] * 20
    d = decide(domain(held(labels, champion=["a"] * 40, candidate=labels)), POLICY)
    assert check(d, "forgetting").startswith("ok: forgetting: old data, known classes: 0.500 -> 1.000")
    assert check(d, "class forgetting").startswith("ok: ")


def test_no_old_data_skips_the_forgetting_check() -> None:
    d = decide(GateInput(("a",), (), empty(), held(["a"] * 5)), POLICY)
    assert d.promote, d.reasons
    assert "ok: forgetting: no old held-out data yet, so forgetting cannot be measured" in d.reasons


# ---- interference: old samples given to new classes are the price of learning them -------------------


def class_incremental(old: HeldOut, new: HeldOut | None = None) -> GateInput:
    labels = ["c", "d"] * 20
    return GateInput(("a", "b"), ("c", "d"), old, new if new is not None else held(labels, among_new=labels))


def test_old_samples_taken_for_new_classes_are_interference_not_forgetting() -> None:
    # given 40 old samples, 8 of which the candidate now calls "c", though among a/b it still knows them
    labels = ["a", "b"] * 20
    cand = ["c"] * 8 + labels[8:]
    d = decide(class_incremental(held(labels, candidate=cand, known=labels)), POLICY)
    assert d.promote, d.reasons
    assert check(d, "forgetting").startswith("ok: forgetting: old data, known classes: 1.000 -> 1.000")
    assert check(d, "interference") == (
        "ok: interference: 20.0% of 40 old samples taken for the new classes c, d "
        "(costing 20.0 pt of old accuracy), within the allowed 25.0%"
    )


def test_interference_beyond_the_allowed_share_rejects() -> None:
    labels = ["a", "b"] * 20
    cand = ["d"] * 30 + labels[30:]
    d = decide(class_incremental(held(labels, candidate=cand, known=labels)), POLICY)
    assert failed(d) == ["interference"]
    assert "75.0% of 40 old samples" in check(d, "interference")


def test_forgetting_is_measured_among_known_classes_only() -> None:
    # the candidate gives old samples to new classes AND confuses a with b among the known ones
    labels = ["a", "b"] * 50
    known = ["b" if lab == "a" else "a" for lab in labels[:20]] + labels[20:]
    cand = ["c"] * 10 + known[10:]
    d = decide(class_incremental(held(labels, candidate=cand, known=known)), POLICY)
    assert "FAIL" in check(d, "forgetting") and "1.000 -> 0.800" in check(d, "forgetting")
    assert "10.0% of 100 old samples" in check(d, "interference")


# ---- new classes must be learned, well above chance --------------------------------------------------


def test_new_classes_the_candidate_cannot_separate_are_rejected_whatever_the_gain() -> None:
    # scrambled labels: among c/d the candidate is right half the time; the champion never knew them
    labels = ["c"] * 20 + ["d"] * 20
    among = ["c", "d"] * 20
    d = decide(
        class_incremental(held(["a", "b"] * 20), held(labels, candidate=among, among_new=among)), POLICY
    )
    assert not d.promote
    assert "new classes" in failed(d)
    assert check(d, "new classes").startswith(
        "FAIL: new classes: c, d told apart at 0.500 among themselves on 40"
    )


def test_chance_is_the_majority_class_when_new_classes_are_unbalanced() -> None:
    # 30 c and 10 d: always saying "c" is 0.75 right and learns nothing
    labels = ["c"] * 30 + ["d"] * 10
    d = decide(
        class_incremental(held(["a", "b"] * 20), held(labels, candidate=["c"] * 40, among_new=["c"] * 40)),
        POLICY,
    )
    assert "chance 0.750" in check(d, "new classes") and "lift 0.00" in check(d, "new classes")


def test_one_new_class_has_nothing_to_separate() -> None:
    d = decide(
        GateInput(("a", "b"), ("c",), held(["a", "b"] * 5), held(["c"] * 5, among_new=["c"] * 5)), POLICY
    )
    assert "ok: new classes: one new class (c) in the held-out data: nothing to tell apart" in d.reasons


# ---- new data of known classes, and suspect labels ---------------------------------------------------


def test_losing_ground_on_new_data_of_known_classes_rejects() -> None:
    new_labels = ["a", "b"] * 50
    cand = ["b" if lab == "a" else "a" for lab in new_labels[:10]] + new_labels[10:]
    d = decide(domain(held(["a", "b"] * 50), held(new_labels, candidate=cand)), POLICY)
    assert failed(d) == ["new data"]
    assert "this batch, known classes: 1.000 -> 0.900 (-10.0 pt on 100; 10 vs 0 discordant" in check(
        d, "new data"
    )


def test_a_batch_both_models_disagree_with_is_suspect() -> None:
    # the champion is perfect on old a/b; this batch of a/b has its labels swapped
    truth = ["a", "b"] * 50
    swapped = ["b" if lab == "a" else "a" for lab in truth]
    new = held(swapped, champion=truth, candidate=truth[:90] + swapped[90:])
    d = decide(domain(held(["a", "b"] * 50), new), POLICY)
    assert not d.promote
    reason = check(d, "labels")
    assert reason.startswith(
        "FAIL: labels: suspect batch: on 100 samples of known classes the champion scores 0.000"
    )
    assert "where its old data predicts 1.000 (-100.0 pt, p<0.001)" in reason
    assert "the candidate trained on them 0.100 where 1.000 (-90.0 pt)" in reason


def test_a_domain_shift_the_candidate_learns_is_not_suspect() -> None:
    # the champion scores 0.5 on a new domain, the candidate trained on it 0.95: the labels are fine
    truth = ["a", "b"] * 50
    champ = ["a"] * 100
    cand = truth[:95] + ["b" if lab == "a" else "a" for lab in truth[95:]]
    d = decide(domain(held(["a", "b"] * 50), held(truth, champion=champ, candidate=cand)), POLICY)
    assert d.promote, d.reasons
    assert check(d, "labels").endswith("consistent (allowed gap 20.0 pt)")


# ---- per-class floor ---------------------------------------------------------------------------------


def test_a_class_significantly_below_the_floor_rejects_unless_the_champion_was_no_better() -> None:
    # given new data of a and b where the candidate gets 2 of 100 b right: 0.02, p < 0.01 under 0.1
    labels = ["a"] * 100 + ["b"] * 100
    cand = ["a"] * 198 + ["b"] * 2
    lenient = dataclasses.replace(POLICY, max_new_drop_pt=100.0, hard_drop_pt=100.0, min_accuracy=0.0)
    d = decide(domain(held(["a"] * 50), held(labels, candidate=cand)), lenient)
    assert failed(d) == ["class floor"]
    assert "below the per-class floor 0.100: class b at 0.020 (2/100, p=0.002)" in check(d, "class floor")
    # the same candidate after a champion that was no better on b: not the candidate's fault
    d = decide(domain(held(["a"] * 50), held(labels, champion=["a"] * 200, candidate=cand)), lenient)
    assert check(d, "class floor").startswith("ok: ")


# ---- the decision as a whole -------------------------------------------------------------------------


@pytest.mark.parametrize("promote", [True, False])
def test_summary_is_one_paragraph_leading_with_the_verdict(promote: bool) -> None:
    d = decide(domain(old_set(100, 90, lost=0 if promote else 6)), POLICY)
    assert d.promote is promote
    text = d.summary()
    assert "\n" not in text
    # what decided it comes first, before a list of versions cuts the description short
    if promote:
        assert text.startswith("Promoted: old 0.900 -> 0.900, new 1.000 -> 1.000; every gate check passed.")
    else:
        assert text.startswith(
            f"Rejected: forgetting: {check(d, 'forgetting').removeprefix('FAIL: forgetting: ')}"
        )


def test_same_input_same_decision() -> None:
    assert decide(domain(old_set(100, 90, lost=3)), POLICY) == decide(
        domain(old_set(100, 90, lost=3)), POLICY
    )


def test_every_check_reports_its_numbers() -> None:
    d = decide(class_incremental(held(["a", "b"] * 20)), POLICY)
    numbers = d.numbers()
    assert numbers["forgetting"]["p_value"] == 1.0
    assert numbers["interference"]["share"] == 0.0
    assert numbers["new classes"]["lift"] == 1.0


# ---- held-out: something to judge on -------------------------------------------------------------


def test_a_batch_without_held_out_samples_is_not_judged_as_passed() -> None:
    # given a champion that knows a and b, and a batch of known classes whose held-out split is empty
    old = held(["a"] * 20 + ["b"] * 20)
    d = decide(GateInput(known_classes=("a", "b"), new_classes=(), old=old, new=empty()), POLICY)
    # then the candidate is held, with a reason saying why, instead of "0.000 -> 0.000 ok"
    assert not d.promote
    assert failed(d) == ["held-out"]
    assert "this batch has no held-out samples: the candidate cannot be judged on it" in check(d, "held-out")


def test_a_new_class_without_held_out_samples_is_not_judged_as_passed() -> None:
    # given a batch with two new classes, only one of which left held-out samples
    old = held(["a"] * 20)
    new = held(["b"] * 10, champion=["a"] * 10, known=["a"] * 10, among_new=["b"] * 10)
    d = decide(GateInput(known_classes=("a",), new_classes=("b", "c"), old=old, new=new), POLICY)
    assert "held-out" in failed(d)
    assert "no held-out samples of c" in check(d, "held-out")


def test_a_batch_with_held_out_samples_of_every_new_class_passes_the_held_out_check() -> None:
    old = held(["a"] * 20)
    new = held(
        ["b"] * 10 + ["c"] * 10, champion=["a"] * 20, known=["a"] * 20, among_new=["b"] * 10 + ["c"] * 10
    )
    d = decide(GateInput(known_classes=("a",), new_classes=("b", "c"), old=old, new=new), POLICY)
    assert check(d, "held-out") == "ok: held-out: 20 held-out samples of this batch to judge it on"
