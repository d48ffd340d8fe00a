"""The promotion gate: a pure function of held-out metrics and the params.yaml gate policy.

Same metrics and policy give the same decision and the same sentences. Every check writes a reason,
passed or failed, so a reviewer sees the whole argument, not only the failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ratchet.config import GateParams


@dataclass(frozen=True)
class GateInput:
    candidate_old: float | None  # accuracy 0..1 on old held-out data; None when there is none
    candidate_new: float
    candidate_all: float
    champion_old: float | None  # None when there is no champion or no old data
    champion_new: float | None  # None when there is no champion
    has_champion: bool


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return "promote" if self.promote else "reject"

    def summary(self) -> str:
        """One paragraph for the registry description and the report: failed checks first."""
        failed = [r.removeprefix("FAIL: ") for r in self.reasons if r.startswith("FAIL: ")]
        passed = [r.removeprefix("ok: ") for r in self.reasons if r.startswith("ok: ")]
        head = "Promoted: every gate check passed." if self.promote else "Rejected."
        return " ".join([head] + [f"{r[0].upper()}{r[1:]}." for r in failed + passed])


def _pt(x: float) -> float:
    return round(100.0 * x, 1)


def decide(m: GateInput, gate: GateParams) -> Decision:
    reasons: list[str] = []
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        reasons.append(("ok: " if passed else "FAIL: ") + text)

    floor_ok = m.candidate_all >= gate.min_accuracy
    check(
        floor_ok,
        f"accuracy on all held-out data {m.candidate_all:.3f} "
        + (
            f">= floor {gate.min_accuracy:.3f}" if floor_ok else f"is below the floor {gate.min_accuracy:.3f}"
        ),
    )

    if not m.has_champion:
        reasons.append("ok: first model: no champion to compare with, so only the floor applies")
        return Decision(promote=ok, reasons=tuple(reasons))

    if m.candidate_old is not None and m.champion_old is not None:
        drop = round(_pt(m.champion_old) - _pt(m.candidate_old), 1)
        allowed = gate.max_old_drop_pt
        change = f"old accuracy {m.champion_old:.3f} -> {m.candidate_old:.3f}"
        if drop > allowed:
            check(False, f"{change}, drop {drop:.1f} pt > allowed {allowed:.1f} pt")
        else:
            check(True, f"{change} ({-drop:+.1f} pt), within the allowed drop of {allowed:.1f} pt")
    else:
        reasons.append("ok: no old held-out data yet, so forgetting cannot be measured")

    assert m.champion_new is not None
    gain = round(_pt(m.candidate_new) - _pt(m.champion_new), 1)
    needed = gate.min_new_gain_pt
    change = f"new accuracy {m.champion_new:.3f} -> {m.candidate_new:.3f}"
    if gain < needed:
        check(False, f"{change}, gain {gain:+.1f} pt < required {needed:+.1f} pt")
    else:
        check(True, f"{change}, gain {gain:+.1f} pt >= required {needed:+.1f} pt")
    return Decision(promote=ok, reasons=tuple(reasons))
