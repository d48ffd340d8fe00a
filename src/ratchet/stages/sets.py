"""The sets a cycle trains and evaluates on, named by batch and content, decoded once per content.

The prepare stage writes `sets.json`: for the training data and the new and old held-out data, the
batches in order, each with a hash of its canonical files under data/. Only that small file is part
of the stage's output: the samples themselves are already versioned in data/, so storing them again
in DVC each cycle (with every old held-out set, as one file whose hash changes whenever a batch is
added) would grow the DVC cache by all old data per cycle.

Train and evaluate read the samples batch by batch through a `SetStore`: one `.npz` of uint8 images
and class names per (batch content, split), in a git-ignored cache directory, written the first time
a cycle needs it and read from there afterwards. A file there is named by the hash of the batch files
it was decoded from, which the reader checks before decoding, so it always holds exactly what
decoding data/ gives now; deleting the directory costs time, never a different number.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ratchet.atomic import write_text
from ratchet.data import catalog
from ratchet.errors import InputError

SETS = "sets.json"  # in the prepared directory: which batches, with their content hashes
CACHE_DIR = "sets"  # in the stages' cache: the decoded sets
BATCH_FILES = ("manifest.json", "images.npy", "labels.npy")  # what a batch's samples are decoded from

Split = Literal["train", "held_out"]


@dataclass(frozen=True)
class BatchRef:
    batch_id: str
    content: str  # sha256 over BATCH_FILES, as prepare found them

    def key(self, split: Split) -> str:
        """What the decoded samples of this split are named by: content and split, not the id."""
        return f"{self.content}-{split}"


@dataclass(frozen=True)
class PreparedSets:
    train: tuple[BatchRef, ...]
    new: tuple[BatchRef, ...]  # this cycle's batches: their held-out samples are "new"
    old: tuple[BatchRef, ...]  # the parent's batches: their held-out samples are "old"

    def to_json(self) -> dict[str, list[dict[str, str]]]:
        return {
            name: [{"batch_id": r.batch_id, "content": r.content} for r in refs]
            for name, refs in (("train", self.train), ("new", self.new), ("old", self.old))
        }

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @staticmethod
    def load(path: Path) -> PreparedSets:
        if not path.is_file():
            raise InputError(
                f"{path} is missing: run the prepare stage first (`dvc repro` or `ratchet retrain`)"
            )
        raw = json.loads(path.read_text())

        def refs(name: str) -> tuple[BatchRef, ...]:
            return tuple(BatchRef(str(r["batch_id"]), str(r["content"])) for r in raw[name])

        return PreparedSets(train=refs("train"), new=refs("new"), old=refs("old"))


def batch_content(data_dir: Path, batch_id: str) -> str:
    """sha256 over the files a batch's samples are decoded from (each by name and bytes)."""
    batch_dir = catalog.batches_dir(data_dir) / batch_id
    digest = hashlib.sha256()
    for name in BATCH_FILES:
        path = batch_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"corrupted workspace: batch {batch_id} lacks {name}") from None
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def batch_ref(data_dir: Path, batch_id: str) -> BatchRef:
    # the id names a path: only a plain, visible batch directory name
    plain = batch_id and not batch_id.startswith(".") and "/" not in batch_id and "\\" not in batch_id
    if not plain or not (catalog.batches_dir(data_dir) / batch_id).is_dir():
        known = ", ".join(b.batch_id for b in catalog.list_batches(data_dir)) or "none"
        raise InputError(f"unknown batch id {batch_id!r} in {catalog.batches_dir(data_dir)} (known: {known})")
    return BatchRef(batch_id, batch_content(data_dir, batch_id))


@dataclass(frozen=True, eq=False)
class BatchSamples:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # class names (N,)


class SetStore:
    """Decoded samples by (batch content, split): from `cache` when there, else decoded from data/.

    Each set is read once per store, then held in memory (unless `hold` is False); `cache` None
    keeps nothing between stores. `decoded` lists the keys decoded from data/ (the cache's misses),
    in order."""

    def __init__(self, data_dir: Path, cache: Path | None, hold: bool = True) -> None:
        self.data_dir = data_dir
        self.cache = cache
        self.hold = hold
        self.decoded: list[str] = []
        self._read: dict[str, BatchSamples] = {}

    def samples(self, ref: BatchRef, split: Split) -> BatchSamples:
        key = ref.key(split)
        if key in self._read:
            return self._read[key]
        samples = self._load(ref, split)
        if self.hold:
            self._read[key] = samples
        return samples

    def _load(self, ref: BatchRef, split: Split) -> BatchSamples:
        key = ref.key(split)
        path = self.cache / f"{key}.npz" if self.cache is not None else None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as npz:
                    return BatchSamples(images=npz["images"], labels=npz["labels"])
            except (OSError, ValueError, KeyError, EOFError):
                pass  # unreadable (a disk that filled up): decode again, and replace it
        found = batch_content(self.data_dir, ref.batch_id)
        if found != ref.content:
            raise InputError(
                f"batch {ref.batch_id} in {self.data_dir} holds content {found[:12]}, not the "
                f"{ref.content[:12]} the prepare stage recorded: data/ changed since; run prepare again"
            )
        decoded = catalog.load_split(self.data_dir, [ref.batch_id], split)
        samples = BatchSamples(images=decoded.images, labels=decoded.labels.astype(np.str_))
        self.decoded.append(key)
        if path is not None:
            _save(path, samples)
        return samples

    def concatenated(self, refs: Sequence[BatchRef], split: Split, shape: tuple[int, ...]) -> BatchSamples:
        """The samples of `refs` in order, as one set (empty arrays of `shape` images for none)."""
        parts = [self.samples(ref, split) for ref in refs]
        return BatchSamples(
            images=np.concatenate([np.zeros((0, *shape), dtype=np.uint8), *(p.images for p in parts)]),
            labels=np.concatenate([np.zeros((0,), dtype=np.str_), *(p.labels for p in parts)]),
        )


def open_store(data_dir: Path, cache: Path | None, hold: bool = True) -> SetStore:
    """The SetStore the stages read through: decoded sets under `sets/` of the stages' cache
    (`state.cache`; None: no cache)."""
    return SetStore(data_dir, cache / CACHE_DIR if cache is not None else None, hold)


def _save(path: Path, samples: BatchSamples) -> None:
    """Whole or not at all: a reader never finds half a file under a content's name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, images=samples.images, labels=samples.labels)
    tmp.replace(path)
