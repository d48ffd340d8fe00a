"""A model's scores on a held-out set, kept so that a later cycle need not compute them again.

Each cycle's candidate is scored on every held-out set; when it is promoted it is the next cycle's
champion, whose scores on all the sets it was scored on are then already known. So a cycle computes
the candidate's scores on every set and the champion's only on sets it has not seen: the new ones.

A file here is named by everything that decides the scores' bits: the model's content (its spec and
weights, the files that make the network), the set's content (`BatchRef.key`), the CPU threads the
sums are split over, the evaluation batch size, the torch and ratchet code that computes them, and
the CPU's architecture and vector extensions (which kernels torch runs).
The scores are exactly what computing them now would give, so a metric never depends on whether the
cache was warm; an unreadable file is computed again.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ratchet.stages.inputs import code_version
from ratchet.train.checkpoint import SPEC_FILE, WEIGHTS_FILE

MODEL_FILES = (SPEC_FILE, WEIGHTS_FILE)  # what a model's predictions depend on (not memory or strategy state)


def model_content(checkpoint_dir: Path) -> str:
    """sha256 over the files that make the network: the same weights score the same wherever they
    were copied from (the registry, DVC, the train stage's output)."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        digest.update(name.encode() + b"\0" + hashlib.sha256((checkpoint_dir / name).read_bytes()).digest())
    return digest.hexdigest()


def context(batch_size: int) -> str:
    """What decides the scores' bits besides the model and the samples, as one short hash."""
    parts = [f"threads={torch.get_num_threads()}", f"batch={batch_size}", f"torch={torch.__version__}"]
    parts.append(f"ratchet={code_version().source}")
    # the kernels torch picks for this CPU: a workspace copied to another machine scores anew there
    parts.append(f"cpu={platform.machine()}/{torch.backends.cpu.get_cpu_capability()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass
class PredictionCache:
    """Scores by (model content, set key) under `directory`, for one evaluation `context`.

    `computed` lists (model content, set key) of each score computed rather than read: what a
    cycle paid for."""

    directory: Path | None  # None: nothing kept, every score computed
    context: str
    computed: list[tuple[str, str]] = field(default_factory=list)

    def _path(self, model: str, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / self.context / model[:32] / f"{key}.npy"

    def scores(self, model: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self._path(model, key)
        if path is not None and path.is_file():
            try:
                cached: np.ndarray = np.load(path, allow_pickle=False)
                return cached
            except (OSError, ValueError, EOFError):
                pass  # unreadable: computed again below, and replaced
        scores = compute()
        self.computed.append((model, key))
        if path is not None:
            self.keep(path, scores)
        return scores

    @staticmethod
    def keep(path: Path, scores: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, scores, allow_pickle=False)
        tmp.replace(path)  # whole or not at all
