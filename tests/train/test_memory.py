"""Replay memory: bounded per class, a uniform sample of everything each class has seen, seeded."""

from __future__ import annotations

import numpy as np

from ratchet.train.memory import NOWHERE, Origins, ReplayMemory


def samples(spec: dict[str, int], tag: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N,8,8,1) images whose pixels record (class index, tag, serial) to trace them later."""
    labels = np.array([name for name, n in spec.items() for _ in range(n)])
    images = np.zeros((len(labels), 8, 8, 1), dtype=np.uint8)
    names = sorted(spec)
    for i, name in enumerate(labels):
        images[i, 0, 0, 0] = names.index(name) + 1
        images[i, 0, 1, 0] = tag
        images[i, 0, 2, 0] = i % 256
    return images, labels


def memory_of(spec: dict[str, int], tag: int = 0) -> ReplayMemory:
    return ReplayMemory.empty(8, 1).updated(*samples(spec, tag), per_class=10_000, seed=0)


def test_empty_memory_has_the_canonical_shape() -> None:
    m = ReplayMemory.empty(8, 3)
    assert len(m) == 0 and m.per_class() == {}
    assert m.images.shape == (0, 8, 8, 3) and m.images.dtype == np.uint8


def test_empty_memory_plus_new_samples_keeps_up_to_per_class() -> None:
    # given an empty memory and a batch of A:10, B:2
    images, labels = samples({"A": 10, "B": 2})
    # when updated with per_class 4
    m = ReplayMemory.empty(8, 1).updated(images, labels, per_class=4, seed=0)
    # then A is capped, B (fewer than the cap) is kept whole
    assert m.per_class() == {"A": 4, "B": 2}
    assert m.images.shape == (6, 8, 8, 1) and m.images.dtype == np.uint8
    assert m.labels.dtype.kind == "U"
    # and every kept image is one of the new images
    new = {im.tobytes() for im in images}
    assert all(im.tobytes() in new for im in m.images)


def test_bound_per_class_holds_over_memory_and_new() -> None:
    # given a memory with A:5, C:5 and a batch with A:10, B:3
    m = memory_of({"A": 5, "C": 5}, tag=1)
    images, labels = samples({"A": 10, "B": 3}, tag=2)
    # when updated with per_class 4
    out = m.updated(images, labels, per_class=4, seed=0)
    # then no class holds more than 4 samples
    assert out.per_class() == {"A": 4, "B": 3, "C": 4}


def test_images_and_labels_stay_paired() -> None:
    m = memory_of({"A": 7, "B": 7, "C": 7}, tag=1)
    images, labels = samples({"A": 9, "B": 9, "C": 9}, tag=2)
    out = m.updated(images, labels, per_class=5, seed=3)
    names = ["A", "B", "C"]
    assert [names[int(im[0, 0, 0]) - 1] for im in out.images] == out.labels.tolist()


def test_classes_absent_from_the_batch_keep_their_samples() -> None:
    # given a memory holding A:3 and C:3
    m = memory_of({"A": 3, "C": 3}, tag=1)
    before = {im.tobytes() for im, lab in zip(m.images, m.labels, strict=True) if lab == "A"}
    # when a batch of only B arrives
    images, labels = samples({"B": 20}, tag=2)
    out = m.updated(images, labels, per_class=5, seed=0)
    # then A's very samples are still there
    after = {im.tobytes() for im, lab in zip(out.images, out.labels, strict=True) if lab == "A"}
    assert after == before and len(after) == 3
    assert out.per_class() == {"A": 3, "B": 5, "C": 3}


def test_a_class_seen_again_keeps_every_earlier_batch_in_proportion() -> None:
    # given class A arriving four times, 500 samples each (tags 1..4), cap 200
    m = ReplayMemory.empty(8, 1)
    for tag in (1, 2, 3, 4):
        m = m.updated(*samples({"A": 500}, tag=tag), per_class=200, seed=tag)
    counts = [m.images[:, 0, 1, 0].tolist().count(t) for t in (1, 2, 3, 4)]
    # then the memory is a uniform sample of all 2000: about 50 of each batch (sd ~6), where
    # sampling memory and batch alike would leave the first batch ~5 and the last ~160
    assert len(m) == 200 and m.seen == {"A": 2000}
    assert all(30 <= c <= 70 for c in counts), counts


def test_the_seen_count_decides_the_share_of_new_samples() -> None:
    # given a memory of 20 A's that stands for 180 seen, and 20 new A's
    m = ReplayMemory.empty(8, 1).updated(*samples({"A": 180}, tag=1), per_class=20, seed=0)
    out = m.updated(*samples({"A": 20}, tag=2), per_class=20, seed=0)
    # then the new ones get 20 * 20/200 = 2 places
    assert out.images[:, 0, 1, 0].tolist().count(2) == 2


def test_a_memory_without_seen_counts_counts_what_it_holds() -> None:
    # given a memory saved before seen counts existed (A:20 held, nothing recorded)
    held = ReplayMemory.empty(8, 1).updated(*samples({"A": 20}, tag=1), per_class=20, seed=0)
    legacy = ReplayMemory(images=held.images, labels=held.labels)
    out = legacy.updated(*samples({"A": 20}, tag=2), per_class=20, seed=0)
    # then it behaves as if 20 were seen: half old, half new
    assert out.images[:, 0, 1, 0].tolist().count(1) == 10 and out.seen == {"A": 40}


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    m = memory_of({"A": 30, "B": 30}, tag=1)
    images, labels = samples({"A": 30, "B": 30}, tag=2)
    a = m.updated(images, labels, per_class=5, seed=7)
    b = m.updated(images, labels, per_class=5, seed=7)
    c = m.updated(images, labels, per_class=5, seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_updated_does_not_modify_the_memory() -> None:
    m = memory_of({"A": 8}, tag=1)
    images_before, labels_before = m.images.copy(), m.labels.copy()
    m.updated(*samples({"A": 8, "B": 8}, tag=2), per_class=2, seed=0)
    assert np.array_equal(m.images, images_before) and np.array_equal(m.labels, labels_before)
    assert len(m) == 8


def test_an_empty_batch_leaves_the_memory_as_it_was() -> None:
    m = memory_of({"A": 3, "B": 2}, tag=1)
    out = m.updated(*samples({}, tag=2), per_class=5, seed=0)
    assert np.array_equal(out.images, m.images) and out.labels.tolist() == m.labels.tolist()
    assert out.seen == {"A": 3, "B": 2}
    assert len(ReplayMemory.empty(8, 1).updated(*samples({}, tag=2), per_class=5, seed=0)) == 0


def test_each_stored_sample_keeps_the_batch_and_row_it_came_from() -> None:
    # given two batches with known origins, the second replacing part of the first's samples
    first, second = samples({"A": 30, "B": 30}, tag=1), samples({"A": 30, "C": 30}, tag=2)
    batches = {("b1", "c1"): first[0], ("b2", "c2"): second[0]}
    m = ReplayMemory.empty(8, 1).updated(
        *first, per_class=10, seed=0, origins=Origins.of_batches([(("b1", "c1"), 60)])
    )
    m = m.updated(*second, per_class=10, seed=1, origins=Origins.of_batches([(("b2", "c2"), 60)]))
    # then every sample's origin holds exactly its image, and the table names only batches in use
    origins = m.known_origins()
    assert len(origins) == len(m) and set(origins.batches) == {("b1", "c1"), ("b2", "c2")}
    for image, which, row in zip(m.images, origins.which, origins.row, strict=True):
        assert np.array_equal(batches[origins.batches[which]][row], image)
    # and a batch whose samples are all replaced is no longer named; unknown origins stay NOWHERE
    small = ReplayMemory.empty(8, 1).updated(
        *samples({"A": 10}, tag=1), per_class=10, seed=0, origins=Origins.of_batches([(("b1", "c1"), 10)])
    )
    flood = samples({"A": 10_000, "B": 5}, tag=2)
    out = small.updated(*flood, per_class=10, seed=0, origins=Origins.of_batches([(("b2", "c2"), 10_005)]))
    assert out.known_origins().batches == (("b2", "c2"),)
    unknown = out.updated(*samples({"C": 4}, tag=3), per_class=10, seed=0)
    assert (unknown.known_origins().which == NOWHERE).sum() == 4 and unknown.per_class()["C"] == 4


def test_samples_of_no_known_batch_stay_nowhere() -> None:
    m = memory_of({"A": 5})
    assert (m.known_origins().which == NOWHERE).all() and m.known_origins().batches == ()
