"""Stage prepare: the cycle's training and held-out data, and its parent model, into one directory.

It is the only stage that reads the registry (the parent version's checkpoint); train and evaluate
work from its output alone.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from ratchet.config import Params
from ratchet.data import catalog
from ratchet.errors import InputError
from ratchet.stages._common import fresh_dir, save_arrays, stage_main
from ratchet.stages.inputs import Cycle
from ratchet.train.strategies.base import trains_on_all_seen

# what the output directory holds
CYCLE = "cycle.json"  # a copy of the cycle it was prepared for
TRAIN, NEW, OLD = "train.npz", "new.npz", "old.npz"  # training samples; held-out new and old data
PARENT = "parent"  # the parent's checkpoint directory, when the cycle has one
PRETRAINED = "pretrained.pt"  # model.pretrained's weights, when a bootstrap starts from them

# (version, download directory) -> the version's checkpoint directory
FetchParent = Callable[[str, Path], Path]


def run(cycle_path: Path, data_dir: Path, out: Path, params: Params, fetch_parent: FetchParent) -> Path:
    cycle = Cycle.load(cycle_path)
    if note := cycle.code_note():
        print(note, file=sys.stderr, flush=True)
    expected = (params.data.image_size, params.data.image_size, params.data.channels)
    with fresh_dir(out) as tmp:
        # a strategy may train on everything seen so far (joint); the others on the new batches
        train_batches = (
            cycle.old_batches + cycle.new_batches if trains_on_all_seen(cycle.strategy) else cycle.new_batches
        )
        parts: list[tuple[str, tuple[str, ...], Literal["train", "held_out"]]] = [
            (TRAIN, train_batches, "train"),
            (NEW, cycle.new_batches, "held_out"),
            (OLD, cycle.old_batches, "held_out"),
        ]
        for name, batches, split in parts:
            # batch by batch, so each sample keeps its batch id: evaluate scores each batch apart
            images = [np.zeros((0, *expected), dtype=np.uint8)]
            labels, ids = [np.zeros((0,), dtype=np.str_)], [np.zeros((0,), dtype=np.str_)]
            for batch_id in batches:
                samples = catalog.load_split(data_dir, [batch_id], split)
                if samples.images.shape[1:] != expected:
                    raise InputError(
                        f"batch {batch_id} holds images of shape {samples.images.shape[1:]}, "
                        f"but params.yaml data section says {expected}"
                    )
                images.append(samples.images)
                labels.append(samples.labels)
                ids.append(np.full(len(samples), batch_id))  # dtype from the id: np.str_ alone is 1 char
            save_arrays(tmp / name, np.concatenate(images), np.concatenate(labels), np.concatenate(ids))
        if cycle.parent_version is not None:
            with tempfile.TemporaryDirectory() as download:
                shutil.copytree(fetch_parent(cycle.parent_version, Path(download)), tmp / PARENT)
        elif params.model.pretrained:
            # copied in, so the weights a bootstrap starts from are part of what DVC hashes
            source = Path(params.model.pretrained)
            if not source.is_file():
                raise InputError(f"model.pretrained: no such file {source}")
            shutil.copyfile(source, tmp / PRETRAINED)
        cycle.save(tmp / CYCLE)
    return out


def main(argv: list[str] | None = None) -> int:
    def fetch_parent(version: str, dst: Path) -> Path:
        from ratchet.registry import open_registry
        from ratchet.workspace import open_workspace

        return open_registry(open_workspace(Path("."))).download_checkpoint(version, dst)

    return stage_main(
        "prepare",
        ["cycle", "data", "out"],
        lambda p, params: run(p[0], p[1], p[2], params, fetch_parent),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
