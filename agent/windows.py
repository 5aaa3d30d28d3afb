"""Windows of chat and the readings made from them: pure functions over data.

Nothing here does I/O or reads a clock: the caller passes every time in, so the rules can be
tested by feeding items and instants.

Windowing (`WindowPolicy`, `WindowBuilder`)
    Items (scorable messages: bots and ``!commands`` never reach a window, so a window is
    never empty) are added in arrival order with their time. A window closes when

    * it holds ``max_messages`` items (count windows, the prototype's lists of 10);
    * the clock passes the end of its time slot (time windows: slots of ``max_seconds``
      aligned to the builder's origin, normally the session start, so a timeline has even
      steps);
    * its first item is ``max_age`` seconds old (a quiet chat still yields readings);
    * the caller flushes the builder at stop.

    Window times: ``start`` is the first item's time and ``end`` the last item's time, except
    that with time windows a window that is the first of its slot starts at the slot's start,
    and a window closed by its slot boundary ends at the slot's end. So pure time windows are
    exactly ``[origin + k*max_seconds, origin + (k+1)*max_seconds]``.
    Times are made monotone: an item stamped earlier than the one before it (clocks of chat
    servers disagree a little) is taken at the earlier item's time, so ``start <= end`` and
    windows never overlap.

Keeping up (`sample_plan`, `uniform_sample`)
    When chat outruns the scorer, each pending window is scored on a uniform sample sized so
    the backlog clears within ``max_lag_seconds``; the reading records how many were scored.

Readings (`batch_id_for`, `make_reading`)
    A batch id is a hash of the window's message keys, so the same messages always give the
    same id whatever their order: after a crash the pipeline re-windows journaled messages and
    recognises batches already in the spool by that id.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

import numpy as np

from agent.errors import SettingsError
from agent.vocab import LABELS, Reading, dominant_label

T = TypeVar("T")

BATCH_ID_HEX_CHARS = 20
# A reading's times must print as `YYYY-MM-DD HH:MM:SS.fff`: 1970-01-01 up to the end of 9999.
LATEST_TIMESTAMP = 253402300799.0


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """When a window closes. At least one of `max_messages` and `max_seconds` must be set."""

    max_messages: int | None = 10
    max_seconds: float | None = None
    max_age: float = 30.0

    def __post_init__(self) -> None:
        if self.max_messages is None and self.max_seconds is None:
            raise SettingsError(
                "window: set window.max_messages, window.max_seconds or both (for example 10)"
            )
        if self.max_messages is not None and (
            isinstance(self.max_messages, bool) or self.max_messages < 1
        ):
            raise SettingsError(
                f"window.max_messages {self.max_messages!r} must be a whole number >= 1 "
                "(for example 10)"
            )
        if self.max_seconds is not None and not (
            math.isfinite(self.max_seconds) and self.max_seconds > 0
        ):
            raise SettingsError(
                f"window.max_seconds {self.max_seconds!r} must be a number of seconds > 0 "
                "(for example 10)"
            )
        if not (math.isfinite(self.max_age) and self.max_age > 0):
            raise SettingsError(
                f"window.max_age {self.max_age!r} must be a number of seconds > 0 (for example 30)"
            )


class CloseReason(StrEnum):
    COUNT = "count"  # reached max_messages
    SLOT = "slot"  # its time slot ended
    AGE = "age"  # first item older than max_age
    FLUSH = "flush"  # the caller flushed (stop)


@dataclass(frozen=True, slots=True)
class Window(Generic[T]):
    """A closed window: its items in arrival order, its time span and why it closed."""

    items: tuple[T, ...]
    start: float
    end: float
    reason: CloseReason


class WindowBuilder(Generic[T]):
    """Groups items into windows by `policy`; feed it with `add` and `tick`, drain with `flush`.

    `origin` aligns time slots (pass the session start); when None, the first item's time is
    the origin.
    """

    def __init__(self, policy: WindowPolicy, origin: float | None = None) -> None:
        self.policy = policy
        self._origin = origin
        self._items: list[T] = []
        self._first_t = 0.0
        self._last_t: float | None = None  # last item's (monotone) time, across windows
        self._slot: int | None = None  # slot index of the open window (time policy)
        self._starts_slot = False  # the open window is the first of its slot

    @property
    def pending(self) -> int:
        """Items in the open window."""
        return len(self._items)

    def add(self, item: T, t: float) -> list[Window[T]]:
        """Add one item received at `t`; return the windows this closes (oldest first).

        Windows already due at `t` (slot ended, too old) close before the item joins.
        """
        if self._last_t is not None:
            t = max(t, self._last_t)
        if self._origin is None:
            self._origin = t
        closed = self.tick(t)
        if not self._items:
            self._first_t = t
            if self.policy.max_seconds is not None:
                slot = self._slot_of(t)
                self._starts_slot = slot != self._slot
                self._slot = slot
        self._items.append(item)
        self._last_t = t
        if self.policy.max_messages is not None and len(self._items) >= self.policy.max_messages:
            closed.append(self._close(CloseReason.COUNT, end=t))
        return closed

    def tick(self, now: float) -> list[Window[T]]:
        """Close the open window if its slot has ended or it is `max_age` old at `now`."""
        if not self._items:
            return []
        if self.policy.max_seconds is not None and self._slot is not None:
            slot_end = self._slot_start(self._slot + 1)
            if now >= slot_end:
                return [self._close(CloseReason.SLOT, end=slot_end)]
        if now - self._first_t >= self.policy.max_age:
            assert self._last_t is not None
            return [self._close(CloseReason.AGE, end=self._last_t)]
        return []

    def drain(self) -> tuple[T, ...]:
        """Take the open window's items without closing it as a window (its times are not
        usable: the caller sets the items aside and starts a new builder)."""
        items, self._items = tuple(self._items), []
        return items

    def flush(self) -> list[Window[T]]:
        """Close the open window, whatever its size or age (at stop)."""
        if not self._items:
            return []
        assert self._last_t is not None
        return [self._close(CloseReason.FLUSH, end=self._last_t)]

    def _slot_of(self, t: float) -> int:
        assert self._origin is not None and self.policy.max_seconds is not None
        return math.floor((t - self._origin) / self.policy.max_seconds)

    def _slot_start(self, slot: int) -> float:
        assert self._origin is not None and self.policy.max_seconds is not None
        return self._origin + slot * self.policy.max_seconds

    def _close(self, reason: CloseReason, end: float) -> Window[T]:
        start = self._first_t
        if self._starts_slot and self._slot is not None:
            start = self._slot_start(self._slot)
        window = Window(items=tuple(self._items), start=start, end=end, reason=reason)
        self._items = []
        return window


def batch_id_for(keys: Iterable[str]) -> str:
    """A deterministic id for a window: the same message keys in any order give the same id."""
    ordered = sorted(set(keys))
    if not ordered:
        raise ValueError("a batch needs at least one message key")
    digest = hashlib.sha256()
    for key in ordered:
        encoded = key.encode("utf-8", "surrogatepass")
        # Length-prefixed, so no choice of keys can collide by concatenation.
        digest.update(len(encoded).to_bytes(4, "big"))
        digest.update(encoded)
    return digest.hexdigest()[:BATCH_ID_HEX_CHARS]


def sample_plan(
    window_sizes: Sequence[int], scorer_rate: float, max_lag_seconds: float
) -> list[int]:
    """How many messages of each pending window to score so the backlog clears in time.

    `scorer_rate` is messages per second the scorer manages (``math.inf`` when unknown yet).
    While the backlog fits in ``scorer_rate * max_lag_seconds`` every window is scored in
    full. Otherwise the budget is shared in proportion to window sizes (largest remainders
    get the leftovers), with at least one message per non-empty window: a window always
    yields a reading, so with more windows than budget the lag exceeds the bound by that
    floor and no more.
    """
    if not scorer_rate > 0:
        raise ValueError(f"scorer_rate must be > 0 messages per second, got {scorer_rate!r}")
    if not max_lag_seconds > 0:
        raise ValueError(f"max_lag_seconds must be > 0, got {max_lag_seconds!r}")
    if any(size < 0 for size in window_sizes):
        raise ValueError(f"window sizes must be >= 0, got {list(window_sizes)!r}")
    total = sum(window_sizes)
    budget_f = scorer_rate * max_lag_seconds
    if total <= budget_f:
        return list(window_sizes)
    budget = math.floor(budget_f)
    fraction = budget / total
    plan = [min(size, max(1, math.floor(size * fraction))) if size else 0 for size in window_sizes]
    # Raising small windows to their floor of one can overshoot the budget: take the excess
    # back from the largest shares (earlier windows keep theirs on ties).
    excess = sum(plan) - max(budget, sum(1 for size in window_sizes if size))
    while excess > 0:
        largest = max(range(len(plan)), key=lambda i: (plan[i], -i))
        plan[largest] -= 1
        excess -= 1
    leftover = budget - sum(plan)
    if leftover > 0:
        # Largest fractional share first; earlier windows win ties (deterministic).
        order = sorted(
            (i for i, size in enumerate(window_sizes) if plan[i] < size),
            key=lambda i: (
                -(window_sizes[i] * fraction - math.floor(window_sizes[i] * fraction)),
                i,
            ),
        )
        for i in order:
            if leftover == 0:
                break
            plan[i] += 1
            leftover -= 1
    return plan


def uniform_sample(items: Sequence[T], k: int, seed: str) -> list[T]:
    """`k` items drawn uniformly without replacement, in their original order.

    Seeded by a string (the batch id), so a re-run after a crash picks the same sample on
    any machine (`random.Random` hashes string seeds with SHA-512, not `hash()`).
    """
    if k < 0:
        raise ValueError(f"sample size must be >= 0, got {k}")
    if k >= len(items):
        return list(items)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in chosen]


def validate_displayed(displayed: Iterable[str]) -> tuple[str, ...]:
    """The displayed labels as a tuple, or SettingsError naming the unknown one."""
    labels = tuple(displayed)
    if not labels:
        raise SettingsError("display.labels is empty: list at least one of " + ", ".join(LABELS))
    for label in labels:
        if label not in LABELS:
            raise SettingsError(
                f"display.labels: {label!r} is not a model label; use some of " + ", ".join(LABELS)
            )
    return labels


def make_reading(
    session_id: str,
    platform: str,
    channel: str,
    batch_id: str,
    seq: int,
    window_start: float,
    window_end: float,
    message_count: int,
    scores: np.ndarray,
    displayed: tuple[str, ...],
    model_id: str,
    agent_version: str,
    via: str = "",
) -> Reading:
    """One reading from the scores (shape ``(k, len(LABELS))``) of the k scored messages.

    Windows only ever hold scorable messages, so k >= 1; an empty score array is a bug in
    the caller and raises ValueError. `scored_count` is k; it is below `message_count` only
    when the window was sampled to keep up.
    """
    displayed = validate_displayed(displayed)
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(LABELS):
        raise ValueError(f"scores must have shape (k, {len(LABELS)}), got {matrix.shape}")
    scored_count = matrix.shape[0]
    if scored_count < 1:
        raise ValueError("a reading needs at least one scored message (windows are never empty)")
    if scored_count > message_count:
        raise ValueError(f"scored {scored_count} messages out of only {message_count}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("scores contain NaN or infinity")
    if not (0.0 <= window_start <= LATEST_TIMESTAMP and 0.0 <= window_end <= LATEST_TIMESTAMP):
        raise ValueError(
            f"window start and end must be times between 1970 and 9999, got "
            f"{window_start!r} and {window_end!r}"
        )
    if window_end < window_start:
        raise ValueError(f"window ends ({window_end}) before it starts ({window_start})")
    means = tuple(float(x) for x in matrix.mean(axis=0))
    return Reading(
        session_id=session_id,
        platform=platform,
        channel=channel,
        batch_id=batch_id,
        seq=seq,
        window_start=window_start,
        window_end=window_end,
        message_count=message_count,
        scored_count=scored_count,
        scores=means,
        dominant=dominant_label(means, displayed),
        model_id=model_id,
        agent_version=agent_version,
        via=via,
    )
