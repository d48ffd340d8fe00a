"""finetune: the champion trained on the new samples only, nothing added (the naive baseline)."""

from __future__ import annotations

from ratchet.train.strategies.base import Strategy


class Finetune(Strategy):
    name = "finetune"


UNIT = Finetune
