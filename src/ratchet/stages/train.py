"""Stage train: fine-tune the parent (or bootstrap) on the prepared data into artifacts/candidate."""

from __future__ import annotations

import dataclasses
import json
import sys

from ratchet.atomic import write_text
from ratchet.config import Params
from ratchet.cycle import CANDIDATE, PREPARED, Cycle, stage_dir
from ratchet.stages._common import fresh_dir, load_arrays, stage_main
from ratchet.train.checkpoint import load_checkpoint, save_checkpoint
from ratchet.train.loop import EpochStats, FitResult, fit
from ratchet.train.model import ModelSpec
from ratchet.workspace import Workspace


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


def run(ws: Workspace) -> FitResult:
    params = ws.params()
    prepared = stage_dir(ws, PREPARED)
    cycle = Cycle.load(prepared / "cycle.json")
    images, labels = load_arrays(prepared / "train.npz")
    parent = prepared / "parent"
    start = load_checkpoint(parent) if parent.is_dir() else None
    initial = initial_spec(params)
    origin = f"version {cycle.parent_version}" if start else "scratch"
    print(f"training {len(labels)} samples from {origin} with {cycle.strategy}", flush=True)
    train = dataclasses.replace(params.train, strategy=cycle.strategy)  # a retrain may override it
    result = fit(start, initial, images, labels, train, print_epoch, params.model.pretrained)
    with fresh_dir(stage_dir(ws, CANDIDATE)) as tmp:
        save_checkpoint(tmp / "checkpoint", result.checkpoint)
        # no timings here: the output must hash the same when `dvc repro` repeats the run
        history = [{"epoch": s.epoch, "loss": s.loss, "accuracy": s.accuracy} for s in result.history]
        write_text(tmp / "history.json", json.dumps(history, indent=1) + "\n")
    print(
        f"trained on {result.device}: {result.images_processed} images in {result.seconds:.1f}s "
        f"({result.images_processed / max(result.seconds, 1e-9):.0f} images/s)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    return stage_main("train", run, argv)


if __name__ == "__main__":
    sys.exit(main())
