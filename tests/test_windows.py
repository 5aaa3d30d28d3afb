"""Windows, sampling and readings: pure functions fed with items and instants."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.errors import SettingsError
from agent.vocab import DEFAULT_DISPLAYED, LABELS
from agent.windows import (
    CloseReason,
    Window,
    WindowBuilder,
    WindowPolicy,
    batch_id_for,
    make_reading,
    sample_plan,
    uniform_sample,
    validate_displayed,
)


def feed(builder: WindowBuilder[str], stamped: list[tuple[str, float]]) -> list[Window[str]]:
    closed: list[Window[str]] = []
    for item, t in stamped:
        closed += builder.add(item, t)
    return closed


# ------------------------------------------------------------------ policies


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_messages": None, "max_seconds": None},
        {"max_messages": 0},
        {"max_seconds": -1.0},
        {"max_seconds": math.nan},
        {"max_age": 0.0},
    ],
)
def test_bad_policy_is_a_settings_error(kwargs: dict[str, float | None]) -> None:
    with pytest.raises(SettingsError) as info:
        WindowPolicy(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert "window." in str(info.value)


# ------------------------------------------------------------------ count windows


def test_count_windows_of_ten_like_the_prototype() -> None:
    builder: WindowBuilder[str] = WindowBuilder(WindowPolicy())
    closed = feed(builder, [(f"m{i}", 100.0 + i) for i in range(25)])
    assert [len(w.items) for w in closed] == [10, 10]
    assert closed[0].items == tuple(f"m{i}" for i in range(10))
    assert (closed[0].start, closed[0].end) == (100.0, 109.0)
    assert (closed[1].start, closed[1].end) == (110.0, 119.0)
    assert all(w.reason is CloseReason.COUNT for w in closed)
    assert builder.pending == 5
    (last,) = builder.flush()
    assert last.items == tuple(f"m{i}" for i in range(20, 25))
    assert last.reason is CloseReason.FLUSH
    assert builder.flush() == []


def test_max_age_closes_a_quiet_window_on_tick() -> None:
    builder: WindowBuilder[str] = WindowBuilder(WindowPolicy(max_messages=10, max_age=30.0))
    assert feed(builder, [("a", 0.0), ("b", 5.0)]) == []
    assert builder.tick(29.9) == []
    (window,) = builder.tick(30.0)
    assert window.items == ("a", "b")
    assert (window.start, window.end, window.reason) == (0.0, 5.0, CloseReason.AGE)
    assert builder.tick(1000.0) == []  # nothing open, nothing to close


def test_a_late_message_closes_the_old_window_before_joining_a_new_one() -> None:
    builder: WindowBuilder[str] = WindowBuilder(WindowPolicy(max_messages=10, max_age=30.0))
    closed = feed(builder, [("a", 0.0), ("b", 100.0)])
    assert [w.items for w in closed] == [("a",)]
    assert builder.pending == 1


def test_out_of_order_times_are_made_monotone() -> None:
    builder: WindowBuilder[str] = WindowBuilder(WindowPolicy(max_messages=3))
    closed = feed(builder, [("a", 10.0), ("b", 8.0), ("c", 12.0), ("d", 11.0)])
    assert (closed[0].start, closed[0].end) == (10.0, 12.0)
    (rest,) = builder.flush()
    assert rest.start == rest.end == 12.0  # "d" taken at the previous item's time


# ------------------------------------------------------------------ time windows


def test_time_windows_are_even_slots_aligned_to_the_origin() -> None:
    policy = WindowPolicy(max_messages=None, max_seconds=10.0, max_age=60.0)
    builder: WindowBuilder[str] = WindowBuilder(policy, origin=1000.0)
    closed = feed(builder, [("a", 1001.0), ("b", 1004.0), ("c", 1012.0), ("d", 1035.5)])
    # slot 0 closed by "c", slot 1 by "d"; slots 2 (empty) yields nothing
    assert [(w.items, w.start, w.end) for w in closed] == [
        (("a", "b"), 1000.0, 1010.0),
        (("c",), 1010.0, 1020.0),
    ]
    assert all(w.reason is CloseReason.SLOT for w in closed)
    assert builder.tick(1039.9) == []
    (window,) = builder.tick(1040.0)
    assert (window.items, window.start, window.end) == (("d",), 1030.0, 1040.0)


def test_time_window_origin_defaults_to_the_first_item() -> None:
    policy = WindowPolicy(max_messages=None, max_seconds=5.0)
    builder: WindowBuilder[str] = WindowBuilder(policy)
    closed = feed(builder, [("a", 7.5), ("b", 12.4), ("c", 12.5)])
    assert [(w.items, w.start, w.end) for w in closed] == [(("a", "b"), 7.5, 12.5)]


def test_count_and_time_together() -> None:
    policy = WindowPolicy(max_messages=3, max_seconds=10.0, max_age=60.0)
    builder: WindowBuilder[str] = WindowBuilder(policy, origin=0.0)
    closed = feed(builder, [(c, t) for c, t in zip("abcdef", [1, 2, 3, 4, 5, 11], strict=True)])
    # the first window of slot 0 starts at the slot; the second one at its first item and
    # ends at the slot boundary when "f" arrives in slot 1
    assert [(w.items, w.start, w.end, w.reason) for w in closed] == [
        (("a", "b", "c"), 0.0, 3.0, CloseReason.COUNT),
        (("d", "e"), 4.0, 10.0, CloseReason.SLOT),
    ]


def test_max_age_shorter_than_the_slot() -> None:
    policy = WindowPolicy(max_messages=None, max_seconds=60.0, max_age=20.0)
    builder: WindowBuilder[str] = WindowBuilder(policy, origin=0.0)
    feed(builder, [("a", 5.0), ("b", 6.0)])
    (window,) = builder.tick(25.0)
    assert (window.start, window.end, window.reason) == (0.0, 6.0, CloseReason.AGE)


@given(
    st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=60),
    st.sampled_from([(3, None), (None, 4.0), (5, 2.5)]),
)
def test_every_item_lands_in_exactly_one_window_in_order(
    gaps: list[float], limits: tuple[int | None, float | None]
) -> None:
    max_messages, max_seconds = limits
    policy = WindowPolicy(max_messages=max_messages, max_seconds=max_seconds, max_age=7.0)
    builder: WindowBuilder[int] = WindowBuilder(policy, origin=0.0)
    closed: list[Window[int]] = []
    t = 0.0
    for i, gap in enumerate(gaps):
        t += gap
        closed += builder.tick(t - gap / 2)
        closed += builder.add(i, t)
    closed += builder.flush()
    assert [item for w in closed for item in w.items] == list(range(len(gaps)))
    for w in closed:
        assert w.items
        assert w.start <= w.end
        if max_messages is not None:
            assert len(w.items) <= max_messages
    for earlier, later in itertools.pairwise(closed):
        assert earlier.end <= later.start


# ------------------------------------------------------------------ batch ids


def test_batch_id_ignores_order_and_is_stable() -> None:
    keys = ["twitch:abc", "twitch:def", "h:0123"]
    first = batch_id_for(keys)
    assert first == batch_id_for(reversed(keys))
    assert len(first) == 20 and all(c in "0123456789abcdef" for c in first)
    assert first != batch_id_for(keys[:2])
    # length prefixes: moving a character between keys changes the id
    assert batch_id_for(["ab", "c"]) != batch_id_for(["a", "bc"])
    with pytest.raises(ValueError):
        batch_id_for([])


# ------------------------------------------------------------------ sampling


def test_plan_keeps_full_windows_while_keeping_up() -> None:
    assert sample_plan([10, 10, 3], scorer_rate=50.0, max_lag_seconds=1.0) == [10, 10, 3]
    assert sample_plan([10, 10], scorer_rate=math.inf, max_lag_seconds=2.0) == [10, 10]


@given(
    st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=30),
    st.floats(min_value=1.0, max_value=500.0),
    st.floats(min_value=0.1, max_value=10.0),
)
@example([1, 1, 4], 1.0, 3.0)  # floors of one for small windows once overshot the budget
def test_plan_bounds_the_lag(sizes: list[int], rate: float, lag: float) -> None:
    plan = sample_plan(sizes, rate, lag)
    assert len(plan) == len(sizes)
    for size, k in zip(sizes, plan, strict=True):
        assert 0 <= k <= size
        assert (k >= 1) == (size >= 1)
    non_empty = sum(1 for size in sizes if size)
    # the backlog is scored within max_lag, unless one message per window is already more
    assert sum(plan) <= max(math.floor(rate * lag), non_empty) or sum(plan) == sum(sizes)
    if sum(sizes) > rate * lag and math.floor(rate * lag) >= non_empty:
        assert sum(plan) == math.floor(rate * lag)  # the budget is used, not wasted


def test_plan_shares_the_budget_in_proportion() -> None:
    assert sample_plan([100, 50, 50], scorer_rate=20.0, max_lag_seconds=1.0) == [10, 5, 5]
    assert sample_plan([1, 1, 1, 1], scorer_rate=1.0, max_lag_seconds=1.0) == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        sample_plan([3], scorer_rate=0.0, max_lag_seconds=1.0)


def test_uniform_sample_is_deterministic_ordered_and_uniform() -> None:
    items = list(range(20))
    first = uniform_sample(items, 5, seed="abc")
    assert first == uniform_sample(items, 5, seed="abc")
    assert first == sorted(first) and len(set(first)) == 5
    assert uniform_sample(items, 25, seed="abc") == items
    assert uniform_sample(items, 0, seed="abc") == []
    counts: Counter[int] = Counter()
    for n in range(2000):
        counts.update(uniform_sample(items, 5, seed=f"batch-{n}"))
    # each item expected 2000 * 5/20 = 500 times; binomial sd ~19, allow ~6 sd
    assert min(counts.values()) > 380 and max(counts.values()) < 620


# ------------------------------------------------------------------ readings


def reading_args(scores: np.ndarray, **overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "session_id": "s1",
        "platform": "twitch",
        "channel": "xqcow",
        "batch_id": "0123456789abcdef0123",
        "seq": 4,
        "window_start": 1700000000.0,
        "window_end": 1700000009.5,
        "message_count": 10,
        "scores": scores,
        "displayed": DEFAULT_DISPLAYED,
        "model_id": "cardiffnlp/twitter-roberta-base-emotion-multilabel-latest",
        "agent_version": "1.0.0",
    }
    args.update(overrides)
    return args


def test_make_reading_means_and_dominant() -> None:
    scores = np.zeros((4, len(LABELS)))
    scores[:, LABELS.index("joy")] = [0.9, 0.7, 0.1, 0.1]  # mean 0.45
    scores[:, LABELS.index("anger")] = [0.5, 0.5, 0.5, 0.5]  # mean 0.5, displayed
    scores[:, LABELS.index("love")] = [1.0, 1.0, 1.0, 1.0]  # highest, but not displayed
    reading = make_reading(**reading_args(scores))  # type: ignore[arg-type]
    assert reading.scored_count == 4 and reading.message_count == 10
    assert reading.scores[LABELS.index("joy")] == pytest.approx(0.45)
    assert reading.scores[LABELS.index("love")] == pytest.approx(1.0)
    assert reading.dominant == "anger"
    shown_love = make_reading(**reading_args(scores, displayed=("joy", "love")))  # type: ignore[arg-type]
    assert shown_love.dominant == "love"


def test_make_reading_rejects_bad_input() -> None:
    good = np.full((2, len(LABELS)), 0.5)
    with pytest.raises(SettingsError, match="'rage' is not a model label"):
        make_reading(**reading_args(good, displayed=("joy", "rage")))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one scored message"):
        make_reading(**reading_args(np.zeros((0, len(LABELS)))))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        make_reading(**reading_args(np.zeros((2, 6))))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of only"):
        make_reading(**reading_args(good, message_count=1))  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        validate_displayed(())
