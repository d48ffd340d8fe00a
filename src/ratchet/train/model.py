"""The model zoo: a small CNN built from a JSON-able spec, and growing its head for new classes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model before loading its weights (stored as spec.json)."""

    arch: str
    in_channels: int
    image_size: int
    width: int
    dropout: float
    classes: tuple[str, ...]  # output index i predicts classes[i]; old indices never move
    norm: str = "batch"  # batch | group (GroupNorm keeps no running statistics that drift with a domain)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        return d

    @staticmethod
    def from_json(d: dict[str, object]) -> ModelSpec:
        fields = {f.name for f in dataclasses.fields(ModelSpec)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"model spec has unknown keys: {sorted(unknown)}")
        classes = d["classes"]
        assert isinstance(classes, list)
        return ModelSpec(**{**d, "classes": tuple(str(c) for c in classes)})  # type: ignore[arg-type]

    def with_classes(self, classes: tuple[str, ...]) -> ModelSpec:
        return dataclasses.replace(self, classes=classes)


def _groups(channels: int) -> int:
    """About four channels per group, at most 32 groups, and always a divisor of `channels`."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return lambda channels: nn.GroupNorm(_groups(channels), channels)
    raise ValueError(f"unknown norm {kind!r} (known: batch, group)")


def _block(c_in: int, c_out: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: enough for 8x8 to 32x32 images, fast on CPU."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        w = spec.width
        norm = norm_layer(spec.norm)
        self.backbone = nn.Sequential(
            _block(spec.in_channels, w, norm),
            _block(w, 2 * w, norm),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(spec.dropout),
        )
        self.head = nn.Linear(2 * w, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out

    def blocks(self) -> list[nn.Module]:
        """Feature blocks from input to head: transfer learning unfreezes them last first."""
        return [self.backbone[0], self.backbone[1]]


class ResNet18(nn.Module):
    """torchvision's resnet18 with the head replaced; a small-image stem below 64 pixels.

    The torchvision network keeps its parameter names under `net.`, so a local torchvision
    state_dict loads into it (`load_backbone`). No weights are ever downloaded.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None, norm_layer=norm_layer(spec.norm))
        small = spec.image_size < 64
        if small or spec.in_channels != 3:
            # 7x7/2 + maxpool would shrink a 28x28 image to 7x7 before the first block
            k, stride, pad = (3, 1, 1) if small else (7, 2, 3)
            net.conv1 = nn.Conv2d(spec.in_channels, 64, k, stride=stride, padding=pad, bias=False)
            net.bn1 = norm_layer(spec.norm)(64)
        if small:
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(512, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.dropout(self.net(x)))
        return out

    def blocks(self) -> list[nn.Module]:
        n = self.net
        return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4]


Classifier = SmallCNN | ResNet18
ARCHS: dict[str, type[SmallCNN] | type[ResNet18]] = {"small_cnn": SmallCNN, "resnet18": ResNet18}


def build_model(spec: ModelSpec) -> Classifier:
    if spec.arch not in ARCHS:
        raise ValueError(f"unknown architecture {spec.arch!r} (known: {', '.join(ARCHS)})")
    if spec.num_classes == 0:
        raise ValueError("a model needs at least one class")
    return ARCHS[spec.arch](spec)


def load_backbone(model: Classifier, path: str) -> list[str]:
    """Load a local state_dict into the feature layers (weights-only); returns the keys that did not fit.

    A torchvision resnet18 file loads into ResNet18 (its `fc.*` head is dropped: classes differ);
    a ratchet weights.pt loads into the same architecture, head excepted.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}
    target = (
        model.net if isinstance(model, ResNet18) and not any(k.startswith("net.") for k in state) else model
    )
    mine = target.state_dict()
    usable = {k: v for k, v in state.items() if k in mine and mine[k].shape == v.shape}
    target.load_state_dict(usable, strict=False)
    return sorted(set(state) - set(usable))


def grow_head(model: Classifier, spec: ModelSpec, new_classes: tuple[str, ...]) -> ModelSpec:
    """Append output units for classes the model has never seen; existing rows keep their weights.

    Old class indices never move, so the champion's predictions stay comparable with the candidate's.
    """
    added = tuple(c for c in new_classes if c not in spec.classes)
    if not added:
        return spec
    old = model.head
    new = nn.Linear(old.in_features, old.out_features + len(added)).to(old.weight.device)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    model.head = new
    return spec.with_classes(spec.classes + added)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W,C) -> float (N,C,H,W) in [-1, 1]. The one place pixels become model input."""
    return images.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0


def label_indices(labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Class names -> indices into `classes`; names the model doesn't know map to -1."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(str(label), -1) for label in labels], dtype=np.int64)
