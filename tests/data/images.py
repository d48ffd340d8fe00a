"""Image folders for the data tests: small random RGB PNGs, one subfolder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ratchet.config import DataParams

PARAMS = DataParams(
    image_size=8, channels=3, held_out_fraction=0.5, max_file_bytes=20_000, max_image_pixels=10_000
)


def make_folder(root: Path, spec: dict[str, list[int]]) -> Path:
    for name, seeds in spec.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{seed}.png")
    return root
