from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ratchet.config import DataParams
from ratchet.data.catalog import load_split
from ratchet.data.ingest import IngestReport, ingest_batch
from ratchet.errors import InputError

PARAMS = DataParams(
    image_size=8, channels=3, held_out_fraction=0.25, max_file_bytes=20_000, max_image_pixels=10_000
)


def noise(seed: int, size: int = 8, channels: int = 3) -> np.ndarray:
    shape = (size, size, channels) if channels > 1 else (size, size)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_folder(root: Path, spec: dict[str, list[int]], prefix: str = "img") -> Path:
    for name, seeds in spec.items():
        for seed in seeds:
            save(root / name / f"{prefix}{seed}.png", noise(seed))
    return root


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


def test_imagefolder_happy_path(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", {"cat": [1, 2, 3, 4], "dog": [5, 6, 7]})
    save(src / "dog" / "img8.jpg", noise(8), "JPEG")
    (src / ".DS_Store").write_bytes(b"junk")
    (src / "cat" / ".hidden.png").write_bytes(b"junk")
    calls: list[tuple[int, int]] = []

    report = ingest_batch(src, tmp_path / "data", PARAMS, progress=lambda d, t: calls.append((d, t)))

    assert report.batch_id is not None and report.batch_id.startswith("b001-")
    assert report.batch_dir == tmp_path / "data" / "batches" / report.batch_id
    assert report.classes == ("cat", "dog")
    # cat: round(4 * .25) = 1 held out; dog: round(4 * .25) = 1 held out
    assert (report.num_train, report.num_held_out) == (6, 2)
    assert report.class_counts == (("cat", 3, 1), ("dog", 3, 1))
    assert report.quarantined == () and report.duplicates == ()
    assert calls[-1] == (8, 8) and len(calls) <= 21

    images = np.load(report.batch_dir / "images.npy")
    labels = np.load(report.batch_dir / "labels.npy")
    manifest = json.loads((report.batch_dir / "manifest.json").read_text())
    assert images.shape == (8, 8, 8, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0] * 4 + [1] * 4
    assert manifest["image_shape"] == [8, 8, 3] and manifest["source_name"] == "src"
    assert manifest["counts"] == {"train": 6, "held_out": 2, "quarantined": 0, "duplicates": 0}
    for name in ("cat", "dog"):
        rows = [s for s in manifest["samples"] if s["label"] == name]
        assert [r["sha256"] for r in rows] == sorted(r["sha256"] for r in rows)
        assert [r["split"] for r in rows] == ["held_out", "train", "train", "train"]
    # Pixels are the lossless PNG pixels, in manifest order.
    first = next(i for i, s in enumerate(manifest["samples"]) if s["source"] == "cat/img1.png")
    assert np.array_equal(images[first], noise(1))
    assert "batch " + report.batch_id in report.summary()


def test_same_input_gives_identical_bytes_and_order_free_split(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", {"a": list(range(10)), "b": list(range(10, 17))})
    r1 = ingest_batch(src, tmp_path / "d1", PARAMS)
    r2 = ingest_batch(src, tmp_path / "d2", PARAMS)
    assert r1.batch_id == r2.batch_id
    for name in ("manifest.json", "images.npy", "labels.npy"):
        assert (r1.batch_dir / name).read_bytes() == (r2.batch_dir / name).read_bytes()
    assert not list((tmp_path / "d1").rglob(".incoming-*"))

    # Same pictures under other names, written in the reverse order: same split, same arrays.
    other = tmp_path / "other"
    for name, seeds in {"b": list(range(16, 9, -1)), "a": list(range(9, -1, -1))}.items():
        for seed in seeds:
            save(other / name / f"z{100 - seed}.png", noise(seed))
    r3 = ingest_batch(other, tmp_path / "d3", PARAMS)
    assert r3.batch_id == r1.batch_id

    def split_of(report: IngestReport) -> dict[str, str]:
        manifest = json.loads((report.batch_dir / "manifest.json").read_text())
        return {s["sha256"]: s["split"] for s in manifest["samples"]}

    assert split_of(r3) == split_of(r1)
    assert (r3.batch_dir / "images.npy").read_bytes() == (r1.batch_dir / "images.npy").read_bytes()
    assert (r1.num_train, r1.num_held_out) == (13, 4)  # a: round(2.5) = 2, b: round(1.75) = 2


def test_npz_with_classes(tmp_path: Path) -> None:
    images = np.stack([noise(s, size=12) for s in range(6)])
    path = tmp_path / "batch.npz"
    np.savez(
        path, images=images, labels=np.array([0, 1, 2, 0, 1, 2]), classes=np.array(["ant", "bee", "cow"])
    )

    report = ingest_batch(path, tmp_path / "data", PARAMS)

    assert report.classes == ("ant", "bee", "cow")
    assert (report.num_train, report.num_held_out) == (3, 3)
    manifest = json.loads((report.batch_dir / "manifest.json").read_text())
    assert manifest["source_name"] == "batch.npz"
    assert {s["source"] for s in manifest["samples"]} == {f"images[{i}]" for i in range(6)}
    train = load_split(tmp_path / "data", [report.batch_id], "train")
    assert train.images.shape == (3, 8, 8, 3)  # resized from 12x12
    assert sorted(train.labels.tolist()) == ["ant", "bee", "cow"]


def test_npz_without_classes_into_grayscale_workspace(tmp_path: Path) -> None:
    params = DataParams(
        image_size=8, channels=1, held_out_fraction=0.5, max_file_bytes=20_000, max_image_pixels=10_000
    )
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    images = np.stack([red, noise(1, 16), noise(2, 16), noise(3, 16)])
    path = tmp_path / "gray.npz"
    np.savez(path, images=images, labels=np.array([3, 3, 7, 3], dtype=np.int32))

    report = ingest_batch(path, tmp_path / "data", params)

    assert report.classes == ("3", "7")
    stored = np.load(report.batch_dir / "images.npy")
    assert stored.shape == (4, 8, 8, 1)
    manifest = json.loads((report.batch_dir / "manifest.json").read_text())
    red_row = next(i for i, s in enumerate(manifest["samples"]) if s["source"] == "images[0]")
    assert np.all(stored[red_row] == 76)  # ITU-R 601 luma of pure red: 255 * 299 / 1000
    everything = load_split(tmp_path / "data", [report.batch_id], "train").labels.tolist()
    everything += load_split(tmp_path / "data", [report.batch_id], "held_out").labels.tolist()
    assert sorted(everything) == ["3", "3", "3", "7"]


def test_sixteen_bit_png_keeps_its_range(tmp_path: Path) -> None:
    params = DataParams(
        image_size=8, channels=1, held_out_fraction=0.25, max_file_bytes=20_000, max_image_pixels=10_000
    )
    save(tmp_path / "src" / "x" / "deep.png", np.full((8, 8), 32896, dtype=np.uint16))  # 128 * 257
    report = ingest_batch(tmp_path / "src", tmp_path / "data", params)
    assert np.all(np.load(report.batch_dir / "images.npy") == 128)


def test_same_picture_in_two_formats_is_one_sample(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(src / "cat" / "a.png", noise(1))
    save(src / "cat" / "b.bmp", noise(1), "BMP")
    save(src / "cat" / "c.png", noise(2))

    report = ingest_batch(src, tmp_path / "data", PARAMS)

    assert report.num_train + report.num_held_out == 2
    assert [(d.source, d.duplicate_of) for d in report.duplicates] == [("cat/b.bmp", "this batch")]


def test_bad_files_are_quarantined_and_copied(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", {"cat": [1, 2], "dog": [3]})
    good = io.BytesIO()
    Image.fromarray(noise(4, size=32)).save(good, format="PNG")
    (src / "dog" / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (src / "dog" / "garbage.png").write_bytes(b"not a png at all")
    (src / "dog" / "notes.txt").write_text("hello")
    save(src / "dog" / "big.png", noise(5, size=100))  # ~30 kB of noise > max_file_bytes
    save(src / "dog" / "huge.png", np.zeros((200, 200), dtype=np.uint8))  # tiny file, 40000 pixels
    (src / "dog" / "link.png").symlink_to(src / "cat" / "img1.png")
    (src / "readme.md").write_text("read me")
    data = tmp_path / "data"

    report = ingest_batch(src, data, PARAMS)

    reasons = {q.source: q.reason for q in report.quarantined}
    assert reasons["dog/notes.txt"] == "format_not_allowed: .txt"
    assert reasons["dog/truncated.png"].startswith("undecodable: ")
    assert reasons["dog/garbage.png"].startswith("undecodable: ")
    assert reasons["dog/big.png"].startswith("too_large: ") and "> 20000" in reasons["dog/big.png"]
    assert reasons["dog/huge.png"] == "too_many_pixels: 200x200 = 40000 > 10000"
    assert reasons["dog/link.png"] == "symlink"
    assert reasons["readme.md"] == "not_in_class_folder"
    assert len(reasons) == 7 and report.num_train + report.num_held_out == 3
    assert [q.source for q in report.quarantined] == sorted(reasons)
    assert str(tmp_path) not in (report.batch_dir / "manifest.json").read_text()

    qdir = data / "quarantine" / report.batch_id
    for rel in ("dog/notes.txt", "dog/truncated.png", "dog/big.png", "dog/huge.png", "readme.md"):
        assert (qdir / rel).read_bytes() == (src / rel).read_bytes()
        assert (src / rel).exists()  # copied, not moved
    assert not (qdir / "dog" / "link.png").exists() and not (qdir / "dog" / "link.png").is_symlink()
    listed = json.loads((qdir / "reasons.json").read_text())
    assert {r["source"]: r["reason"] for r in listed} == reasons
    summary = report.summary()
    assert "quarantined: 7" in summary and "dog/notes.txt: format_not_allowed: .txt" in summary


def test_all_bad_folder_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "a.txt").write_text("x")
    (src / "cat" / "b.png").write_bytes(b"\x89PNG broken")
    data = tmp_path / "data"
    with pytest.raises(
        InputError, match=r"nothing usable in .*: 2 files, all quarantined \(first: cat/a.txt: format_not"
    ):
        ingest_batch(src, data, PARAMS)
    assert not data.exists()


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


GOOD = np.stack([noise(i) for i in range(3)])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: _npz(p, images=GOOD, labels=np.array([0, 1])),
            "labels must be 1-D with one entry per image",
        ),
        (
            lambda p: _npz(p, images=GOOD.astype(np.float32), labels=np.arange(3)),
            "images must be uint8, got float32",
        ),
        (lambda p: _npz(p, images=GOOD), "missing key 'labels'"),
        (
            lambda p: _npz(p, images=GOOD, labels=np.array(["a", 1, None], dtype=object)),
            "pickled object array",
        ),
        (lambda p: _npz(p, images=GOOD[:0], labels=np.arange(0)), "no samples"),
        (lambda p: _npz(p, images=GOOD[..., :2], labels=np.arange(3)), "images must have shape"),
        (
            lambda p: _npz(p, images=GOOD, labels=np.arange(3), classes=np.array(["a", "b"])),
            r"labels\[2\] = 2 is out of range",
        ),
        (lambda p: _npz(p, images=GOOD, labels=np.arange(3), label_names=np.array(["a"])), "unknown key"),
        (lambda p: p.write_text("not a zip") and p, "not a valid .npz"),
    ],
    ids=["length", "float", "missing", "object", "empty", "channels", "range", "unknown-key", "not-zip"],
)
def test_structural_npz_errors_write_nothing(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "bad.npz")
    data = tmp_path / "data"
    with pytest.raises(InputError, match=message) as err:
        ingest_batch(path, data, PARAMS)
    assert "bad.npz" in str(err.value) and "\n" not in str(err.value)
    assert not data.exists()


def test_structural_source_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(InputError, match="source not found"):
        ingest_batch(tmp_path / "missing", data, PARAMS)
    flat = tmp_path / "flat"
    save(flat / "a.png", noise(1))
    with pytest.raises(InputError, match="no class sub-folders"):
        ingest_batch(flat, data, PARAMS)
    with pytest.raises(InputError, match="unknown source kind"):
        ingest_batch(flat / "a.png", data, PARAMS)
    assert not data.exists()


def test_reingest_and_partial_overlap(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ingest_batch(make_folder(tmp_path / "one", {"cat": [1, 2, 3], "dog": [4, 5]}), data, PARAMS)

    again = ingest_batch(tmp_path / "one", data, PARAMS)
    assert again.batch_id is None and again.batch_dir is None
    assert {d.duplicate_of for d in again.duplicates} == {first.batch_id} and len(again.duplicates) == 5
    assert "nothing new" in again.summary()
    assert [p.name for p in (data / "batches").iterdir()] == [first.batch_id]

    second_src = make_folder(tmp_path / "two", {"cat": [2, 6], "dog": [5, 7, 8]}, prefix="new")
    second = ingest_batch(second_src, data, PARAMS)
    assert second.batch_id is not None and second.batch_id.startswith("b002-")
    assert sorted((d.source, d.duplicate_of) for d in second.duplicates) == [
        ("cat/new2.png", first.batch_id),
        ("dog/new5.png", first.batch_id),
    ]
    assert second.num_train + second.num_held_out == 3
    manifest = json.loads((second.batch_dir / "manifest.json").read_text())
    assert manifest["seq"] == 2 and manifest["counts"]["duplicates"] == 2


def test_progress_is_reported_sparingly(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (100, 8, 8), dtype=np.uint8)
    path = _npz(tmp_path / "many.npz", images=images, labels=np.arange(100) % 2)
    calls: list[tuple[int, int]] = []
    ingest_batch(path, tmp_path / "data", PARAMS, progress=lambda done, total: calls.append((done, total)))
    assert 2 <= len(calls) <= 21 and calls[-1] == (100, 100)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# ---- images much larger than data.image_size ----------------------------------------------------


def test_images_shrunk_more_than_twice_give_one_warning_for_the_batch(tmp_path: Path) -> None:
    # given 28x28 grayscale images (Fashion-MNIST size) into a workspace at the 8x8 default
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    path = _npz(tmp_path / "fashion.npz", images=images, labels=np.arange(30) % 3)
    # when ingested
    report = ingest_batch(path, tmp_path / "data", PARAMS)
    # then one warning for the whole batch names both sizes and the knob, and the summary starts with it
    assert report.warnings == (
        "batch images are 28x28, resized to 8x8 (data.image_size): set data.image_size "
        "(or `ratchet init --image-size`) to train on more detail",
    )
    lines = report.summary().splitlines()
    assert lines[0] == f"warning: {report.warnings[0]}"
    assert sum("warning" in line for line in lines) == 1
    # and the stored batch is the same as without the warning: 8x8
    assert np.load(report.batch_dir / "images.npy").shape == (30, 8, 8, 3)


def test_warning_counts_the_shrunk_images_of_a_mixed_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(src / "cat" / "big.png", noise(1, size=64))
    save(src / "cat" / "mid.png", noise(2, size=32))
    save(src / "dog" / "small.png", noise(3))
    save(src / "dog" / "double.png", noise(4, size=16))  # exactly 2x: not worth a warning
    report = ingest_batch(src, tmp_path / "data", PARAMS)
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("2 of 4 batch images are up to 64x64, resized to 8x8")


@pytest.mark.parametrize("size", [8, 12, 16])
def test_no_warning_when_images_are_shrunk_at_most_twice(tmp_path: Path, size: int) -> None:
    src = make_folder(tmp_path / "src", {"cat": [1, 2], "dog": [3, 4]})
    for seed in (1, 2):
        save(src / "cat" / f"img{seed}.png", noise(seed, size=size))
    report = ingest_batch(src, tmp_path / "data", PARAMS)
    assert report.warnings == ()
    assert "warning" not in report.summary()


# ---- .npz bombs ----------------------------------------------------------------------------------


def test_an_npz_that_unpacks_past_the_cap_is_refused_unread(tmp_path: Path) -> None:
    # given 3 MB of zeros that compress to a few kB, and a 1 MB cap on what an .npz may unpack to
    src = tmp_path / "bomb.npz"
    np.savez_compressed(src, images=np.zeros((3000, 32, 32), np.uint8), labels=np.zeros(3000, np.int64))
    assert src.stat().st_size < 50_000
    capped = dataclasses.replace(PARAMS, max_unpacked_bytes=1_000_000)
    # when ingested, then it is refused in one line, and nothing is written
    with pytest.raises(InputError, match=r"unpack to 3\d{6} bytes, more than data.max_unpacked_bytes") as err:
        ingest_batch(src, tmp_path / "data", capped)
    assert "\n" not in str(err.value)
    assert files_under(tmp_path / "data") == []
    # and under the default cap the same file goes in
    assert ingest_batch(src, tmp_path / "ok", dataclasses.replace(PARAMS, image_size=32, channels=1)).batch_id


def test_an_npz_whose_header_declares_a_huge_array_is_refused_before_allocating(tmp_path: Path) -> None:
    # given a tiny member whose .npy header claims 10**12 bytes (numpy would allocate that to read it)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**12,)})
    src = tmp_path / "liar.npz"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + b"\0" * 64)
        labels = io.BytesIO()
        np.save(labels, np.zeros(1, np.int64))
        archive.writestr("labels.npy", labels.getvalue())
    # when ingested with the default cap, then refused without reading the arrays
    with pytest.raises(InputError, match=r"unpack to 1000000000\d{3} bytes"):
        ingest_batch(src, tmp_path / "data", DataParams())
    assert files_under(tmp_path / "data") == []


def test_an_npz_with_more_arrays_than_it_may_hold_is_refused_from_its_directory(tmp_path: Path) -> None:
    # given an archive of 10,000 tiny members besides images and labels
    src = tmp_path / "many.npz"
    np.savez(src, images=np.zeros((2, 8, 8), np.uint8), labels=np.zeros(2, np.int64))
    with zipfile.ZipFile(src, "a") as archive:
        for i in range(10_000):
            archive.writestr(f"extra{i}.npy", b"")
    # when ingested, then refused in one line naming what is extra, and nothing is written
    extra = r"unknown key\(s\) extra0, extra1, extra10 and 9997 more in 10002 arrays"
    with pytest.raises(InputError, match=extra):
        ingest_batch(src, tmp_path / "data", PARAMS)
    assert files_under(tmp_path / "data") == []
