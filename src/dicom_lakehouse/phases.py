"""Timing a job's phases into its summary's ``phase_seconds``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

__all__ = ["timed"]


@contextlib.contextmanager
def timed(phase_seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time to ``phase_seconds[name]`` (phases may repeat)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        spent = time.perf_counter() - started
        phase_seconds[name] = round(phase_seconds.get(name, 0.0) + spent, 3)
