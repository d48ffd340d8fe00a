"""The one typed shape of a cycle's numbers, from metrics.json to the registry's tags to the table.

`CycleMetrics` is what the evaluate stage writes (metrics.json); `Headline` is the part every
version carries as tags and every outcome reports: each model's accuracy on old, new and all data.
Fields added after the first metrics.json files were written read back empty from those files.
Plain dataclasses and JSON: no torch, so `ratchet status` reads them cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal, cast

# The verdict vocabulary, one word per meaning: the gate's call on a candidate, and what was done
# about it (a dry run marks a passing candidate challenger instead of promoting it).
Verdict = Literal["promote", "reject"]
Action = Literal["promoted", "rejected", "challenger"]

Split = Literal["old", "new", "all"]
Model = Literal["champion", "candidate"]
SPLITS: tuple[Split, ...] = ("old", "new", "all")
MODELS: tuple[Model, ...] = ("champion", "candidate")
GateNumbers = dict[str, dict[str, float | None]]  # check name -> its measurements


@dataclass(frozen=True)
class SplitMetrics:
    accuracy: float
    n: int
    correct: int
    per_class: dict[str, float]  # accuracy per true class name

    @staticmethod
    def from_json(raw: Mapping[str, object]) -> SplitMetrics:
        per_class = cast(Mapping[str, float], raw["per_class"])
        return SplitMetrics(
            accuracy=float(cast(float, raw["accuracy"])),
            n=int(cast(int, raw["n"])),
            correct=int(cast(int, raw["correct"])),
            per_class={str(k): float(v) for k, v in per_class.items()},
        )


@dataclass(frozen=True)
class ModelMetrics:
    old: SplitMetrics | None  # None when there is no old data yet (the first cycle)
    new: SplitMetrics
    all: SplitMetrics
    # accuracy on each batch's held-out set, batch id -> accuracy, old batches first; empty where
    # the batch of each sample was not recorded
    per_batch: dict[str, float] = field(default_factory=dict)

    def split(self, name: Split) -> SplitMetrics | None:
        return {"old": self.old, "new": self.new, "all": self.all}[name]

    def accuracies(self) -> Accuracies:
        return Accuracies(*(s.accuracy if (s := self.split(name)) else None for name in SPLITS))

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @staticmethod
    def from_json(raw: Mapping[str, object]) -> ModelMetrics:
        def part(name: str) -> SplitMetrics | None:
            value = raw.get(name)
            return SplitMetrics.from_json(cast(Mapping[str, object], value)) if value else None

        new, every = part("new"), part("all")
        assert new is not None and every is not None
        per_batch = cast(Mapping[str, float], raw.get("per_batch") or {})
        return ModelMetrics(
            old=part("old"), new=new, all=every, per_batch={str(k): float(v) for k, v in per_batch.items()}
        )


@dataclass(frozen=True)
class Confusion:
    """Counts of (true class, predicted class) pairs: rows are true classes, columns predictions."""

    classes: tuple[str, ...] = ()  # row and column names, in this order
    counts: tuple[tuple[int, ...], ...] = ()  # counts[i][j]: samples of classes[i] predicted classes[j]

    def to_json(self) -> dict[str, object]:
        return {"classes": list(self.classes), "counts": [list(row) for row in self.counts]}

    @staticmethod
    def from_json(raw: Mapping[str, object]) -> Confusion:
        classes = cast(list[str], raw.get("classes") or [])
        counts = cast(list[list[int]], raw.get("counts") or [])
        return Confusion(
            classes=tuple(str(c) for c in classes), counts=tuple(tuple(int(n) for n in row) for row in counts)
        )


@dataclass(frozen=True)
class Accuracies:
    """One model's accuracy on each held-out split; None where it has none (no old data yet, or no
    champion)."""

    old: float | None = None
    new: float | None = None
    all: float | None = None

    def split(self, name: Split) -> float | None:
        return {"old": self.old, "new": self.new, "all": self.all}[name]


@dataclass(frozen=True)
class Headline:
    champion: Accuracies
    candidate: Accuracies

    def of(self, model: Model) -> Accuracies:
        return self.champion if model == "champion" else self.candidate

    def to_tags(self) -> dict[str, str]:
        """`metrics.<model>.<split>` -> four decimals, for the accuracies there are."""
        return {
            f"metrics.{model}.{split}": f"{value:.4f}"
            for model in MODELS
            for split in SPLITS
            if (value := self.of(model).split(split)) is not None
        }

    @staticmethod
    def from_tags(tag: Callable[[str], str]) -> Headline:
        def read(model: str) -> Accuracies:
            return Accuracies(*(float(raw) if (raw := tag(f"metrics.{model}.{s}")) else None for s in SPLITS))

        return Headline(champion=read("champion"), candidate=read("candidate"))

    def to_json(self) -> dict[str, dict[str, float | None]]:
        return {"champion": asdict(self.champion), "candidate": asdict(self.candidate)}


@dataclass(frozen=True)
class CycleMetrics:
    """metrics.json: both models on the same held-out data, and the gate's measurements."""

    candidate: ModelMetrics
    champion: ModelMetrics | None  # None when the cycle bootstraps the first model
    gate: GateNumbers
    # the candidate on all held-out data; classes in the candidate's order (then any it lacks)
    confusion: Confusion = Confusion()

    def headline(self) -> Headline:
        return Headline(
            champion=self.champion.accuracies() if self.champion else Accuracies(),
            candidate=self.candidate.accuracies(),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "candidate": self.candidate.to_json(),
            "champion": self.champion.to_json() if self.champion else None,
            "gate": self.gate,
            "confusion": self.confusion.to_json(),
        }

    @staticmethod
    def from_json(raw: Mapping[str, object]) -> CycleMetrics:
        champion = raw.get("champion")
        return CycleMetrics(
            candidate=ModelMetrics.from_json(cast(Mapping[str, object], raw["candidate"])),
            champion=ModelMetrics.from_json(cast(Mapping[str, object], champion)) if champion else None,
            gate=cast(GateNumbers, raw.get("gate") or {}),
            confusion=Confusion.from_json(cast(Mapping[str, object], raw.get("confusion") or {})),
        )
