"""What the benchmarks share: the Fashion-MNIST training params, the device label, result writing.

The params are ratchet's defaults with the few changes Fashion-MNIST needs, as plain dataclasses,
because the benchmarks must run where only torch is installed (the GPU machine): no YAML, no MLflow.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ratchet.config import TrainParams
from ratchet.train.model import ModelSpec

RESULTS = Path(__file__).resolve().parent / "results"

FASHION_SPEC = ModelSpec(arch="small_cnn", in_channels=1, image_size=28, width=32, dropout=0.1, classes=())

# the training defaults, with what Fashion-MNIST's 28x28 images and larger batches need
FASHION_TRAIN = replace(
    TrainParams(),
    num_epochs=4,
    batch_size=128,
    lr=0.003,
    deterministic=False,
    threads=0,  # every core: a benchmark measures the machine, not a repeatable workspace
    replay_memory_per_class=200,
    replay_fraction=0.375,  # the most replay that stays under 0.5x joint's images: (1 + 4/(1-f)) / 15
    transfer_head_epochs=1,
)


def device_label() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_slug() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def du(path: Path) -> int:
    """Bytes of a file, or of every file under a directory; 0 for nothing there."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def write_results(
    stem: str,
    doc: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """results/<stem>.json, .md and .png, and the markdown on stdout."""
    write_json(RESULTS / f"{stem}.json", doc)
    text = markdown(doc)
    (RESULTS / f"{stem}.md").write_text(text)
    plot(doc, RESULTS / f"{stem}.png")
    print(text)
