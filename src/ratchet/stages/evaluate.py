"""Stage evaluate: champion and candidate on the same old and new held-out data, then the gate."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from ratchet.atomic import write_text
from ratchet.cycle import CANDIDATE, EVAL, PREPARED, Cycle, stage_dir
from ratchet.evaluate import ModelMetrics, evaluate_model
from ratchet.gate import Decision, GateInput, decide
from ratchet.report import decision_report
from ratchet.stages._common import fresh_dir, load_arrays, stage_main
from ratchet.train.checkpoint import load_checkpoint
from ratchet.workspace import Workspace


@dataclass(frozen=True)
class Evaluation:
    candidate: ModelMetrics
    champion: ModelMetrics | None
    decision: Decision


def gate_input(candidate: ModelMetrics, champion: ModelMetrics | None) -> GateInput:
    def acc(m: ModelMetrics | None, split: str) -> float | None:
        part = getattr(m, split) if m is not None else None
        return None if part is None else float(part.accuracy)

    return GateInput(
        candidate_old=acc(candidate, "old"),
        candidate_new=candidate.new.accuracy,
        candidate_all=candidate.all.accuracy,
        champion_old=acc(champion, "old"),
        champion_new=acc(champion, "new"),
        has_champion=champion is not None,
    )


def run(ws: Workspace) -> Evaluation:
    params = ws.params()
    prepared = stage_dir(ws, PREPARED)
    cycle = Cycle.load(prepared / "cycle.json")
    old = load_arrays(prepared / "old.npz")
    new = load_arrays(prepared / "new.npz")
    candidate = evaluate_model(load_checkpoint(stage_dir(ws, CANDIDATE) / "checkpoint"), old, new)
    parent = prepared / "parent"
    champion = evaluate_model(load_checkpoint(parent), old, new) if parent.is_dir() else None
    decision = decide(gate_input(candidate, champion), params.gate)

    metrics: dict[str, Any] = {
        "candidate": candidate.to_json(),
        "champion": champion.to_json() if champion else None,
    }
    decision_json = {
        "promote": decision.promote,
        "reasons": list(decision.reasons),
        "summary": decision.summary(),
    }
    with fresh_dir(stage_dir(ws, EVAL)) as tmp:
        write_text(tmp / "metrics.json", json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        write_text(tmp / "decision.json", json.dumps(decision_json, indent=1) + "\n")
        write_text(tmp / "report.md", decision_report(cycle.to_json(), metrics, decision_json))
    print(decision.summary(), flush=True)
    return Evaluation(candidate=candidate, champion=champion, decision=decision)


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
