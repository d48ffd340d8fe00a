"""The decision report (markdown): what a reviewer reads next to the version in the MLflow UI."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _acc(block: dict[str, Any] | None, split: str) -> float | None:
    if not block or block.get(split) is None:
        return None
    return float(block[split]["accuracy"])


def decision_report(cycle: dict[str, Any], metrics: dict[str, Any], decision: dict[str, Any]) -> str:
    champ, cand = metrics.get("champion"), metrics["candidate"]
    verdict = "PROMOTE" if decision["promote"] else "REJECT"
    parent = cycle["parent_version"] or "none (bootstrap from scratch)"
    lines = [
        f"# Cycle {cycle['cycle_id']}: {verdict}",
        "",
        decision["summary"],
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
        lines.append(f"| {split} | {n} | {_fmt(_acc(champ, split))} | {_fmt(_acc(cand, split))} |")
    lines += ["", "## Gate checks", ""] + [f"- {r}" for r in decision["reasons"]]
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
