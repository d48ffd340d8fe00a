"""Stage train: fine-tune the parent (or bootstrap) on the prepared data into a candidate directory."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ratchet.atomic import write_text
from ratchet.config import Params
from ratchet.stages import prepare
from ratchet.stages._common import fresh_dir, stage_main, workspace_cache
from ratchet.stages.inputs import Cycle
from ratchet.stages.sets import SETS, PreparedSets, SetStore
from ratchet.train.checkpoint import load_checkpoint, save_checkpoint
from ratchet.train.loop import EpochStats, FitResult, fit
from ratchet.train.model import ModelSpec

# what the output directory holds
CHECKPOINT = "checkpoint"  # the candidate: weights, spec, memory, strategy state
HISTORY = "history.json"  # per epoch: loss and training accuracy (no timings: it must hash the same)


def print_epoch(stats: EpochStats) -> None:
    print(
        f"  epoch {stats.epoch:3d}  loss {stats.loss:.4f}  "
        f"train acc {stats.accuracy:.3f}  ({stats.seconds:.2f}s)",
        flush=True,
    )


def initial_spec(params: Params) -> ModelSpec:
    """The architecture a bootstrap builds from params.yaml; its classes come from the first batch."""
    return ModelSpec(
        arch=params.model.arch,
        in_channels=params.data.channels,
        image_size=params.data.image_size,
        width=params.model.width,
        dropout=params.model.dropout,
        norm=params.model.norm,
        classes=(),
    )


def run(prepared: Path, out: Path, params: Params, data: Path, cache: Path | None = None) -> FitResult:
    """`data`: the data directory prepare named the batches in; `cache`: where decoded samples are
    kept between cycles (None: decoded from data/ each time; the samples are the same)."""
    cycle = Cycle.load(prepared / prepare.CYCLE)
    shape = (params.data.image_size, params.data.image_size, params.data.channels)
    store = SetStore(data, cache / "sets" if cache is not None else None)
    samples = store.concatenated(PreparedSets.load(prepared / SETS).train, "train", shape)
    images, labels = samples.images, samples.labels
    parent = prepared / prepare.PARENT
    start = load_checkpoint(parent) if parent.is_dir() else None
    pretrained = prepared / prepare.PRETRAINED
    origin = f"version {cycle.parent_version}" if start else "scratch"
    print(f"training {len(labels)} samples from {origin} with {cycle.strategy}", flush=True)
    train = dataclasses.replace(params.train, strategy=cycle.strategy)  # a retrain may override it
    result = fit(
        start,
        initial_spec(params),
        images,
        labels,
        train,
        print_epoch,
        str(pretrained) if pretrained.is_file() else None,
    )
    with fresh_dir(out) as tmp:
        save_checkpoint(tmp / CHECKPOINT, result.checkpoint)
        history = [{"epoch": s.epoch, "loss": s.loss, "accuracy": s.accuracy} for s in result.history]
        write_text(tmp / HISTORY, json.dumps(history, indent=1) + "\n")
    print(
        f"trained on {result.device}: {result.images_processed} images in {result.seconds:.1f}s "
        f"({result.images_processed / max(result.seconds, 1e-9):.0f} images/s)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "train",
        ["prepared", "out", "data"],
        lambda p, params: run(p[0], p[1], params, p[2], workspace_cache()),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
