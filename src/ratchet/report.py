"""The decision report (markdown): what a reviewer reads next to the version in the MLflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ratchet.metrics import SPLITS, CycleMetrics

if TYPE_CHECKING:
    from ratchet.gate import Decision
    from ratchet.stages.inputs import Cycle


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def fmt_accuracy(x: float | None) -> str:
    """An accuracy in a table: three decimals, or a dash where there is none."""
    return "  -  " if x is None else f"{x:.3f}"


def decision_report(cycle: Cycle, metrics: CycleMetrics, decision: Decision) -> str:
    champ, cand = metrics.champion, metrics.candidate
    headline = metrics.headline()
    verdict = "PROMOTE" if decision.promote else "REJECT"
    parent = cycle.parent_version or "none (bootstrap from scratch)"
    lines = [
        f"# Cycle {cycle.cycle_id}: {verdict}",
        "",
        decision.summary(),
        "",
        f"- new batches: {', '.join(cycle.new_batches)}",
        f"- old batches (what the champion learned): {', '.join(cycle.old_batches) or 'none'}",
        f"- parent version: {parent}",
        f"- strategy: {cycle.strategy}",
        "",
        "## Held-out accuracy",
        "",
        "| data | n | champion | candidate |",
        "|---|---:|---:|---:|",
    ]
    for split in SPLITS:
        n = part.n if (part := cand.split(split)) else 0
        champ_acc, cand_acc = headline.champion.split(split), headline.candidate.split(split)
        lines.append(f"| {split} | {n} | {_fmt(champ_acc)} | {_fmt(cand_acc)} |")
    lines += ["", "## Gate checks", "", "| check | result | numbers |", "|---|---|---|"]
    for c in decision.checks:
        lines.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.text.replace('|', '/')} |")
    lines += [
        "",
        "## Per-class accuracy on all held-out data",
        "",
        "| class | champion | candidate |",
        "|---|---:|---:|",
    ]
    champ_pc = champ.all.per_class if champ else {}
    for name, acc in cand.all.per_class.items():
        lines.append(f"| {name} | {_fmt(champ_pc.get(name))} | {_fmt(acc)} |")
    return "\n".join(lines) + "\n"
