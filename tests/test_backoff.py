"""The one backoff generator: growth, cap, jitter bounds, never zero."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import backoff, say_seconds


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_grows_by_factor_up_to_the_maximum_without_jitter() -> None:
    delays = list(itertools.islice(backoff(1.0, 2.0, 10.0, jitter=0.0), 6))
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_only_shortens_and_never_reaches_zero() -> None:
    # rng.random() = 1.0 would be the worst case of a [0, 1) draw; it still leaves half.
    delays = list(itertools.islice(backoff(2.0, 3.0, 60.0, jitter=0.5, rng=Fixed(1.0)), 4))
    assert delays == [1.0, 3.0, 9.0, 27.0]


@given(
    initial=st.floats(0.001, 100),
    factor=st.floats(1, 10),
    extra=st.floats(0, 1000),
    jitter=st.floats(0, 0.999),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_positive_and_within_the_cap(
    initial: float, factor: float, extra: float, jitter: float, seed: int
) -> None:
    maximum = initial + extra
    for delay in itertools.islice(
        backoff(initial, factor, maximum, jitter, random.Random(seed)), 200
    ):
        assert initial * (1 - jitter) * 0.999999 <= delay <= maximum


@pytest.mark.parametrize(
    "args",
    [(0.0, 2.0, 10.0, 0.5), (1.0, 0.5, 10.0, 0.5), (5.0, 2.0, 1.0, 0.5), (1.0, 2.0, 10.0, 1.0)],
)
def test_bad_parameters_are_refused(args: tuple[float, float, float, float]) -> None:
    with pytest.raises(ValueError):
        next(backoff(*args))


def test_waits_are_said_in_whole_seconds_never_zero() -> None:
    assert say_seconds(0.04) == "1 s"
    assert say_seconds(11.2) == "12 s"
    assert say_seconds(12.0) == "12 s"
