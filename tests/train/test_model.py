"""The model spec, the small CNN, and growing its head without moving old classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ratchet.train.model import ModelSpec, SmallCNN, build_model, grow_head, label_indices, preprocess

SPEC = ModelSpec(arch="small_cnn", in_channels=1, image_size=8, width=8, dropout=0.0, classes=("3", "7"))


def trained_looking(spec: ModelSpec) -> SmallCNN:
    """A model whose head is not at its init values, so 'kept' can't pass by accident."""
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        model.head.weight.normal_(0, 3)
        model.head.bias.normal_(0, 3)
    return model


def test_spec_json_round_trip_through_text() -> None:
    # given a spec, when dumped to JSON text and read back
    back = ModelSpec.from_json(json.loads(json.dumps(SPEC.to_json())))
    # then it is equal, with classes a tuple again
    assert back == SPEC
    assert isinstance(back.classes, tuple)
    assert SPEC.to_json()["classes"] == ["3", "7"]


def test_spec_from_json_refuses_unknown_keys() -> None:
    d = SPEC.to_json() | {"colour": "blue"}
    with pytest.raises(ValueError, match="colour"):
        ModelSpec.from_json(d)


def test_build_model_matches_the_spec() -> None:
    model = build_model(SPEC)
    out = model.eval()(torch.zeros(5, 1, 8, 8))
    assert out.shape == (5, 2)
    assert model.head.in_features == 2 * SPEC.width


def test_build_model_refuses_no_classes_and_unknown_arch() -> None:
    with pytest.raises(ValueError, match="at least one class"):
        build_model(SPEC.with_classes(()))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(ModelSpec("resnet9000", 1, 8, 8, 0.0, ("a",)))


def test_grow_head_keeps_old_rows_and_appends_new_ones() -> None:
    # given a model over ("3", "7") with non-trivial head weights
    model = trained_looking(SPEC)
    old_w = model.head.weight.detach().clone()
    old_b = model.head.bias.detach().clone()
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    # when a batch brings "7" (known) and "1", "9" (unseen)
    spec = grow_head(model, SPEC, ("1", "7", "9"))
    # then unseen classes are appended in the order given, old indices never move
    assert spec.classes == ("3", "7", "1", "9")
    assert spec.classes[: len(SPEC.classes)] == SPEC.classes
    assert model.head.out_features == 4 and model.head.in_features == old_w.shape[1]
    # and the old rows are bit-identical, the backbone is untouched
    assert torch.equal(model.head.weight[:2], old_w)
    assert torch.equal(model.head.bias[:2], old_b)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    # and the old logits are unchanged for any input
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        feats = model.eval().backbone(x)
        assert torch.allclose(model(x)[:, :2], feats @ old_w.T + old_b, atol=1e-5)
    # and the input spec was not modified (frozen dataclass, returned anew)
    assert SPEC.classes == ("3", "7")


def test_grow_head_result_is_trainable() -> None:
    model = trained_looking(SPEC)
    grow_head(model, SPEC, ("5",))
    assert model.head.weight.requires_grad and model.head.bias.requires_grad
    assert any(p is model.head.weight for p in model.parameters())


def test_grow_head_with_only_known_classes_is_a_no_op() -> None:
    model = trained_looking(SPEC)
    head = model.head
    spec = grow_head(model, SPEC, ("7", "3"))
    assert spec == SPEC
    assert model.head is head and model.head.out_features == 2


def test_label_indices_maps_names_and_unknown_to_minus_one() -> None:
    classes = ("3", "7", "1")
    labels = np.array(["7", "1", "x", "3", "7"])
    idx = label_indices(labels, classes)
    assert idx.dtype == np.int64
    assert idx.tolist() == [1, 2, -1, 0, 1]
    assert label_indices(np.array([], dtype=str), classes).shape == (0,)


def test_label_indices_compares_as_strings() -> None:
    # integer labels from a numpy array match their string class names
    assert label_indices(np.array([3, 7, 5]), ("3", "7")).tolist() == [0, 1, -1]


def test_preprocess_maps_uint8_nhwc_to_float_nchw_in_minus_one_one() -> None:
    # given uint8 images (N,H,W,C) with known corner values
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    images[0, 0, 0, 0] = 255
    images[1, 2, 3, 1] = 127
    original = images.copy()
    x = preprocess(torch.from_numpy(images))
    # then float (N,C,H,W) in [-1, 1]
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert x.min().item() == -1.0
    assert x[0, 0, 0, 0].item() == 1.0
    assert x[1, 1, 2, 3].item() == pytest.approx(127 / 127.5 - 1)
    # and the caller's array is untouched
    assert np.array_equal(images, original)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_group_norm_models_keep_no_running_statistics(arch: str) -> None:
    spec = ModelSpec(
        arch, in_channels=1, image_size=16, width=9, dropout=0.0, classes=("a", "b"), norm="group"
    )
    model = build_model(spec)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any("running" in k for k in model.state_dict())
    assert model.eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 2)
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_a_spec_written_before_norm_existed_loads_as_batch_norm() -> None:
    old = {k: v for k, v in SPEC.to_json().items() if k != "norm"}
    assert ModelSpec.from_json(old).norm == "batch"
