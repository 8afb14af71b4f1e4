"""Where a training step's time goes: `with phase("generate"): ...` adds the block's wall seconds
to the step's total for that phase; the loop logs `take()` as `time_<phase>` metrics."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

_seconds: defaultdict[str, float] = defaultdict(float)


@contextmanager
def phase(name: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        _seconds[name] += time.perf_counter() - began


def take() -> dict[str, float]:
    """The seconds per phase since the last call, as `time_<phase>` metrics; resets them."""
    out = {f"time_{k}": v for k, v in _seconds.items()}
    _seconds.clear()
    return out
