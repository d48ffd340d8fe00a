"""Read-only view of the ingested batches under `<data_dir>/batches/<batch_id>/`.

A batch directory holds `images.npy` (uint8, N x H x W x C), `labels.npy` (int64 indices into
the manifest's `classes`) and `manifest.json`, written once by `ratchet.data.ingest`. Anything
that does not match its manifest is reported as a corrupted workspace, never silently skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ratchet.errors import InputError

SPLITS: tuple[str, ...] = ("train", "held_out")
_MANIFEST_KEYS = ("batch_id", "seq", "classes", "image_shape", "samples", "counts")


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    seq: int
    classes: tuple[str, ...]
    num_train: int
    num_held_out: int
    path: Path
    source_name: str = ""  # the file or folder it was ingested from


# eq=False: dataclass equality over numpy arrays is ambiguous; compare the arrays instead.
@dataclass(frozen=True, eq=False)
class Samples:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # unicode class names, shape (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def batches_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "batches"


def read_manifest(batch_dir: Path) -> dict[str, Any]:
    """Parse and sanity-check `<batch_dir>/manifest.json`."""
    path = Path(batch_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"corrupted workspace: {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"corrupted workspace: {path} is unreadable ({exc})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"corrupted workspace: {path} is not a JSON object")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise InputError(f"corrupted workspace: {path} lacks key(s) {', '.join(missing)}")
    if manifest["batch_id"] != Path(batch_dir).name:
        raise InputError(
            f"corrupted workspace: {path} names batch {manifest['batch_id']!r} "
            f"but lives in {Path(batch_dir).name!r}"
        )
    return manifest


def list_batches(data_dir: Path) -> list[BatchInfo]:
    """Every ingested batch, oldest (lowest seq) first; `.incoming-*` leftovers are not batches."""
    root = batches_dir(data_dir)
    if not root.is_dir():
        return []
    infos = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        manifest = read_manifest(entry)
        counts = manifest["counts"]
        infos.append(
            BatchInfo(
                batch_id=manifest["batch_id"],
                seq=int(manifest["seq"]),
                classes=tuple(manifest["classes"]),
                num_train=int(counts.get("train", 0)),
                num_held_out=int(counts.get("held_out", 0)),
                path=entry,
                source_name=str(manifest.get("source_name", "")),
            )
        )
    infos.sort(key=lambda b: (b.seq, b.batch_id))
    return infos


def known_hashes(data_dir: Path, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of canonical pixels -> id of the (earliest) batch that holds it, `exclude` left out."""
    hashes: dict[str, str] = {}
    for info in list_batches(data_dir):
        if info.batch_id in exclude:
            continue
        for sample in read_manifest(info.path)["samples"]:
            hashes.setdefault(sample["sha256"], info.batch_id)
    return hashes


def _load_array(path: Path, batch_id: str) -> np.ndarray:
    try:
        array: np.ndarray = np.load(path, allow_pickle=False)
        return array
    except FileNotFoundError:
        raise InputError(f"corrupted workspace: batch {batch_id} lacks {path.name}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"corrupted workspace: batch {batch_id} {path.name} is unreadable ({exc})") from None


def _load_batch(batch_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    manifest = read_manifest(batch_dir)
    batch_id = manifest["batch_id"]
    images = _load_array(batch_dir / "images.npy", batch_id)
    labels = _load_array(batch_dir / "labels.npy", batch_id)
    samples = manifest["samples"]
    classes = np.asarray(manifest["classes"], dtype=np.str_)
    shape = tuple(manifest["image_shape"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
        raise InputError(
            f"corrupted workspace: batch {batch_id} images.npy is {images.dtype} {images.shape}, "
            f"manifest says uint8 (N, {', '.join(map(str, shape))})"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(f"corrupted workspace: batch {batch_id} labels.npy is {labels.dtype} {labels.shape}")
    if not len(images) == len(labels) == len(samples):
        raise InputError(
            f"corrupted workspace: batch {batch_id} has {len(images)} images and {len(labels)} labels "
            f"but its manifest lists {len(samples)} samples"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise InputError(
            f"corrupted workspace: batch {batch_id} labels.npy indexes past its {len(classes)} classes"
        )
    mask = np.fromiter((s["split"] == split for s in samples), dtype=bool, count=len(samples))
    return images[mask], classes[labels[mask]]


def load_split(data_dir: Path, batch_ids: Sequence[str], split: Literal["train", "held_out"]) -> Samples:
    """The `split` samples of `batch_ids`, concatenated in the given order, labels as class names.

    An empty `batch_ids` gives empty arrays of shape (0, 0, 0, 0) and (0,): there is no batch to
    take an image shape from. All batches must share one image shape (one workspace, one size).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not batch_ids:
        return Samples(images=np.zeros((0, 0, 0, 0), dtype=np.uint8), labels=np.zeros((0,), dtype=np.str_))
    root = batches_dir(data_dir)
    parts_images, parts_labels = [], []
    first_shape: tuple[str, tuple[int, ...]] | None = None
    for batch_id in batch_ids:
        batch_dir = root / batch_id
        # The id names a path: refuse anything that is not a plain, visible batch directory name.
        if (
            not batch_id
            or batch_id.startswith(".")
            or "/" in batch_id
            or "\\" in batch_id
            or not batch_dir.is_dir()
        ):
            known = ", ".join(b.batch_id for b in list_batches(data_dir)) or "none"
            raise InputError(f"unknown batch id {batch_id!r} in {root} (known: {known})")
        images, labels = _load_batch(batch_dir, split)
        if first_shape is None:
            first_shape = (batch_id, images.shape[1:])
        elif images.shape[1:] != first_shape[1]:
            raise InputError(
                f"batch {batch_id} has image shape {images.shape[1:]} "
                f"but batch {first_shape[0]} has {first_shape[1]}"
            )
        parts_images.append(images)
        parts_labels.append(labels)
    return Samples(images=np.concatenate(parts_images), labels=np.concatenate(parts_labels).astype(np.str_))
