"""Held-out metrics, with a stand-in model whose predictions the test controls exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ratchet.evaluate import (
    ModelMetrics,
    argmax_among,
    confusion,
    held_out,
    model_metrics,
    per_batch_accuracy,
    predict,
    split_metrics,
)
from ratchet.metrics import Confusion, CycleMetrics
from ratchet.train.checkpoint import Checkpoint
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import ModelSpec

CLASSES = ("a", "b", "c")
SPEC = ModelSpec(arch="small_cnn", in_channels=1, image_size=8, width=8, dropout=0.0, classes=CLASSES)


class PixelOracle(nn.Module):
    """Predicts the class index written (times 10) into every pixel of the uint8 image."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()))  # predict() asks the parameters for the device
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        pixel = (x[:, 0, 0, 0] + 1.0) * 127.5  # undo preprocess
        index = torch.round(pixel / 10).long().clamp(max=self.num_classes - 1)  # unknown: the last class
        return nn.functional.one_hot(index, self.num_classes).float() + self.anchor


def checkpoint() -> Checkpoint:
    return Checkpoint(model=PixelOracle(len(CLASSES)), spec=SPEC, memory=ReplayMemory.empty(8, 1))  # type: ignore[arg-type]


def images_predicting(indices: list[int]) -> np.ndarray:
    return np.stack([np.full((8, 8, 1), 10 * i, dtype=np.uint8) for i in indices])


def test_predict_returns_class_indices_in_batches() -> None:
    ck = checkpoint()
    idx = [0, 1, 2, 2, 1, 0, 0]
    out = predict(ck, images_predicting(idx), batch_size=3)
    assert out.tolist() == idx
    assert ck.model.calls == 3  # 7 images in batches of 3
    assert not ck.model.training


def test_predict_on_no_images_is_empty() -> None:
    assert predict(checkpoint(), np.zeros((0, 8, 8, 1), dtype=np.uint8)).shape == (0,)


def test_split_metrics_counts_per_true_class() -> None:
    # given predictions a, a, b, c, c for truths a, b, b, c, a
    images = images_predicting([0, 0, 1, 2, 2])
    labels = np.array(["a", "b", "b", "c", "a"])
    m = split_metrics(checkpoint(), images, labels)
    # then 3 of 5 are right, and per_class is keyed by the true class names
    assert (m.n, m.correct) == (5, 3)
    assert m.accuracy == pytest.approx(0.6)
    assert m.per_class == {"a": 0.5, "b": 0.5, "c": 1.0}


def test_a_class_unknown_to_the_model_counts_as_a_miss() -> None:
    # given samples of "z", which the model has no output for, whatever it predicts
    images = images_predicting([0, 1, 2, 0])
    labels = np.array(["z", "z", "z", "a"])
    m = split_metrics(checkpoint(), images, labels)
    # then every "z" is a miss and it still appears in per_class under its own name
    assert (m.n, m.correct) == (4, 1)
    assert m.per_class == {"a": 1.0, "z": 0.0}


def test_no_old_samples_give_no_old_metrics_and_all_equals_new() -> None:
    none = np.array([], dtype=str)
    metrics = model_metrics((none, none), (np.array(["a", "b", "c"]), np.array(["a", "b", "b"])))
    assert isinstance(metrics, ModelMetrics)
    assert metrics.old is None
    assert metrics.all == metrics.new
    assert metrics.new.correct == 2 and metrics.new.n == 3


def test_old_new_and_all_are_computed_separately() -> None:
    # given old held-out data the model gets 1/2 right and new data it gets 3/3 right
    m = model_metrics(
        (np.array(["a", "b"]), np.array(["a", "a"])), (np.array(["c", "c", "b"]), np.array(["c", "c", "b"]))
    )
    assert m.old is not None
    assert (m.old.correct, m.old.n, m.old.accuracy) == (1, 2, 0.5)
    assert (m.new.correct, m.new.n, m.new.accuracy) == (3, 3, 1.0)
    assert (m.all.correct, m.all.n) == (4, 5) and m.all.accuracy == pytest.approx(0.8)
    assert m.all.per_class == {"a": 1.0, "b": 0.5, "c": 1.0}


def test_to_json_is_plain_data() -> None:
    d = model_metrics((np.array(["a"]), np.array(["a"])), (np.array(["c"]), np.array(["b"]))).to_json()
    assert d["old"] == {"accuracy": 1.0, "n": 1, "correct": 1, "per_class": {"a": 1.0}}
    assert d["new"]["per_class"] == {"c": 0.0}  # type: ignore[index]


def test_argmax_among_restricts_the_prediction_to_the_allowed_classes() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.1, 0.7]], dtype=np.float32)
    assert argmax_among(scores, CLASSES, CLASSES).tolist() == ["b", "a"]
    assert argmax_among(scores, CLASSES, ("a", "c")).tolist() == ["c", "a"]
    assert argmax_among(scores, CLASSES, ()).tolist() == ["", ""]


def test_held_out_pairs_champion_and_candidate_sample_by_sample() -> None:
    # given a champion that knows a, b and a candidate that grew c
    champion = Checkpoint(
        model=PixelOracle(2),
        spec=SPEC.with_classes(("a", "b")),
        memory=ReplayMemory.empty(8, 1),  # type: ignore[arg-type]
    )
    images = images_predicting([0, 1, 2, 2])
    h = held_out(checkpoint(), champion, images, np.array(["a", "b", "c", "a"]))
    # then the candidate's own prediction, its best among a/b and among the new class c are all there
    assert h.candidate.tolist() == ["a", "b", "c", "c"]
    assert h.candidate_among_new.tolist() == ["c", "c", "c", "c"]
    assert h.candidate_known.tolist()[:2] == ["a", "b"]  # the two c-predictions fall back to a or b
    assert h.champion.tolist() == ["a", "b", "b", "b"]
    # and without a champion the champion column is empty and every class is new
    first = held_out(checkpoint(), None, images, np.array(["a", "b", "c", "a"]))
    assert first.champion.tolist() == [""] * 4 and first.candidate_known.tolist() == [""] * 4
    assert first.candidate_among_new.tolist() == first.candidate.tolist()


def test_accuracy_per_batch_scores_each_batch_on_its_own_samples() -> None:
    # given old samples of batch b1 (1 of 2 right) and new ones of b2 (2 of 3 right) and b3 (1 of 1)
    old = (np.array(["a", "b"]), np.array(["a", "a"]))
    new = (np.array(["c", "c", "b", "a"]), np.array(["c", "a", "b", "a"]))
    batches = np.array(["b1", "b1", "b2", "b2", "b2", "b3"])
    m = model_metrics(old, new, batches)
    # then each batch has its own accuracy, in the order the batches come
    assert list(m.per_batch) == ["b1", "b2", "b3"]
    assert m.per_batch == pytest.approx({"b1": 0.5, "b2": 2 / 3, "b3": 1.0})
    # and without batch ids there is none
    assert model_metrics(old, new).per_batch == {}
    assert per_batch_accuracy(np.array([], dtype=str), np.array([], dtype=str), np.array([], dtype=str)) == {}


def test_confusion_counts_true_rows_against_predicted_columns_in_the_models_class_order() -> None:
    # given truths a, a, b, c, z and predictions a, b, b, a, c from a model knowing c, a, b
    labels = np.array(["a", "a", "b", "c", "z"])
    predicted = np.array(["a", "b", "b", "a", "c"])
    m = confusion(labels, predicted, ("c", "a", "b"))
    # then rows and columns follow the model's classes, and "z", unknown to it, gets a row at the end
    assert m.classes == ("c", "a", "b", "z")
    assert m.counts == ((0, 1, 0, 0), (0, 1, 1, 0), (0, 0, 1, 0), (1, 0, 0, 0))
    assert sum(map(sum, m.counts)) == len(labels)


def half() -> ModelMetrics:
    return model_metrics((np.array(["a"]), np.array(["a"])), (np.array(["b"]), np.array(["a"])))


def test_cycle_metrics_round_trip_through_json_with_batches_and_confusion() -> None:
    cand = model_metrics(
        (np.array(["a"]), np.array(["a"])), (np.array(["b"]), np.array(["a"])), np.array(["b1", "b2"])
    )
    metrics = CycleMetrics(
        candidate=cand,
        champion=half(),
        gate={},
        confusion=Confusion(classes=("a", "b"), counts=((1, 0), (1, 0))),
    )
    raw = json.loads(json.dumps(metrics.to_json(), sort_keys=True))
    assert raw["candidate"]["per_batch"] == {"b1": 1.0, "b2": 0.0}
    assert raw["champion"]["per_batch"] == {}
    assert raw["confusion"] == {"classes": ["a", "b"], "counts": [[1, 0], [1, 0]]}
    assert CycleMetrics.from_json(raw) == metrics


def test_a_metrics_json_from_before_batches_and_confusion_reads_back_empty() -> None:
    # given a metrics.json written before accuracy per batch and the confusion matrix were recorded
    split = {"accuracy": 0.5, "n": 2, "correct": 1, "per_class": {"a": 1.0, "b": 0.0}}
    old = {
        "candidate": {"old": None, "new": split, "all": split},
        "champion": {"old": split, "new": split, "all": split},
        "gate": {"floor": {"accuracy": 0.5, "n": 2}},
    }
    metrics = CycleMetrics.from_json(old)
    # then it reads, with both left empty
    assert metrics.candidate.per_batch == {} and metrics.champion is not None
    assert metrics.champion.per_batch == {}
    assert metrics.confusion == Confusion()
    assert metrics.headline().candidate.new == 0.5
