"""joint: from scratch on every sample seen so far (the costly reference the others are held to).

The champion's class order is kept (indices never move), its weights are not.
"""

from __future__ import annotations

from ratchet.train.strategies.base import Strategy


class Joint(Strategy):
    name = "joint"
    fresh_start = True
    trains_on_all_seen = True


UNIT = Joint
