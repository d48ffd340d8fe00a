"""How a use case runs its steps: directly, or (in a Prefect flow) each as a task of its name.

The cycle and the inbox are written once, as plain calls through a `Steps`: `ratchet retrain` and
`ratchet inbox` on a machine with no Prefect API run them `directly`, in seconds; the flows in
`flows/` pass a `Steps` that makes each call a Prefect task, so a scheduled or deployed run shows
the same steps, by the same names, in the Prefect UI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Steps(Protocol):
    def __call__(self, name: str, fn: Callable[P, R], /) -> Callable[P, R]: ...


def directly(name: str, fn: Callable[P, R], /) -> Callable[P, R]:
    return fn


@dataclass
class Timed:
    """The steps of `inner`, each timed: wall seconds by step name, in the order they ran."""

    inner: Steps = directly
    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str, fn: Callable[P, R], /) -> Callable[P, R]:
        step = self.inner(name, fn)

        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return step(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return timed
