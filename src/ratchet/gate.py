"""The promotion gate: a pure function of both models' per-sample predictions and the gate policy.

A candidate can look worse on old data, or a batch can look bad, for four different reasons, and
the gate measures each apart instead of reading one accuracy drop as forgetting:

- forgetting: the candidate lost what the champion knew. Measured on old held-out data with the
  candidate's predictions restricted to the champion's classes, overall and per class;
- interference: old samples now taken for a class new this cycle. That is the price of learning
  new classes, gated with its own, looser threshold;
- noise: champion and candidate are paired on the same samples, and a drop counts only when
  McNemar's exact test on the discordant pairs says it is real (a hard limit rejects regardless);
- bad labels: a batch whose new classes the candidate cannot tell apart, or whose labels neither
  the champion nor the candidate trained on it agree with.

Same input and policy give the same decision and the same sentences. Every check writes a reason,
passed or failed, with its numbers, so a reviewer sees the whole argument, not only the failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ratchet.config import GateParams

Numbers = dict[str, float | int | None]


@dataclass(frozen=True, eq=False)
class HeldOut:
    """One held-out set, sample by sample: the truth and each model's predicted class name."""

    labels: np.ndarray  # true class names (N,)
    champion: np.ndarray  # the champion's predictions over its classes ("" without a champion)
    candidate: np.ndarray  # the candidate's predictions over all its classes
    candidate_known: np.ndarray  # the candidate's predictions among the champion's classes only
    candidate_among_new: np.ndarray  # among the classes new this cycle only ("" when there are none)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: np.ndarray) -> HeldOut:
        return HeldOut(
            self.labels[mask],
            self.champion[mask],
            self.candidate[mask],
            self.candidate_known[mask],
            self.candidate_among_new[mask],
        )

    @staticmethod
    def concat(parts: Sequence[HeldOut]) -> HeldOut:
        return HeldOut(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("labels", "champion", "candidate", "candidate_known", "candidate_among_new")
            )
        )


@dataclass(frozen=True, eq=False)
class GateInput:
    known_classes: tuple[str, ...]  # the champion's classes; () for the first model
    new_classes: tuple[str, ...]  # classes the candidate learned this cycle
    old: HeldOut  # held-out data of every batch the champion learned (empty in the first cycle)
    new: HeldOut  # held-out data of this cycle's batches

    @property
    def has_champion(self) -> bool:
        return bool(self.known_classes)

    @property
    def every(self) -> HeldOut:
        """Old and new held-out data together: what the floors judge."""
        return HeldOut.concat([self.old, self.new])


@dataclass(frozen=True)
class Check:
    name: str  # floor | class floor | forgetting | class forgetting | interference | new classes | ...
    passed: bool
    text: str  # one sentence with the numbers
    numbers: Numbers = field(default_factory=dict)  # the same numbers, for metrics.json and MLflow

    @property
    def reason(self) -> str:
        return f"{'ok' if self.passed else 'FAIL'}: {self.name}: {self.text}"


@dataclass(frozen=True)
class Decision:
    promote: bool
    checks: tuple[Check, ...]
    accuracy: str = ""  # "old 0.995 -> 0.990, new 0.412 -> 0.970": champion -> candidate, for the summary

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(c.reason for c in self.checks)

    def summary(self) -> str:
        """One paragraph for the registry description and the report, led by the verdict and what
        decided it, as a list of versions cuts it short: the first failed check of a rejection, the
        accuracies of a promotion. The other checks follow, failed first."""
        failed = [c for c in self.checks if not c.passed]
        passed = [c for c in self.checks if c.passed]
        if failed:
            head, rest = f"Rejected: {failed[0].name}: {failed[0].text}.", failed[1:] + passed
        else:
            head, rest = f"Promoted: {self.accuracy}; every gate check passed.", passed
        return " ".join([head] + [f"{c.name[0].upper()}{c.name[1:]}: {c.text}." for c in rest])

    def numbers(self) -> dict[str, Numbers]:
        return {c.name: c.numbers for c in self.checks}


# ---- statistics ---------------------------------------------------------------------------------


def p_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): exact."""
    from scipy.special import bdtrc  # lazy: scipy is heavy and only the gate needs it

    return 1.0 if k <= 0 else float(bdtrc(k - 1, n, p)) if k <= n else 0.0


def p_at_most(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p): exact."""
    from scipy.special import bdtr

    return 1.0 if k >= n else float(bdtr(k, n, p)) if k >= 0 else 0.0


def mcnemar_worse(champion_hit: np.ndarray, candidate_hit: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test, one-sided: is the candidate really worse on these paired samples?

    Returns (b, c, p): b samples only the champion gets right, c only the candidate, and the
    probability of b or more of the b + c discordant pairs going the champion's way by chance.
    """
    b = int(np.sum(champion_hit & ~candidate_hit))
    c = int(np.sum(~champion_hit & candidate_hit))
    return b, c, p_at_least(b, b + c, 0.5)


def _pt(x: float) -> float:
    return round(100.0 * x, 1)


def _signed(points: float) -> str:
    return f"{points + 0.0:+.1f}"  # + 0.0: a zero change prints as +0.0, never -0.0


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _classes(names: Sequence[str], limit: int = 5) -> str:
    if len(names) <= limit + 1:  # "and 1 more" would be longer than the name
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


# ---- checks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedDrop:
    """Champion vs candidate on the same samples: accuracies and the discordant pairs between them."""

    n: int
    before: float  # champion accuracy
    after: float  # candidate accuracy
    b: int  # samples only the champion gets right
    c: int  # samples only the candidate gets right
    p: float  # one-sided McNemar: the candidate is worse

    @staticmethod
    def of(champion_hit: np.ndarray, candidate_hit: np.ndarray) -> PairedDrop:
        b, c, p = mcnemar_worse(champion_hit, candidate_hit)
        return PairedDrop(len(champion_hit), float(champion_hit.mean()), float(candidate_hit.mean()), b, c, p)

    @property
    def drop_pt(self) -> float:
        # the rounded points the reason prints are the ones compared: 91.2 - 90.2 must be 1.0
        return round(_pt(self.before) - _pt(self.after), 1)

    def describe(self) -> str:
        return (
            f"{self.before:.3f} -> {self.after:.3f} ({_signed(-self.drop_pt)} pt on {self.n}; "
            f"{self.b} vs {self.c} discordant, {_p(self.p)})"
        )

    def verdict(self, allowed_pt: float, alpha: float, hard_pt: float | None) -> tuple[bool, str]:
        """A drop fails only when larger than allowed AND significant, or beyond the hard limit."""
        if hard_pt is not None and self.drop_pt > hard_pt:
            return False, f"beyond the hard limit of {hard_pt:.1f} pt"
        if self.drop_pt <= allowed_pt:
            return True, f"within the allowed {allowed_pt:.1f} pt"
        if self.p >= alpha:
            return True, f"more than {allowed_pt:.1f} pt but not significant at {alpha:.2g}"
        return False, f"more than the allowed {allowed_pt:.1f} pt, significant at {alpha:.2g}"

    def numbers(self) -> Numbers:
        return {
            "n": self.n, "champion": self.before, "candidate": self.after, "drop_pt": self.drop_pt,
            "discordant_champion": self.b, "discordant_candidate": self.c, "p_value": self.p,
        }  # fmt: skip


def _paired_check(name: str, what: str, drop: PairedDrop, allowed_pt: float, gate: GateParams) -> Check:
    ok, why = drop.verdict(allowed_pt, gate.alpha, gate.hard_drop_pt)
    return Check(name, ok, f"{what} {drop.describe()}, {why}", drop.numbers())


def _floor(m: GateInput, gate: GateParams) -> Check:
    every = m.every
    labels = every.labels
    acc = float(np.mean(every.candidate == labels))
    ok = acc >= gate.min_accuracy
    relation = ">=" if ok else "is below"
    return Check(
        "floor",
        ok,
        f"accuracy on all {len(labels)} held-out samples {acc:.3f} {relation} "
        f"the floor {gate.min_accuracy:.3f}",
        {"accuracy": acc, "n": len(labels)},
    )


def _class_floor(m: GateInput, gate: GateParams) -> Check:
    """Every class on all held-out data. A class fails only when significantly below the floor (three
    held-out samples and one miss prove nothing), and not for a known class the champion was below
    the floor on too: that is no fault of the candidate's, and rejecting it would lock the champion."""
    every = m.every
    labels = every.labels
    hits, champion_hits = every.candidate == labels, every.champion == labels
    rows = []
    for name in sorted(set(labels.tolist())):
        mask = labels == name
        k, n = int(hits[mask].sum()), int(mask.sum())
        inherited = name in m.known_classes and float(champion_hits[mask].mean()) < gate.min_class_accuracy
        rows.append((k / n, name, k, n, p_at_most(k, n, gate.min_class_accuracy), inherited))
    rows.sort()
    alpha = gate.alpha / len(rows)  # one test per class, corrected for their number like forgetting's
    low = [r for r in rows if r[0] < gate.min_class_accuracy and r[4] < alpha and not r[5]]
    worst = rows[0]
    numbers: Numbers = {"lowest": worst[0], "failing": len(low)}
    if low:
        listed = "; ".join(
            f"class {name} at {acc:.3f} ({k}/{n}, {_p(p)})" for acc, name, k, n, p, _ in low[:4]
        )
        return Check(
            "class floor",
            False,
            f"below the per-class floor {gate.min_class_accuracy:.3f}: {listed}",
            numbers,
        )
    return Check(
        "class floor",
        True,
        f"no class significantly below {gate.min_class_accuracy:.3f} where the champion was above it; "
        f"lowest: class {worst[1]} at {worst[0]:.3f} ({worst[2]}/{worst[3]})",
        numbers,
    )


def _forgetting(m: GateInput, gate: GateParams) -> list[Check]:
    old = m.old.subset(np.isin(m.old.labels, m.known_classes))
    if not len(old):
        return [Check("forgetting", True, "no old held-out data yet, so forgetting cannot be measured")]
    champion_hit = old.champion == old.labels
    known_hit = old.candidate_known == old.labels
    overall = _paired_check(
        "forgetting",
        "old data, known classes:",
        PairedDrop.of(champion_hit, known_hit),
        gate.max_old_drop_pt,
        gate,
    )
    # per class: no hard limit, a class can hold a handful of samples; significance decides, and
    # with one test per class it is corrected for their number (Bonferroni): ten classes are ten
    # chances for noise to look like a drop
    classes = sorted(set(old.labels.tolist()))
    alpha = gate.alpha / len(classes)
    per_class = []
    for name in classes:
        mask = old.labels == name
        drop = PairedDrop.of(champion_hit[mask], known_hit[mask])
        per_class.append((name, drop, *drop.verdict(gate.max_class_drop_pt, alpha, None)))
    failed = [row for row in per_class if not row[2]]
    name, worst, _, why = max(per_class, key=lambda row: row[1].drop_pt)
    numbers: Numbers = {"worst_drop_pt": worst.drop_pt, "failing": len(failed)}
    if failed:
        listed = "; ".join(f"class {name} {drop.describe()}" for name, drop, _, _ in failed[:3])
        text = (
            f"{listed}: more than the allowed {gate.max_class_drop_pt:.1f} pt, "
            f"significant at {gate.alpha:g} / {len(classes)} classes"
        )
        return [overall, Check("class forgetting", False, text, numbers)]
    text = f"largest drop: class {name} {worst.describe()}, {why}"
    return [overall, Check("class forgetting", True, text, numbers)]


def _interference(m: GateInput, gate: GateParams) -> Check:
    old = m.old.subset(np.isin(m.old.labels, m.known_classes))
    if not m.new_classes or not len(old):
        return Check("interference", True, "no new classes, or no old data: nothing to interfere with")
    taken = np.isin(old.candidate, m.new_classes)
    share = float(taken.mean())
    # what interference cost: samples right among the known classes, lost to a new class
    cost = float(np.mean((old.candidate_known == old.labels) & taken))
    numbers: Numbers = {"share": share, "cost_pt": _pt(cost), "n": len(old)}
    ok = _pt(share) <= gate.max_interference_pt
    relation = "within" if ok else "more than"
    return Check(
        "interference",
        ok,
        f"{_pt(share):.1f}% of {len(old)} old samples taken for the new classes {_classes(m.new_classes)} "
        f"(costing {_pt(cost):.1f} pt of old accuracy), "
        f"{relation} the allowed {gate.max_interference_pt:.1f}%",
        numbers,
    )


def _new_classes(m: GateInput, gate: GateParams) -> Check:
    """New classes must be told apart, well above chance: scrambled labels score near it."""
    mask = np.isin(m.new.labels, m.new_classes)
    present = sorted(set(m.new.labels[mask].tolist()))
    if len(present) < 2:
        what = f"one new class ({present[0]})" if present else "no new classes"
        return Check("new classes", True, f"{what} in the held-out data: nothing to tell apart")
    labels, predicted = m.new.labels[mask], m.new.candidate_among_new[mask]
    acc = float(np.mean(predicted == labels))
    # chance is the best constant guess, which is 1/k only when the classes are balanced
    chance = max(float(np.mean(labels == name)) for name in present)
    lift = (acc - chance) / (1.0 - chance)
    ok = lift >= gate.min_new_class_lift
    k, n = int(np.sum(predicted == labels)), len(labels)
    p = p_at_least(k, n, chance)
    numbers: Numbers = {"accuracy": acc, "chance": chance, "lift": lift, "n": n, "p_value": p}
    relation = ">=" if ok else "<"
    return Check(
        "new classes",
        ok,
        f"{_classes(present)} told apart at {acc:.3f} among themselves on {n} samples, chance {chance:.3f} "
        f"({_p(p)}): lift {lift:.2f} {relation} required {gate.min_new_class_lift:.2f}"
        + ("" if ok else ": the candidate cannot separate them, as with scrambled labels"),
        numbers,
    )


def _new_data(m: GateInput, gate: GateParams) -> Check:
    """On this cycle's held-out samples of classes the champion knows, the candidate must not lose ground."""
    new = m.new.subset(np.isin(m.new.labels, m.known_classes))
    if not len(new):
        return Check("new data", True, "the batch brings no classes the champion knows: nothing to compare")
    drop = PairedDrop.of(new.champion == new.labels, new.candidate == new.labels)
    return _paired_check("new data", "this batch, known classes:", drop, gate.max_new_drop_pt, gate)


def _labels(m: GateInput, gate: GateParams) -> Check:
    """A batch both models disagree with is suspect: its labels, not the model, look wrong.

    The champion's old per-class accuracy says what it should score on this batch's known classes;
    a domain shift lowers the champion's score too, but the candidate trained on the batch then
    learns it, while wrong labels keep both far below what the old data predicts.
    """
    new = m.new.subset(np.isin(m.new.labels, m.old.labels))
    if not m.has_champion or not len(new):
        return Check(
            "labels", True, "no class of this batch has old held-out data to check its labels against"
        )

    def expected(predicted_old: np.ndarray) -> float:
        per_class = {
            name: float(np.mean(predicted_old[m.old.labels == name] == name))
            for name in set(new.labels.tolist())
        }
        return float(np.mean([per_class[name] for name in new.labels.tolist()]))

    champ_expected, cand_expected = expected(m.old.champion), expected(m.old.candidate)
    champ_hits = int(np.sum(new.champion == new.labels))
    champ_acc, cand_acc = champ_hits / len(new), float(np.mean(new.candidate == new.labels))
    champ_gap, cand_gap = _pt(champ_expected) - _pt(champ_acc), _pt(cand_expected) - _pt(cand_acc)
    p = p_at_most(champ_hits, len(new), champ_expected)
    numbers: Numbers = {
        "champion": champ_acc, "champion_expected": champ_expected, "candidate": cand_acc,
        "candidate_expected": cand_expected, "p_value": p, "n": len(new),
    }  # fmt: skip
    text = (
        f"on {len(new)} samples of known classes the champion scores {champ_acc:.3f} where its old data "
        f"predicts {champ_expected:.3f} ({_signed(-champ_gap)} pt, {_p(p)}), "
        f"and the candidate trained on them {cand_acc:.3f} where {cand_expected:.3f} "
        f"({_signed(-cand_gap)} pt)"
    )
    suspect = champ_gap > gate.max_label_gap_pt and cand_gap > gate.max_label_gap_pt and p < gate.alpha
    if suspect:
        return Check(
            "labels",
            False,
            f"suspect batch: {text}: both more than {gate.max_label_gap_pt:.1f} pt below, "
            "so its labels disagree with what both models learned",
            numbers,
        )
    return Check("labels", True, f"{text}: consistent (allowed gap {gate.max_label_gap_pt:.1f} pt)", numbers)


def _held_out(m: GateInput) -> Check:
    """The batch must leave something to judge the candidate on: an empty held-out split (or a new
    class without held-out samples: a class with a single sample is only trained on) would pass the
    comparisons below vacuously."""
    unjudged = sorted(set(m.new_classes) - set(m.new.labels.tolist()))
    numbers: Numbers = {"n": len(m.new), "classes_without": len(unjudged)}
    if len(m.new) and not unjudged:
        return Check("held-out", True, f"{len(m.new)} held-out samples of this batch to judge it on", numbers)
    what = f"no held-out samples of {_classes(unjudged)}" if len(m.new) else "no held-out samples"
    return Check(
        "held-out",
        False,
        f"this batch has {what}: the candidate cannot be judged on it (a class with a single sample is "
        "only trained on); ingest more of it, then `ratchet requeue`, or `ratchet drop` it",
        numbers,
    )


def decide(m: GateInput, gate: GateParams) -> Decision:
    checks = [_held_out(m), _floor(m, gate), _class_floor(m, gate)]
    if not m.has_champion:
        checks.append(Check("first model", True, "no champion to compare with, so only the floors apply"))
        checks.append(_new_classes(m, gate))
    else:
        checks += _forgetting(m, gate)
        checks += [_interference(m, gate), _new_classes(m, gate), _new_data(m, gate), _labels(m, gate)]
    return Decision(promote=all(c.passed for c in checks), checks=tuple(checks), accuracy=_accuracy(m))


def _accuracy(m: GateInput) -> str:
    """Each held-out split's accuracy, champion -> candidate (the candidate alone for the first model)."""

    def acc(predicted: np.ndarray, labels: np.ndarray) -> str:
        return f"{float(np.mean(predicted == labels)):.3f}"

    parts = [
        f"{name} {acc(s.champion, s.labels) + ' -> ' if m.has_champion else ''}{acc(s.candidate, s.labels)}"
        for name, s in (("old", m.old), ("new", m.new))
        if len(s)
    ]
    return ", ".join(parts) or "no held-out data"
