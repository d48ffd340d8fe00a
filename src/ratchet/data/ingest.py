"""Ingest one batch of labelled images into the workspace, or refuse it whole.

A source is either an ImageFolder directory (one sub-folder per class) or an `.npz` file
(`images`, `labels`, optional `classes`). Every sample is canonicalised to uint8
(image_size, image_size, channels) and identified by the sha256 of those pixels, so the same
picture saved as PNG and as BMP is one sample. Files that cannot be used are quarantined with a
reason; samples seen before are skipped as duplicates. What is left becomes
`<data_dir>/batches/<batch_id>/`, published with one rename so a reader never sees half a batch.

The written bytes depend only on the input and the workspace's earlier batches (no timestamps, no
absolute paths): DVC hashes them, so re-ingesting the same input must reproduce them exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ratchet import faults
from ratchet.config import DataParams
from ratchet.data.catalog import batches_dir, known_hashes, list_batches
from ratchet.errors import BatchRefused

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# Pillow could not identify a file: with one of these suffixes it is a broken image, otherwise the
# file was never meant to be one of the allowed formats.
_IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp"}
    | {".ppm", ".pgm", ".pbm", ".pnm"}
)
_NPZ_KEYS = ("images", "labels", "classes")
_PROGRESS_CALLS = 20
_SUMMARY_QUARANTINED = 10
_MAX_DETAIL_CHARS = 200
# Sources shrunk by more than this per side to data.image_size lose detail the model could use.
_SHRINK_WARNING = 2.0

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Quarantined:
    source: str  # path relative to the source root, or `images[<i>]`
    reason: str  # `<snake_case_code>` or `<snake_case_code>: <detail>`


@dataclass(frozen=True)
class Duplicate:
    source: str
    sha256: str
    duplicate_of: str  # id of the earlier batch holding the same pixels, or "this batch"


@dataclass(frozen=True)
class IngestReport:
    batch_id: str | None  # None when every usable sample was already ingested
    batch_dir: Path | None
    classes: tuple[str, ...]
    num_train: int
    num_held_out: int
    quarantined: tuple[Quarantined, ...]
    duplicates: tuple[Duplicate, ...]
    class_counts: tuple[tuple[str, int, int], ...] = ()  # (class, train, held out), sorted by class
    warnings: tuple[str, ...] = ()  # one line each, about the batch as a whole

    def summary(self) -> str:
        """A few human-readable lines for the command line."""
        lines = [f"warning: {w}" for w in self.warnings]
        if self.batch_id is None:
            lines += [f"nothing new: all {len(self.duplicates)} usable samples were already ingested"]
        else:
            lines += [
                f"batch {self.batch_id}: {self.num_train} train, {self.num_held_out} held out, "
                f"{len(self.classes)} classes"
            ]
            lines += [f"  {name}: {train} train / {held} held out" for name, train, held in self.class_counts]
        if self.quarantined:
            lines.append(f"quarantined: {len(self.quarantined)}")
            lines += [f"  {q.source}: {q.reason}" for q in self.quarantined[:_SUMMARY_QUARANTINED]]
            if len(self.quarantined) > _SUMMARY_QUARANTINED:
                lines.append(f"  ... and {len(self.quarantined) - _SUMMARY_QUARANTINED} more")
        lines.append(f"duplicates skipped: {len(self.duplicates)}")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class _Sample:
    source: str
    label: str
    pixels: np.ndarray  # canonical uint8 (image_size, image_size, channels)
    sha256: str
    source_size: tuple[int, int]  # (width, height) before canonicalisation


class _Progress:
    """Reports at most ~_PROGRESS_CALLS times while decoding, then once at the end."""

    def __init__(self, callback: ProgressFn | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.step = max(1, math.ceil(total / _PROGRESS_CALLS))

    def tick(self, done: int) -> None:
        if self.callback is not None and done < self.total and done % self.step == 0:
            self.callback(done, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.total, self.total)


def _one_line(exc: BaseException, path: Path | None = None, rel: str | None = None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if path is not None and rel is not None:
        # Pillow messages may embed the absolute path; the manifest must not (it would differ per machine).
        text = text.replace(str(path), rel)
    return text[:_MAX_DETAIL_CHARS]


def _to_8bit(img: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit and 32-bit values at 255, turning a 16-bit scan white.
    if img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64) / 257.0
        return Image.fromarray(np.rint(arr).astype(np.uint8))
    if img.mode in ("I", "F"):
        return Image.fromarray(np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8))
    return img


def _canonical(img: Image.Image, params: DataParams) -> np.ndarray:
    img = _to_8bit(img).convert("L" if params.channels == 1 else "RGB")
    size = (params.image_size, params.image_size)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _make_sample(source: str, label: str, pixels: np.ndarray, source_size: tuple[int, int]) -> _Sample:
    return _Sample(
        source=source,
        label=label,
        pixels=pixels,
        sha256=hashlib.sha256(pixels.tobytes()).hexdigest(),
        source_size=source_size,
    )


def _shrink_warning(samples: list[_Sample], params: DataParams) -> str | None:
    """One line when the batch's images lose much detail to data.image_size, else None."""
    size = params.image_size
    shrunk = [s.source_size for s in samples if max(s.source_size) > _SHRINK_WARNING * size]
    if not shrunk:
        return None
    width, height = max(shrunk, key=lambda wh: (wh[0] * wh[1], wh))
    if len(set(shrunk)) == 1 and len(shrunk) == len(samples):
        which = f"batch images are {width}x{height}"
    elif len(set(shrunk)) == 1:
        which = f"{len(shrunk)} of {len(samples)} batch images are {width}x{height}"
    else:
        which = f"{len(shrunk)} of {len(samples)} batch images are up to {width}x{height}"
    return (
        f"{which}, resized to {size}x{size} (data.image_size): set data.image_size "
        "(or `ratchet init --image-size`) to train on more detail"
    )


def _allowed_formats() -> list[str]:
    Image.init()
    # Restricting Image.open to these plugins keeps exotic decoders away from untrusted files.
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


def _decode_file(
    path: Path, rel: str, params: DataParams, formats: list[str]
) -> tuple[np.ndarray, tuple[int, int]] | str:
    """Canonical pixels of one image file and its (width, height), or the reason it is quarantined."""
    try:
        st = path.lstat()
    except OSError as exc:
        return f"unreadable: {_one_line(exc, path, rel)}"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "nested_directory"
    if not stat.S_ISREG(st.st_mode):
        return "not_a_regular_file"
    if st.st_size > params.max_file_bytes:
        return f"too_large: {st.st_size} bytes > {params.max_file_bytes}"
    if st.st_size == 0:
        return "empty_file"
    try:
        with warnings.catch_warnings():
            # Our own max_image_pixels check below replaces Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=formats) as img:
                if img.format not in ALLOWED_FORMATS:
                    return f"format_not_allowed: {img.format}"
                width, height = img.size
                if width * height > params.max_image_pixels:
                    return f"too_many_pixels: {width}x{height} = {width * height} > {params.max_image_pixels}"
                img.load()  # Image.open only read the header; truncated data fails here
                return _canonical(img, params), (width, height)
    except Image.DecompressionBombError as exc:
        return f"too_many_pixels: {_one_line(exc)}"
    except UnidentifiedImageError:
        suffix = path.suffix.lower()
        if suffix in _IMAGE_SUFFIXES:
            return f"undecodable: not a readable {'/'.join(ALLOWED_FORMATS)} image"
        return f"format_not_allowed: {suffix or 'no extension'}"
    except PermissionError as exc:
        return f"unreadable: {_one_line(exc, path, rel)}"
    except Exception as exc:
        # Decoders fed untrusted bytes fail with all kinds of exceptions; any of them means this
        # one file is unusable, not that the batch is.
        return f"undecodable: {type(exc).__name__}: {_one_line(exc, path, rel)}"


def _folder_candidates(source: Path, ready_marker: str | None) -> list[tuple[str, str | None, Path]]:
    """(name relative to source, class or None for root-level entries, path), sorted by name."""
    try:
        entries = [e for e in source.iterdir() if not e.name.startswith(".") and e.name != ready_marker]
    except OSError as exc:
        raise BatchRefused(f"{source}: cannot list directory ({_one_line(exc)})") from None
    class_dirs = [e for e in entries if not e.is_symlink() and e.is_dir()]
    if not class_dirs:
        raise BatchRefused(f"{source}: no class sub-folders (expected one folder of images per class)")
    candidates: list[tuple[str, str | None, Path]] = []
    for entry in entries:
        if entry in class_dirs:
            try:
                files = [f for f in entry.iterdir() if not f.name.startswith(".")]
            except OSError as exc:
                raise BatchRefused(f"{entry}: cannot list class folder ({_one_line(exc)})") from None
            candidates += [(f"{entry.name}/{f.name}", entry.name, f) for f in files]
        else:
            candidates.append((entry.name, None, entry))
    candidates.sort(key=lambda c: c[0])
    return candidates


def _read_folder(
    source: Path, params: DataParams, progress: ProgressFn | None, ready_marker: str | None
) -> tuple[list[_Sample], list[Quarantined], list[tuple[str, Path]], int]:
    """Samples, quarantined entries, quarantined regular files to copy (rel, path), number of entries."""
    candidates = _folder_candidates(source, ready_marker)
    formats = _allowed_formats()
    samples: list[_Sample] = []
    quarantined: list[Quarantined] = []
    copies: list[tuple[str, Path]] = []
    ticker = _Progress(progress, len(candidates))
    for done, (rel, label, path) in enumerate(candidates, start=1):
        result: tuple[np.ndarray, tuple[int, int]] | str
        if label is None:  # an entry beside the class folders
            if path.is_symlink():
                result = "symlink"
            else:
                result = "not_in_class_folder" if path.is_file() else "not_a_regular_file"
        else:
            result = _decode_file(path, rel, params, formats)
        if isinstance(result, str):
            quarantined.append(Quarantined(source=rel, reason=result))
            if not path.is_symlink() and path.is_file():
                copies.append((rel, path))
        else:
            assert label is not None
            samples.append(_make_sample(rel, label, *result))
        ticker.tick(done)
    ticker.finish()
    return samples, quarantined, copies, len(candidates)


def _npz_array(npz: np.lib.npyio.NpzFile, key: str, source: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "bject arrays" in str(exc):
            raise BatchRefused(
                f"{source}: key {key!r} holds a pickled object array, which is refused"
            ) from None
        raise BatchRefused(f"{source}: key {key!r} is unreadable ({_one_line(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchRefused(f"{source}: key {key!r} is unreadable ({_one_line(exc)})") from None


def _string_array(arr: np.ndarray, key: str, source: Path) -> np.ndarray:
    if arr.dtype.kind == "S":
        try:
            return arr.astype(np.str_)
        except UnicodeDecodeError:
            raise BatchRefused(f"{source}: {key} holds bytes that are not ASCII text") from None
    return arr


def _npz_labels(labels: np.ndarray, classes: np.ndarray | None, n: int, source: Path) -> list[str]:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise BatchRefused(
            f"{source}: labels must be 1-D with one entry per image ({n}), got shape {labels.shape}"
        )
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise BatchRefused(
                f"{source}: classes must be a 1-D string array, got {classes.dtype} {classes.shape}"
            )
        class_list = [str(c) for c in _string_array(classes, "classes", source)]
        if any(not c for c in class_list):
            raise BatchRefused(f"{source}: classes contains an empty class name")
        if len(set(class_list)) != len(class_list):
            raise BatchRefused(f"{source}: classes contains a class name twice")
    if labels.dtype.kind in "iu":
        if classes is None:
            return [str(int(v)) for v in labels]
        bad = np.flatnonzero((labels < 0) | (labels >= len(class_list)))
        if bad.size:
            i = int(bad[0])
            raise BatchRefused(
                f"{source}: labels[{i}] = {int(labels[i])} is out of range for {len(class_list)} classes"
            )
        return [class_list[int(v)] for v in labels]
    if labels.dtype.kind in "US":
        names = [str(v) for v in _string_array(labels, "labels", source)]
        for i, name in enumerate(names):
            if not name:
                raise BatchRefused(f"{source}: labels[{i}] is an empty class name")
            if classes is not None and name not in class_list:
                raise BatchRefused(f"{source}: labels[{i}] = {name!r} is not one of classes")
        return names
    raise BatchRefused(f"{source}: labels must be integers or strings, got {labels.dtype}")


def _unpacked_bytes(source: Path) -> int:
    """What the .npz's arrays take once read, from the zip directory and each .npy header alone.

    Both count: a member's declared size bounds what is decompressed, and its header's shape is what
    numpy allocates before reading (a small member can declare a huge array).
    """
    total = 0
    with zipfile.ZipFile(source) as archive:
        # only images, labels and classes are read: any other member, and any count past three, is
        # refused from the directory alone (a million-member archive would cost a header read each)
        members = [i.filename.removesuffix(".npy") for i in archive.infolist()]
        unknown = sorted(set(members) - set(_NPZ_KEYS))
        if unknown or len(members) > len(set(members)):
            shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
            raise BatchRefused(
                f"{source}: unknown key(s) {shown or '(a name repeated)'} in {len(members)} arrays "
                f"(known: {', '.join(_NPZ_KEYS)})"
            )
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(member)
            total += max(info.file_size, math.prod(shape) * dtype.itemsize)
    return total


def _read_npz(
    source: Path, params: DataParams, progress: ProgressFn | None
) -> tuple[list[_Sample], list[Quarantined], list[tuple[str, Path]], int]:
    if not zipfile.is_zipfile(source):
        raise BatchRefused(f"{source}: not a valid .npz file (not a zip archive)")
    try:
        unpacked = _unpacked_bytes(source)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchRefused(f"{source}: not a valid .npz file ({_one_line(exc)})") from None
    if unpacked > params.max_unpacked_bytes:
        raise BatchRefused(
            f"{source}: its arrays unpack to {unpacked} bytes, more than data.max_unpacked_bytes "
            f"({params.max_unpacked_bytes}): refused unread"
        )
    try:
        npz = np.load(source, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchRefused(f"{source}: not a valid .npz file ({_one_line(exc)})") from None
    with npz:
        for key in ("images", "labels"):
            if key not in npz.files:
                raise BatchRefused(f"{source}: missing key {key!r}")
        images = _npz_array(npz, "images", source)
        labels = _npz_array(npz, "labels", source)
        classes = _npz_array(npz, "classes", source) if "classes" in npz.files else None

    if images.dtype != np.uint8:
        raise BatchRefused(f"{source}: images must be uint8, got {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] in (1, 3, 4))):
        raise BatchRefused(
            f"{source}: images must have shape (N,H,W) or (N,H,W,C) with C in 1,3,4, got {images.shape}"
        )
    n, height, width = images.shape[:3]
    if n == 0:
        raise BatchRefused(f"{source}: images holds no samples")
    if height == 0 or width == 0:
        raise BatchRefused(f"{source}: images have zero size {height}x{width}")
    if height * width > params.max_image_pixels:
        raise BatchRefused(
            f"{source}: images are {width}x{height} = {width * height} pixels "
            f"> max_image_pixels {params.max_image_pixels}"
        )
    names = _npz_labels(labels, classes, n, source)

    samples: list[_Sample] = []
    ticker = _Progress(progress, n)
    for i in range(n):
        arr = images[i]
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        pixels = _canonical(Image.fromarray(arr), params)
        samples.append(_make_sample(f"images[{i}]", names[i], pixels, (width, height)))
        ticker.tick(i + 1)
    ticker.finish()
    return samples, [], [], n


def _held_out_count(n: int, fraction: float) -> int:
    if n < 2:
        return 0  # a lone sample is worth more in training than as a one-sample test
    return min(max(round(n * fraction), 1), n - 1)


def _dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)  # left over by an ingest that was killed mid-way
    path.mkdir(parents=True)


def _publish(
    data_dir: Path,
    batch_id: str,
    images: np.ndarray,
    labels: np.ndarray,
    manifest: dict[str, object],
    quarantined: list[Quarantined],
    copies: list[tuple[str, Path]],
) -> Path:
    """Write the batch (and quarantine copies) under temp names, then rename them into place."""
    root = batches_dir(data_dir)
    final = root / batch_id
    tmp = root / f".incoming-{batch_id}"
    q_root = Path(data_dir) / "quarantine"
    q_final = q_root / batch_id
    q_tmp = q_root / f".incoming-{batch_id}"
    q_published = False
    try:
        _fresh_dir(tmp)
        np.save(tmp / "images.npy", images, allow_pickle=False)
        np.save(tmp / "labels.npy", labels, allow_pickle=False)
        (tmp / "manifest.json").write_text(_dump_json(manifest), encoding="utf-8")
        if quarantined:
            _fresh_dir(q_tmp)
            for rel, path in copies:
                dest = q_tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest, follow_symlinks=False)
            reasons = [{"source": q.source, "reason": q.reason} for q in quarantined]
            (q_tmp / "reasons.json").write_text(_dump_json(reasons), encoding="utf-8")
            if q_final.exists():
                shutil.rmtree(q_final)  # belongs to a batch id that is not in batches/ (deleted by hand)
            os.replace(q_tmp, q_final)
            q_published = True
            faults.reached("ingest:quarantine-published")
        # The batch rename is the commit point: until it happens the batch does not exist.
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(q_tmp, ignore_errors=True)
        if q_published:
            shutil.rmtree(q_final, ignore_errors=True)
        raise
    return final


def ingest_batch(
    source: Path,
    data_dir: Path,
    params: DataParams,
    progress: ProgressFn | None = None,
    dropped: Callable[[], set[str]] | None = None,
    before_publish: Callable[[str], None] | None = None,
    ready_marker: str | None = None,
) -> IngestReport:
    """Validate, canonicalise, deduplicate and split `source`; store it as a new batch.

    Raises BatchRefused (writing nothing) when the source is structurally wrong or nothing in it is
    usable. Returns a report with `batch_id=None` (writing nothing) when every usable sample was
    already ingested. Samples of batches that `dropped()` names do not count as ingested, so a
    relabelled copy of a dropped batch comes in; it is asked only when there are duplicates.
    `before_publish(batch_id)` runs before anything is written (the ingest journal's hook).
    `ready_marker` names a file beside a folder's class folders that is not part of the batch: the
    inbox's sign that the folder is complete.
    """
    source = Path(source)
    data_dir = Path(data_dir)
    if source.is_dir():
        samples, quarantined, copies, total = _read_folder(source, params, progress, ready_marker)
    elif source.is_file() and source.suffix.lower() == ".npz":
        samples, quarantined, copies, total = _read_npz(source, params, progress)
    elif not source.exists():
        raise BatchRefused(f"source not found: {source}")
    else:
        raise BatchRefused(
            f"{source}: unknown source kind (expected a class-folder directory or an .npz file)"
        )

    if not samples:
        if not quarantined:
            raise BatchRefused(f"nothing usable in {source}: its class folders hold no files")
        first = quarantined[0]
        raise BatchRefused(
            f"nothing usable in {source}: {total} files, all quarantined "
            f"(first: {first.source}: {first.reason})"
        )

    warning = _shrink_warning(samples, params)
    batch_warnings = (warning,) if warning else ()
    # First occurrence in source order wins: sorted paths for a folder, index order for an .npz.
    earlier = known_hashes(data_dir)
    if dropped is not None and any(sample.sha256 in earlier for sample in samples):
        earlier = known_hashes(data_dir, exclude=dropped())
    seen: set[str] = set()
    kept: list[_Sample] = []
    duplicates: list[Duplicate] = []
    for sample in samples:
        if sample.sha256 in earlier:
            duplicates.append(Duplicate(sample.source, sample.sha256, earlier[sample.sha256]))
        elif sample.sha256 in seen:
            duplicates.append(Duplicate(sample.source, sample.sha256, "this batch"))
        else:
            seen.add(sample.sha256)
            kept.append(sample)
    if not kept:
        return IngestReport(
            None, None, (), 0, 0, tuple(quarantined), tuple(duplicates), warnings=batch_warnings
        )

    # Split by content hash, per class: independent of file names and order, stable forever.
    classes = tuple(sorted({s.label for s in kept}))
    ordered: list[tuple[_Sample, str]] = []
    class_counts = []
    for name in classes:
        group = sorted((s for s in kept if s.label == name), key=lambda s: s.sha256)
        k = _held_out_count(len(group), params.held_out_fraction)
        ordered += [(s, "held_out" if i < k else "train") for i, s in enumerate(group)]
        class_counts.append((name, len(group) - k, k))

    seq = 1 + max((b.seq for b in list_batches(data_dir)), default=0)
    digest = hashlib.sha256("\n".join(sorted(s.sha256 for s in kept)).encode()).hexdigest()
    batch_id = f"b{seq:03d}-{digest[:8]}"
    num_held_out = sum(k for _, _, k in class_counts)
    num_train = len(kept) - num_held_out

    class_index = {name: i for i, name in enumerate(classes)}
    images = np.stack([s.pixels for s, _ in ordered])
    labels = np.array([class_index[s.label] for s, _ in ordered], dtype=np.int64)
    manifest: dict[str, object] = {
        "batch_id": batch_id,
        "seq": seq,
        "source_name": source.name or source.resolve().name,
        "classes": list(classes),
        "image_shape": [params.image_size, params.image_size, params.channels],
        "samples": [
            {"source": s.source, "sha256": s.sha256, "label": s.label, "split": split} for s, split in ordered
        ],
        "counts": {
            "train": num_train,
            "held_out": num_held_out,
            "quarantined": len(quarantined),
            "duplicates": len(duplicates),
        },
        "quarantined": [{"source": q.source, "reason": q.reason} for q in quarantined],
        "duplicates": [
            {"source": d.source, "sha256": d.sha256, "duplicate_of": d.duplicate_of} for d in duplicates
        ],
    }
    if before_publish is not None:
        before_publish(batch_id)
    batches_dir(data_dir).mkdir(parents=True, exist_ok=True)
    batch_dir = _publish(data_dir, batch_id, images, labels, manifest, quarantined, copies)
    return IngestReport(
        batch_id=batch_id,
        batch_dir=batch_dir,
        classes=classes,
        num_train=num_train,
        num_held_out=num_held_out,
        quarantined=tuple(quarantined),
        duplicates=tuple(duplicates),
        class_counts=tuple(class_counts),
        warnings=batch_warnings,
    )
