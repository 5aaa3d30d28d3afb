"""How long to wait before trying again: one pure generator for every retry loop.

Used by the chat sources (reconnecting) and the uploader (retrying S3). Pure in the manner of
python-websockets' `client.backoff()`: no clock, no sleep, randomness injected, so a test reads
the exact delays. The caller sleeps; after a success it starts a fresh generator.

    delay n = min(maximum, initial * factor ** n), then jittered down by up to `jitter` of it

Jitter spreads many agents that lost the same server so they do not return in step; it only
ever shortens a delay, and never to zero: `jitter` < 1 and `initial` > 0 keep every delay at
least `initial * (1 - jitter)`, so no loop ever spins or says "retrying in 0.0 s".
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Protocol


class Random(Protocol):
    def random(self) -> float: ...


def backoff(
    initial: float = 1.0,
    factor: float = 2.0,
    maximum: float = 60.0,
    jitter: float = 0.5,
    rng: Random | None = None,
) -> Iterator[float]:
    """Delays in seconds, growing from `initial` by `factor` up to `maximum`, for ever."""
    if not (math.isfinite(initial) and initial > 0):
        raise ValueError(f"initial delay must be a number > 0, got {initial!r}")
    if not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"backoff factor must be a number >= 1, got {factor!r}")
    if not (math.isfinite(maximum) and maximum >= initial):
        raise ValueError(f"maximum delay must be a number >= initial ({initial}), got {maximum!r}")
    if not (0 <= jitter < 1):
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    draw = rng if rng is not None else random.Random()
    delay = initial
    while True:
        yield delay * (1.0 - jitter * draw.random())
        # Once at the cap, stay there: no float overflow after thousands of retries.
        delay = min(maximum, delay * factor)


def say_seconds(delay: float) -> str:
    """A wait as a person reads it: whole seconds, rounded up, never "0 s"."""
    return f"{max(1, math.ceil(delay))} s"
