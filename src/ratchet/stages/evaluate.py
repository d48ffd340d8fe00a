"""Stage evaluate: champion and candidate on the same old and new held-out data, then the gate.

Both models are scored held-out set by held-out set (one per batch), through a `PredictionCache`:
the champion was scored on the old sets when it was a candidate, so a cycle computes its scores on
the new sets only, and the candidate's on all of them. The scores do not depend on the cache.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ratchet.atomic import write_text
from ratchet.config import Params
from ratchet.evaluate import BATCH_SIZE, confusion, held_out_of, logits, model_metrics
from ratchet.gate import Decision, GateInput, HeldOut, decide
from ratchet.metrics import CycleMetrics, ModelMetrics
from ratchet.report import decision_report
from ratchet.stages import prepare, train
from ratchet.stages._common import fresh_dir, stage_main, workspace_cache
from ratchet.stages.inputs import Cycle
from ratchet.stages.predictions import PredictionCache, context, model_content
from ratchet.stages.sets import SETS, BatchRef, PreparedSets, SetStore, open_store
from ratchet.train.checkpoint import Checkpoint, load_checkpoint
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
    # what this evaluation computed rather than read from the cache: (model content, set key) per
    # model's scores on a held-out set, and the held-out sets decoded from data/
    scored: tuple[tuple[str, str], ...] = ()
    decoded: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Model:
    checkpoint: Checkpoint
    content: str  # model_content: what its cached scores are named by


def _scores(model: _Model, refs: tuple[BatchRef, ...], store: SetStore, cache: PredictionCache) -> np.ndarray:
    """One model's scores on the held-out sets of `refs`, each set scored (or read) on its own:
    the same computation whether or not a set's scores are in the cache."""
    parts = [np.zeros((0, model.checkpoint.spec.num_classes), dtype=np.float32)]
    for ref in refs:
        key = ref.key("held_out")
        images = store.samples(ref, "held_out").images
        parts.append(cache.scores(model.content, key, functools.partial(logits, model.checkpoint, images)))
    return np.concatenate(parts)


def run(
    prepared: Path, candidate_dir: Path, out: Path, params: Params, data: Path, cache: Path | None = None
) -> Evaluation:
    """`data`: the data directory prepare named the batches in; `cache`: where decoded samples and
    scores are kept between cycles (None: everything computed; the numbers are the same)."""
    cycle = Cycle.load(prepared / prepare.CYCLE)
    pin_threads(params.train.threads)  # predictions as repeatable as the weights
    sets = PreparedSets.load(prepared / SETS)
    store = open_store(data, cache)
    scores = PredictionCache(cache / "scores" if cache is not None else None, context(BATCH_SIZE))
    cand_dir = candidate_dir / train.CHECKPOINT
    candidate = _Model(load_checkpoint(cand_dir), model_content(cand_dir))
    parent = prepared / prepare.PARENT
    champion = _Model(load_checkpoint(parent), model_content(parent)) if parent.is_dir() else None
    known = champion.checkpoint.spec.classes if champion is not None else None
    cand_classes = candidate.checkpoint.spec.classes
    shape = (params.data.image_size, params.data.image_size, params.data.channels)

    def held(refs: tuple[BatchRef, ...]) -> HeldOut:
        cand = _scores(candidate, refs, store, scores)
        champ = _scores(champion, refs, store, scores) if champion is not None else None
        labels = store.concatenated(refs, "held_out", shape).labels
        return held_out_of(cand_classes, known, cand, champ, labels)

    # each model is scored on each held-out set once; metrics and gate both read these predictions
    old, new = held(sets.old), held(sets.new)
    gate_input = GateInput(
        known_classes=known or (),
        new_classes=tuple(c for c in cand_classes if c not in (known or ())),
        old=old,
        new=new,
    )
    decision = decide(gate_input, params.gate)
    batches = np.concatenate(
        [np.zeros((0,), dtype=np.str_)]
        + [np.full(len(store.samples(r, "held_out").labels), r.batch_id) for r in sets.old + sets.new]
    )
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
        confusion=confusion(every.labels, every.candidate, cand_classes),
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
    return Evaluation(
        candidate=cand_metrics,
        champion=champ_metrics,
        decision=decision,
        scored=tuple(scores.computed),
        decoded=tuple(store.decoded),
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "evaluate",
        ["prepared", "candidate", "out", "data"],
        lambda p, params: run(p[0], p[1], p[2], params, p[3], workspace_cache()),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
