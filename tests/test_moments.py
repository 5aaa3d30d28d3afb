"""Moment detection on constructed readings where the right answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agent.moments import (
    MESSAGE_RATE,
    MomentParams,
    detect_moments,
    format_vod_time,
    smoothed_series,
)
from agent.vocab import LABELS

T0 = 1_714_500_000.0  # 2024-04-30 18:00:00 UTC
STEP = 5.0  # one reading per five seconds


def flat_readings(
    minutes: float,
    *,
    seed: int = 1,
    session_id: str = "s1",
    start: float = T0,
    level: float = 0.2,
    noise: float = 0.01,
    messages: int = 10,
    step: float = STEP,
) -> pd.DataFrame:
    """Every label at `level` plus gaussian noise; a constant message count."""
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 / step)
    starts = start + np.arange(n) * step
    frame = pd.DataFrame(
        {
            "session_id": session_id,
            "window_start": starts,
            "window_end": starts + step,
            "message_count": messages,
            "scored_count": messages,
        }
    )
    for label in LABELS:
        frame[label] = np.clip(level + rng.normal(0, noise, n), 0, 1)
    return frame


def inject(frame: pd.DataFrame, column: str, at: float, seconds: float, add: float) -> None:
    """Raise `column` by `add` for the readings starting in [T0+at, T0+at+seconds)."""
    offset = frame["window_start"] - frame["window_start"].iloc[0]
    rows = (offset >= at) & (offset < at + seconds)
    frame.loc[rows, column] = frame.loc[rows, column] + add


def test_injected_spikes_are_found_at_their_times_ranked_by_size() -> None:
    frame = flat_readings(120)
    inject(frame, "surprise", at=5400, seconds=20, add=0.15)
    inject(frame, "joy", at=1800, seconds=30, add=0.40)
    inject(frame, "anger", at=3600, seconds=20, add=0.25)

    moments = detect_moments(frame)

    assert [(m.kind, m.vod_time) for m in moments] == [
        ("joy", "00:30:00"),
        ("anger", "01:00:00"),
        ("surprise", "01:30:00"),
    ]
    joy = moments[0]
    assert joy.readings == 6
    assert joy.end - joy.start == pytest.approx(30.0)
    assert joy.value == pytest.approx(0.6, abs=0.04)
    assert joy.baseline == pytest.approx(0.2, abs=0.01)
    assert joy.ratio == pytest.approx(3.0, rel=0.15)
    assert joy.z > moments[1].z > moments[2].z >= MomentParams().z_threshold


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flat_noise_has_no_moments(seed: int) -> None:
    assert detect_moments(flat_readings(120, seed=seed)) == []


def test_a_slow_drift_is_not_a_moment() -> None:
    frame = flat_readings(90)
    offset = frame["window_start"] - T0
    # joy climbs from 0.1 to 0.7 over 30 minutes, then stays: a big change, but no spike.
    frame["joy"] = frame["joy"] - 0.1 + (offset.clip(upper=1800) / 1800) * 0.6
    assert detect_moments(frame) == []


def test_the_same_change_as_a_jump_is_a_moment() -> None:
    frame = flat_readings(90)
    inject(frame, "joy", at=1800, seconds=3600, add=0.6)
    moments = detect_moments(frame)
    # It is a moment at the jump; once the baseline has caught up it no longer is.
    assert [(m.kind, m.vod_time) for m in moments] == [("joy", "00:30:00")]
    assert moments[0].end - moments[0].start < MomentParams().baseline_minutes * 60


def test_spikes_closer_than_the_merge_gap_merge() -> None:
    frame = flat_readings(60)
    inject(frame, "joy", at=1800, seconds=15, add=0.4)
    inject(frame, "joy", at=1800 + 15 + 20, seconds=15, add=0.4)  # 20 s later: merged

    merged = detect_moments(frame)
    assert [(m.kind, m.vod_time, m.readings) for m in merged] == [("joy", "00:30:00", 6)]
    assert merged[0].end - merged[0].start == pytest.approx(50.0)

    split = detect_moments(frame, params=MomentParams(merge_gap_seconds=10))
    assert sorted((m.vod_time, m.readings) for m in split) == [
        ("00:30:00", 3),
        ("00:30:35", 3),
    ]


def test_spikes_farther_apart_than_the_merge_gap_stay_apart() -> None:
    frame = flat_readings(60)
    inject(frame, "fear", at=1800, seconds=15, add=0.4)
    inject(frame, "fear", at=1800 + 15 + 90, seconds=15, add=0.4)  # 90 s > 30 s
    moments = detect_moments(frame)
    assert sorted(m.vod_time for m in moments) == ["00:30:00", "00:31:45"]


def test_message_rate_spike() -> None:
    rng = np.random.default_rng(7)
    frame = flat_readings(60)
    frame["message_count"] = rng.poisson(10, len(frame))
    frame["scored_count"] = frame["message_count"]
    offset = frame["window_start"] - T0
    burst = (offset >= 2400) & (offset < 2460)
    frame.loc[burst, "message_count"] = 60  # 720/min against about 120/min

    moments = detect_moments(frame)

    assert [(m.kind, m.vod_time) for m in moments] == [(MESSAGE_RATE, "00:40:00")]
    rate = moments[0]
    assert rate.readings == 12
    assert rate.value == pytest.approx(720.0)
    assert rate.baseline == pytest.approx(120.0, rel=0.15)
    assert rate.ratio == pytest.approx(6.0, rel=0.15)


def test_message_rate_needs_the_ratio_as_well_as_z() -> None:
    frame = flat_readings(60, messages=100)  # 1,200/min, perfectly steady
    offset = frame["window_start"] - T0
    frame.loc[(offset >= 1800) & (offset < 1830), "message_count"] = 150  # +50%
    assert detect_moments(frame) == []
    found = detect_moments(frame, params=MomentParams(rate_min_ratio=1.4))
    assert [(m.kind, m.vod_time) for m in found] == [(MESSAGE_RATE, "00:30:00")]


def test_readings_of_too_few_scored_messages_are_ignored() -> None:
    frame = flat_readings(60)
    offset = frame["window_start"] - T0
    lonely = (offset >= 1800) & (offset < 1830)
    frame.loc[lonely, "joy"] = 0.99
    frame.loc[lonely, "scored_count"] = 1
    assert [m for m in detect_moments(frame) if m.kind == "joy"] == []


def test_a_spike_before_the_baseline_fills_is_not_judged() -> None:
    frame = flat_readings(30)
    inject(frame, "joy", at=10, seconds=10, add=0.5)  # only 2 readings of baseline
    assert detect_moments(frame) == []


def test_only_displayed_emotions_are_checked() -> None:
    frame = flat_readings(60)
    inject(frame, "trust", at=1800, seconds=20, add=0.5)  # trust is not displayed by default
    assert detect_moments(frame) == []
    found = detect_moments(frame, displayed=("trust",))
    assert [(m.kind, m.vod_time) for m in found] == [("trust", "00:30:00")]


def test_top_n_keeps_the_strongest() -> None:
    frame = flat_readings(120)
    for i, label in enumerate(("anger", "fear", "joy", "optimism", "sadness")):
        inject(frame, label, at=900 * (i + 1), seconds=20, add=0.15 + 0.05 * i)
    moments = detect_moments(frame, params=MomentParams(top_n=2))
    assert [m.kind for m in moments] == ["sadness", "optimism"]


def test_each_session_is_timed_from_its_own_start() -> None:
    first = flat_readings(60, session_id="a", seed=1)
    second = flat_readings(60, session_id="b", seed=2, start=T0 + 86_400)
    inject(first, "joy", at=1200, seconds=20, add=0.4)
    inject(second, "anger", at=2400, seconds=20, add=0.3)
    moments = detect_moments(pd.concat([second, first], ignore_index=True))
    assert [(m.session_id, m.kind, m.vod_time) for m in moments] == [
        ("a", "joy", "00:20:00"),
        ("b", "anger", "00:40:00"),
    ]
    shifted = detect_moments(first, stream_starts={"a": T0 - 600})
    assert shifted[0].vod_time == "00:30:00"


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown emotion"):
        detect_moments(flat_readings(10), displayed=("joy", "glee"))


def test_one_second_readings_are_pooled_over_the_smoothing_window() -> None:
    n = 30
    starts = T0 + np.arange(n, dtype=float)
    frame = pd.DataFrame(
        {
            "window_start": starts,
            "window_end": starts + 1.0,
            "message_count": [1, 5] * (n // 2),  # 180 messages/min on average
            "scored_count": [1, 2] * (n // 2),
            "joy": [0.9, 0.3] * (n // 2),
        }
    )
    series = smoothed_series(frame, ("joy",), MomentParams(smooth_seconds=10))
    # The pool of reading i: readings that started less than 10 s before its end (i-8 .. i).
    for i in range(n):
        pool = frame.iloc[max(0, i - 8) : i + 1]
        span = pool["window_end"].iloc[-1] - pool["window_start"].iloc[0]
        assert series[MESSAGE_RATE][i] == pytest.approx(60 * pool["message_count"].sum() / span)
        scored = pool["scored_count"].sum()
        if scored >= 3:
            mean = (pool["joy"] * pool["scored_count"]).sum() / scored
            assert series["joy"][i] == pytest.approx(mean, abs=1e-6)
        else:
            assert np.isnan(series["joy"][i])
    assert series[MESSAGE_RATE][0] == 60.0 and np.isnan(series["joy"][0])
    assert series["joy"][1] == pytest.approx(0.5)


def test_pooled_one_second_readings_still_time_the_moment_to_the_second() -> None:
    rng = np.random.default_rng(4)
    frame = flat_readings(40, step=1.0, noise=0.03, messages=2)
    frame["message_count"] = rng.poisson(2, len(frame))
    frame["scored_count"] = frame["message_count"]
    offset = frame["window_start"] - T0
    frame.loc[(offset >= 1500) & (offset < 1530), "surprise"] += 0.3
    frame.loc[(offset >= 2000) & (offset < 2020), "message_count"] = 12

    moments = detect_moments(frame)

    assert sorted((m.kind, m.vod_time) for m in moments) == [
        (MESSAGE_RATE, "00:33:20"),
        ("surprise", "00:25:00"),
    ]


def test_long_readings_are_not_pooled() -> None:
    frame = flat_readings(5)  # five-second readings, shorter than smooth_seconds
    long = flat_readings(5).assign(window_end=lambda f: f["window_start"] + 30.0)
    long["window_start"] = T0 + np.arange(len(long)) * 30.0
    long["window_end"] = long["window_start"] + 30.0
    long.loc[3, "message_count"] = 25
    pooled = smoothed_series(long, ("joy",))
    # Means are kept to six decimals, as the spool writes them.
    assert pooled["joy"] == pytest.approx(long["joy"].to_numpy(), abs=1e-6)
    assert pooled[MESSAGE_RATE][2:5].tolist() == [20.0, 50.0, 20.0]
    assert len(smoothed_series(frame, ())[MESSAGE_RATE]) == len(frame)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00"),
        (59.9, "00:00:59"),
        (3600, "01:00:00"),
        (45296, "12:34:56"),
        (-3, "00:00:00"),
    ],
)
def test_format_vod_time(seconds: float, text: str) -> None:
    assert format_vod_time(seconds) == text


def test_a_blip_shorter_than_the_minimum_moment_is_dropped() -> None:
    frame = flat_readings(60)
    offset = frame["window_start"] - T0
    frame.loc[(offset >= 1800) & (offset < 1805), "message_count"] = 60  # one 5 s window
    frame.loc[(offset >= 2400) & (offset < 2415), "message_count"] = 60  # three windows
    moments = detect_moments(frame)
    assert [(m.kind, m.vod_time) for m in moments] == [(MESSAGE_RATE, "00:40:00")]
    with_blips = detect_moments(frame, params=MomentParams(min_moment_seconds=0))
    assert sorted(m.vod_time for m in with_blips) == ["00:30:00", "00:40:00"]
