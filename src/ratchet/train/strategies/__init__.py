"""The strategy registry: every continual-learning strategy by name, and nothing else knows the names.

A strategy is one module of this package (`ratchet.train.strategies.<name>`) holding one subclass
of `base.Strategy`. This registry is what config validation, the CLI help, the stages and the
benchmarks read; it imports no torch (`ratchet --help` and params checks stay fast), and a unit is
imported only when a run needs it (`base.load`). Adding a strategy: its module, one line here, its
knobs in `ratchet.config.TrainParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ratchet.errors import InputError


@dataclass(frozen=True)
class Entry:
    summary: str  # one line for the CLI help and the docs
    alone: bool = False  # it does not combine with others (it decides where the weights come from)
    excludes: tuple[str, ...] = ()  # strategies it cannot be combined with (both own the data loss)


# The order is the order units act in a combination (their extra losses add up in this order).
REGISTRY: dict[str, Entry] = {
    "finetune": Entry("the new samples only (the naive baseline)", alone=True),
    "joint": Entry("from scratch on every sample seen so far (the costly reference)", alone=True),
    "replay": Entry("each minibatch mixes in a class-balanced memory of earlier samples"),
    "derpp": Entry(
        "replay that also matches the outputs recorded with each memory sample (DER++)",
        excludes=("replay",),
    ),
    "lwf": Entry("distil the champion's outputs on every minibatch (learning without forgetting)"),
    "ewc": Entry("online elastic weight consolidation towards the champion's weights"),
    "transfer": Entry("head first, then unfreeze blocks last-first with lower rates for earlier layers"),
}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def parse(name: str) -> tuple[str, ...]:
    """ "replay+lwf" -> ("replay", "lwf"), in registry order; one InputError line when invalid."""
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in REGISTRY]
    if unknown or not name:
        raise InputError(f"unknown strategy {name!r} (known: {', '.join(NAMES)}, combined with +)")
    if len(parts) > 1:
        for part in parts:
            if REGISTRY[part].alone:
                raise InputError(f"strategy {part} does not combine with others: {name!r}")
            clash = [p for p in REGISTRY[part].excludes if p in parts]
            if clash:
                raise InputError(f"strategy {part} does not combine with {clash[0]}: {name!r}")
    return tuple(n for n in NAMES if n in parts)


def check(name: str) -> str:
    """`name` if it is a valid strategy (or combination), else one InputError line."""
    parse(name)
    return name


def help_text() -> str:
    return "; ".join(f"{name}: {entry.summary}" for name, entry in REGISTRY.items()) + (
        "; or several joined by + (e.g. replay+lwf)"
    )
