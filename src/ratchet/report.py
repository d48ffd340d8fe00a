"""The decision report (markdown): what a reviewer reads next to the version in the MLflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ratchet.gate import Decision


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def accuracy(metrics: dict[str, Any], model: str, split: str) -> float | None:
    """metrics.json -> accuracy of `model` (champion | candidate) on `split`; None where absent."""
    part = (metrics.get(model) or {}).get(split)
    return None if part is None else float(part["accuracy"])


def decision_report(cycle: dict[str, Any], metrics: dict[str, Any], decision: Decision) -> str:
    champ, cand = metrics.get("champion"), metrics["candidate"]
    verdict = "PROMOTE" if decision.promote else "REJECT"
    parent = cycle["parent_version"] or "none (bootstrap from scratch)"
    lines = [
        f"# Cycle {cycle['cycle_id']}: {verdict}",
        "",
        decision.summary(),
        "",
        f"- new batches: {', '.join(cycle['new_batches'])}",
        f"- old batches (what the champion learned): {', '.join(cycle['old_batches']) or 'none'}",
        f"- parent version: {parent}",
        f"- strategy: {cycle['strategy']}",
        "",
        "## Held-out accuracy",
        "",
        "| data | n | champion | candidate |",
        "|---|---:|---:|---:|",
    ]
    for split in ("old", "new", "all"):
        n = cand[split]["n"] if cand.get(split) else 0
        champ_acc, cand_acc = accuracy(metrics, "champion", split), accuracy(metrics, "candidate", split)
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
    champ_pc = (champ or {}).get("all", {}).get("per_class", {}) if champ else {}
    for name, acc in cand["all"]["per_class"].items():
        lines.append(f"| {name} | {_fmt(champ_pc.get(name))} | {_fmt(acc)} |")
    return "\n".join(lines) + "\n"
