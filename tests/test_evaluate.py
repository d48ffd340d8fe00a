"""Held-out metrics, with a stand-in model whose predictions the test controls exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ratchet.evaluate import ModelMetrics, evaluate_model, predict, split_metrics
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
        index = torch.round(pixel / 10).long()
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


def test_old_none_gives_no_old_metrics_and_all_equals_new() -> None:
    new = (images_predicting([0, 1, 1]), np.array(["a", "b", "c"]))
    metrics = evaluate_model(checkpoint(), None, new)
    assert isinstance(metrics, ModelMetrics)
    assert metrics.old is None
    assert metrics.all == metrics.new
    assert metrics.new.correct == 2 and metrics.new.n == 3


def test_empty_old_data_is_treated_like_none() -> None:
    old = (np.zeros((0, 8, 8, 1), dtype=np.uint8), np.array([], dtype=str))
    new = (images_predicting([0]), np.array(["a"]))
    metrics = evaluate_model(checkpoint(), old, new)
    assert metrics.old is None and metrics.all == metrics.new


def test_old_new_and_all_are_computed_separately() -> None:
    # given old held-out data the model gets 1/2 right and new data it gets 3/3 right
    old = (images_predicting([0, 0]), np.array(["a", "b"]))
    new = (images_predicting([2, 2, 1]), np.array(["c", "c", "b"]))
    m = evaluate_model(checkpoint(), old, new)
    assert m.old is not None
    assert (m.old.correct, m.old.n, m.old.accuracy) == (1, 2, 0.5)
    assert (m.new.correct, m.new.n, m.new.accuracy) == (3, 3, 1.0)
    assert (m.all.correct, m.all.n) == (4, 5) and m.all.accuracy == pytest.approx(0.8)
    assert m.all.per_class == {"a": 1.0, "b": 0.5, "c": 1.0}


def test_to_json_is_plain_data() -> None:
    old = (images_predicting([0]), np.array(["a"]))
    new = (images_predicting([1]), np.array(["c"]))
    d = evaluate_model(checkpoint(), old, new).to_json()
    assert d["old"] == {"accuracy": 1.0, "n": 1, "correct": 1, "per_class": {"a": 1.0}}
    assert d["new"]["per_class"] == {"c": 0.0}  # type: ignore[index]
