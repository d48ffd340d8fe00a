"""Stage prepare: the cycle's training and held-out data, and its parent model, into artifacts/prepared.

It is the only stage that reads the registry (the parent version's checkpoint); train and evaluate
work from its output alone.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from ratchet.cycle import PREPARED, Cycle, open_registry, stage_dir
from ratchet.data import catalog
from ratchet.errors import InputError
from ratchet.stages._common import fresh_dir, save_arrays, stage_main
from ratchet.train import strategies
from ratchet.workspace import Workspace


def run(ws: Workspace) -> Path:
    params = ws.params()
    cycle = Cycle.load(ws.cycle_path)
    expected = (params.data.image_size, params.data.image_size, params.data.channels)
    out = stage_dir(ws, PREPARED)
    with fresh_dir(out) as tmp:
        # a strategy may train on everything seen so far (joint); the others on the new batches
        train_batches = (
            cycle.old_batches + cycle.new_batches
            if strategies.trains_on_all_seen(cycle.strategy)
            else cycle.new_batches
        )
        parts: list[tuple[str, tuple[str, ...], Literal["train", "held_out"]]] = [
            ("train", train_batches, "train"),
            ("new", cycle.new_batches, "held_out"),
            ("old", cycle.old_batches, "held_out"),
        ]
        for name, batches, split in parts:
            if batches:
                samples = catalog.load_split(ws.data_dir, list(batches), split)
                images, labels = samples.images, samples.labels
                if images.shape[1:] != expected:
                    raise InputError(
                        f"batches {', '.join(batches)} hold images of shape {images.shape[1:]}, "
                        f"but params.yaml data section says {expected}"
                    )
            else:
                images = np.zeros((0, *expected), dtype=np.uint8)
                labels = np.zeros((0,), dtype=str)
            save_arrays(tmp / f"{name}.npz", images, labels)
        if cycle.parent_version is not None:
            with tempfile.TemporaryDirectory() as download:
                ckpt = open_registry(ws, params).download_checkpoint(cycle.parent_version, Path(download))
                shutil.copytree(ckpt, tmp / "parent")
        cycle.save(tmp / "cycle.json")
    return out


def main(argv: list[str] | None = None) -> int:
    return stage_main("prepare", run, argv)


if __name__ == "__main__":
    sys.exit(main())
