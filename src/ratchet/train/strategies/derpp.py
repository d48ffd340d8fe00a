"""derpp: dark experience replay++ (Buzzega et al., 2020). Replay that also keeps, with each memory
sample, the outputs the model gave it, and pulls today's outputs on it towards them:

    loss = CE(new rows) + derpp_beta * CE(memory rows) + derpp_alpha * MSE(memory rows' logits, recorded)

A sample enters the memory at the end of the cycle that trained on it, so its outputs are recorded
then, by that cycle's candidate. They are found again by the sample's bytes, because the memory
subsamples and reorders itself. Outputs recorded before the head grew cover fewer classes (stored
as NaN). As a target, a class added since scores the row's lowest recorded output: the model did
not know it, so it was no likelier than the least likely class it knew. (DER++ proper records a
fixed head whose unseen classes the loss already pushed down; a growing head has no such output,
and leaving it free lets the new classes take the old samples.) Kept between cycles as derpp.pt:
stored.digests (N, 16) uint8 and stored.logits (N, K) float32.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from ratchet.train.checkpoint import StrategyState
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import preprocess
from ratchet.train.strategies.base import Run, Step, Strategy


def _digests(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]


class DerPlusPlus(Strategy):
    name = "derpp"

    def memory_share(self) -> float:
        return self.params.replay_fraction

    def setup(self, run: Run) -> None:
        previous = run.champion.states.get(self.name) if run.champion is not None else None
        self.recorded: dict[bytes, torch.Tensor] = {}
        if previous is not None:
            stored = previous["stored"]
            for digest, row in zip(stored["digests"].numpy(), stored["logits"], strict=True):
                self.recorded[digest.tobytes()] = row
        self.targets = self._table(_digests(run.memory.images), run.spec.num_classes, fill=True).to(
            run.device
        )

    def _table(self, digests: list[bytes], num_classes: int, fill: bool) -> torch.Tensor:
        """Recorded outputs per memory row, NaN where none; classes added since are NaN too, or the
        row's lowest recorded output with `fill`."""
        table = torch.full((len(digests), num_classes), float("nan"))
        for i, digest in enumerate(digests):
            row = self.recorded.get(digest)
            if row is not None:
                known = row[~torch.isnan(row)]
                table[i, : len(known)] = known
                if fill:
                    table[i, len(known) :] = known.min()
        return table

    def data_loss(self, step: Step) -> torch.Tensor | None:
        if step.mem_rows is None:
            return None  # nothing in the memory yet: plain cross-entropy
        n = step.n_new
        logits = step.logits.float()
        loss = F.cross_entropy(logits[:n], step.labels[:n])
        loss = loss + self.params.derpp_beta * F.cross_entropy(logits[n:], step.labels[n:])
        target = self.targets[step.mem_rows.to(self.targets.device)]
        known = ~torch.isnan(target)
        # unknown entries take the prediction itself (zero error, and no NaN in the gradient)
        target = torch.where(known, target, logits[n:].detach())
        mse = (logits[n:] - target).pow(2).sum() / known.sum().clamp(min=1)
        return loss + self.params.derpp_alpha * mse

    def finish(self, run: Run, generator: torch.Generator, memory: ReplayMemory) -> StrategyState:
        digests = _digests(memory.images)
        table = self._table(digests, run.spec.num_classes, fill=False)
        fresh = [i for i, digest in enumerate(digests) if digest not in self.recorded]
        with torch.no_grad():
            for start in range(0, len(fresh), 1024):
                rows = fresh[start : start + 1024]
                images = torch.from_numpy(np.ascontiguousarray(memory.images[rows])).to(run.device)
                table[rows] = run.model(preprocess(images)).float().cpu()
        packed = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 16)
        return {"stored": {"digests": torch.from_numpy(packed.copy()), "logits": table}}


UNIT = DerPlusPlus
