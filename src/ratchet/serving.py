"""Inference for a registered version through `mlflow.pyfunc.load_model` (models-from-code).

The registry stores a checkpoint directory (weights, spec, replay memory) as a pyfunc artifact;
this class loads it weights-only, so nothing in the registry is ever unpickled.

This module and the ratchet modules it reaches are stored with every version (`registry.SERVING_MODULES`)
and run where only the version's pip requirements (`registry.SERVING_PACKAGES`) are installed: they
import nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc.model import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"
# images per forward pass, unless predict's params say otherwise: memory stays bounded by the
# minibatch, not by how many images one call hands over (and on a CPU a pass of 256 is faster
# than larger ones: its activations stay in cache)
BATCH_SIZE = 256
# glibc's mallopt parameter, and the size from which blocks are mmapped (see `_bound_heap`)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def _bound_heap() -> None:
    """Keep large blocks out of the heap, on glibc. By default glibc raises its mmap threshold to
    the largest block freed so far, so after the first pass every pass's activations (megabytes)
    come from the heap, where freed blocks fragment: predicting 100,000 images then grew RSS by
    110-900 MB above the loaded model, varying run to run (2-core CPU). A fixed threshold keeps
    them mmapped and handed back when freed: 73 MB, every run. A process-wide setting, made once
    the model is loaded into a process; elsewhere than glibc nothing changes."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class RatchetClassifier(PythonModel):
    """predict(uint8 images (N,H,W,C)) -> DataFrame[label, class_index, confidence].

    Through pyfunc the registered signature enforces (N,H,W,C); called directly, (N,H,W) also works.
    `params={"batch_size": n}` sets the images per forward pass (default `BATCH_SIZE`).
    """

    def load_context(self, context: Any) -> None:
        from ratchet.train.checkpoint import load_checkpoint

        self.checkpoint = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))
        _bound_heap()

    # np.ndarray is a hint MLflow accepts without deriving a schema to enforce: the shape check is ours
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd
        import torch

        from ratchet.train.model import preprocess

        images = np.asarray(model_input)
        spec = self.checkpoint.spec
        if images.ndim == 3:
            images = images[..., None]
        expected = (spec.image_size, spec.image_size, spec.in_channels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected uint8 images of shape (N, {', '.join(map(str, expected))})")
        size = int((params or {}).get("batch_size", BATCH_SIZE))
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, not {size}")
        model = self.checkpoint.model.eval()
        indices, confidences = [np.empty(0, np.int64)], [np.empty(0, np.float32)]
        with torch.no_grad():
            for start in range(0, len(images), size):
                chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + size]))
                confidence, index = torch.softmax(model(preprocess(chunk)).float(), dim=1).max(dim=1)
                indices.append(index.numpy())
                confidences.append(confidence.numpy())
        index_all = np.concatenate(indices)
        return pd.DataFrame(
            {
                "label": [spec.classes[i] for i in index_all.tolist()],
                "class_index": index_all,
                "confidence": np.concatenate(confidences),
            }
        )
