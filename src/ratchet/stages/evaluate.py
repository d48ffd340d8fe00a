"""Stage evaluate: champion and candidate on the same old and new held-out data, then the gate."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ratchet.atomic import write_text
from ratchet.config import Params
from ratchet.evaluate import confusion, held_out, model_metrics
from ratchet.gate import Decision, GateInput, decide
from ratchet.metrics import CycleMetrics, ModelMetrics
from ratchet.report import decision_report
from ratchet.stages import prepare, train
from ratchet.stages._common import fresh_dir, load_arrays, load_batch_ids, stage_main
from ratchet.stages.inputs import Cycle
from ratchet.train.checkpoint import load_checkpoint
from ratchet.train.feed import pin_threads

# what the output directory holds (dvc.yaml names each: they are small and stay in git)
METRICS = "metrics.json"  # both models' accuracy per split, class and batch, the gate's numbers
DECISION = "decision.json"  # promote, the reasons and a one-line summary
REPORT = "report.md"  # what a reviewer reads


@dataclass(frozen=True)
class Evaluation:
    candidate: ModelMetrics
    champion: ModelMetrics | None
    decision: Decision


def run(prepared: Path, candidate_dir: Path, out: Path, params: Params) -> Evaluation:
    cycle = Cycle.load(prepared / prepare.CYCLE)
    pin_threads(params.train.threads)  # predictions as repeatable as the weights
    candidate = load_checkpoint(candidate_dir / train.CHECKPOINT)
    parent = prepared / prepare.PARENT
    champion = load_checkpoint(parent) if parent.is_dir() else None
    # each model predicts each held-out set once; metrics and gate both read these predictions
    old = held_out(candidate, champion, *load_arrays(prepared / prepare.OLD))
    new = held_out(candidate, champion, *load_arrays(prepared / prepare.NEW))
    known = champion.spec.classes if champion is not None else ()
    gate_input = GateInput(
        known_classes=known,
        new_classes=tuple(c for c in candidate.spec.classes if c not in known),
        old=old,
        new=new,
    )
    decision = decide(gate_input, params.gate)
    old_ids, new_ids = load_batch_ids(prepared / prepare.OLD), load_batch_ids(prepared / prepare.NEW)
    # a prepared directory from before batch ids were recorded: no accuracy per batch
    batches = np.concatenate([old_ids, new_ids]) if old_ids is not None and new_ids is not None else None
    cand_metrics = model_metrics((old.labels, old.candidate), (new.labels, new.candidate), batches)
    champ_metrics = (
        model_metrics((old.labels, old.champion), (new.labels, new.champion), batches)
        if champion is not None
        else None
    )
    every = gate_input.every
    metrics = CycleMetrics(
        candidate=cand_metrics,
        champion=champ_metrics,
        gate=decision.numbers(),
        confusion=confusion(every.labels, every.candidate, candidate.spec.classes),
    )
    decision_json = {
        "promote": decision.promote,
        "reasons": list(decision.reasons),
        "summary": decision.summary(),
    }
    with fresh_dir(out) as tmp:
        write_text(tmp / METRICS, json.dumps(metrics.to_json(), indent=1, sort_keys=True) + "\n")
        write_text(tmp / DECISION, json.dumps(decision_json, indent=1) + "\n")
        write_text(tmp / REPORT, decision_report(cycle, metrics, decision))
    print(decision.summary(), flush=True)
    return Evaluation(candidate=cand_metrics, champion=champ_metrics, decision=decision)


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "evaluate",
        ["prepared", "candidate", "out"],
        lambda p, params: run(p[0], p[1], p[2], params),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
