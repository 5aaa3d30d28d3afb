"""Live moments: the causal method fed reading by reading announces each spike within one
window of its onset, and finds exactly the moments the after-stream report finds."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from agent.moments import (
    MESSAGE_RATE,
    LiveMoments,
    Moment,
    MomentEventKind,
    MomentParams,
    all_moments,
    describe,
    detect_moments,
)
from agent.report import load_readings
from agent.vocab import LABELS, READING_COLUMNS, Reading

T0 = 1_714_500_000.0  # 2024-04-30 18:00:00 UTC


def readings(
    *,
    minutes: float,
    step: float = 5.0,
    session_id: str = "s1",
    platform: str = "twitch",
    channel: str = "xqcow",
    seed: int = 0,
    messages: int = 10,
    spikes: Iterable[tuple[str, float, float, float]] = (),
    bursts: Iterable[tuple[float, float, int]] = (),
    start: float = T0,
) -> list[Reading]:
    """Flat noisy readings. A spike (label, at s, length s, added probability) raises an
    emotion; a burst (at s, length s, messages) raises the message count."""
    rng = np.random.default_rng(seed)
    spikes, bursts = list(spikes), list(bursts)
    out = []
    for i in range(int(minutes * 60 / step)):
        offset = i * step
        scores = np.clip(0.2 + rng.normal(0, 0.01, len(LABELS)), 0, 1)
        count = int(rng.poisson(messages))
        for label, at, length, add in spikes:
            if at <= offset < at + length:
                scores[LABELS.index(label)] += add
        for at, length, burst in bursts:
            if at <= offset < at + length:
                count = burst
        out.append(
            Reading(
                session_id=session_id,
                platform=platform,
                channel=channel,
                batch_id=f"{session_id}-{platform}-{i:08d}",
                seq=i,
                window_start=start + offset,
                window_end=start + offset + step,
                message_count=count,
                scored_count=count,
                scores=tuple(float(s) for s in np.clip(scores, 0, 1)),
                dominant="joy",
                model_id="m",
                agent_version="0",
            )
        )
    return out


def write_spool(spool: Path, rows: list[Reading], part: int = 1) -> None:
    """One sealed part in the spool's layout, as the agent writes it."""
    first = rows[0]
    day = time.strftime("%Y-%m-%d", time.gmtime(first.window_start))
    path = (
        spool
        / "sealed"
        / f"platform={first.platform}"
        / f"channel={first.channel}"
        / f"dt={day}"
        / f"{first.session_id}-{part:05d}.csv"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(READING_COLUMNS), *(",".join(r.as_row()) for r in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def live_run(rows: list[Reading], **kwargs: object) -> tuple[LiveMoments, list[tuple[int, object]]]:
    live = LiveMoments(**kwargs)  # type: ignore[arg-type]
    events: list[tuple[int, object]] = []
    for i, reading in enumerate(rows):
        events.extend((i, e) for e in live.add(reading))
    events.extend((len(rows), e) for e in live.finish())
    return live, events


def key(m: Moment) -> tuple[object, ...]:
    return dataclasses.astuple(m)


SPIKES = [("joy", 1200.0, 30.0, 0.40), ("anger", 1800.0, 20.0, 0.25), ("surprise", 2400, 15, 0.3)]
BURSTS = [(3000.0, 60.0, 60)]


def test_each_spike_is_announced_within_one_window_of_its_onset() -> None:
    rows = readings(minutes=60, spikes=SPIKES, bursts=BURSTS)
    _, events = live_run(rows)
    started = [(i, e.moment) for i, e in events if e.kind is MomentEventKind.STARTED]  # type: ignore[attr-defined]

    assert [(m.kind, m.vod_time) for _, m in started] == [
        ("joy", "00:20:00"),
        ("anger", "00:30:00"),
        ("surprise", "00:40:00"),
        (MESSAGE_RATE, "00:50:00"),
    ]
    step = 5.0
    for index, moment in started:
        onset = round(moment.start_offset / step)  # the reading the spike began in
        # Announced with the reading after the onset's (the onset's window plus one window).
        assert index - onset <= 1, (moment.kind, index, onset)
        assert rows[index].window_end - moment.start <= 2 * step
    # Labelled by what rose and by how much.
    joy = started[0][1]
    assert describe(joy).startswith("joy up ") and "x (0." in describe(joy)
    rate = started[3][1]
    assert rate.label.startswith("chat rate up ") and "/min vs " in rate.label


def test_live_and_after_stream_moments_are_the_same(tmp_path: Path) -> None:
    rows = readings(minutes=60, spikes=SPIKES, bursts=BURSTS, seed=3)
    live, events = live_run(rows)
    ended = [e.moment for _, e in events if e.kind is MomentEventKind.ENDED]  # type: ignore[attr-defined]

    write_spool(tmp_path, rows[:300])
    write_spool(tmp_path, rows[300:], part=2)
    after = all_moments(load_readings(tmp_path))

    assert [key(m) for m in ended] == [key(m) for m in after]
    assert [key(m) for m in live.moments()] == [key(m) for m in after]
    assert len(after) == 4
    # The report keeps the strongest of them, ranked.
    ranked = detect_moments(load_readings(tmp_path), params=MomentParams(top_n=2))
    assert {key(m) for m in ranked} <= {key(m) for m in after}
    assert ranked[0].z >= ranked[1].z


def test_one_second_readings_agree_too(tmp_path: Path) -> None:
    rows = readings(
        minutes=30,
        step=1.0,
        messages=2,
        spikes=[("surprise", 900.0, 30.0, 0.3)],
        bursts=[(1300.0, 20.0, 12)],
        seed=4,
    )
    _, events = live_run(rows)
    started = [e.moment for _, e in events if e.kind is MomentEventKind.STARTED]  # type: ignore[attr-defined]
    ended = [e.moment for _, e in events if e.kind is MomentEventKind.ENDED]  # type: ignore[attr-defined]
    write_spool(tmp_path, rows)
    after = all_moments(load_readings(tmp_path))
    assert [key(m) for m in ended] == [key(m) for m in after]
    assert sorted((m.kind, m.vod_time) for m in after) == [
        (MESSAGE_RATE, "00:21:40"),
        ("surprise", "00:15:00"),
    ]
    assert {m.vod_time for m in started} == {"00:15:00", "00:21:40"}


def test_timelines_of_one_session_are_judged_apart(tmp_path: Path) -> None:
    twitch = readings(minutes=40, spikes=[("joy", 1200.0, 30.0, 0.4)], seed=1)
    youtube = readings(
        minutes=40, platform="youtube", spikes=[("anger", 1500.0, 30.0, 0.4)], seed=2
    )
    merged = sorted(twitch + youtube, key=lambda r: (r.window_start, r.platform))
    _, events = live_run(merged)
    ended = [e.moment for _, e in events if e.kind is MomentEventKind.ENDED]  # type: ignore[attr-defined]
    write_spool(tmp_path, twitch)
    write_spool(tmp_path, youtube)
    after = all_moments(load_readings(tmp_path))
    assert sorted(map(key, ended)) == sorted(map(key, after))
    assert sorted((m.platform, m.kind, m.vod_time) for m in after) == [
        ("twitch", "joy", "00:20:00"),
        ("youtube", "anger", "00:25:00"),
    ]


def test_live_memory_stays_bounded() -> None:
    live = LiveMoments()
    for reading in readings(minutes=30):
        live.add(reading)
    (timeline,) = live._timelines.values()
    # Five minutes of baseline plus the smoothing window, in five-second readings.
    assert len(timeline.starts) <= (300 + 10 + 1) / 5 + 1
    assert all(len(v) == len(timeline.starts) for v in timeline.values.values())


def test_flat_chat_announces_nothing() -> None:
    _, events = live_run(readings(minutes=30, seed=9))
    assert events == []


@pytest.mark.parametrize("minutes", [0.5, 2.0])
def test_a_short_stream_has_no_baseline_and_no_moments(minutes: float) -> None:
    rows = readings(minutes=minutes, spikes=[("joy", 10.0, 20.0, 0.5)])
    _, events = live_run(rows)
    assert events == []


def test_the_html_report_shows_the_live_moments(tmp_path: Path) -> None:
    from agent.report import build_report
    from tests.test_report import chart_json

    rows = readings(minutes=60, spikes=SPIKES, bursts=BURSTS, seed=5)
    live, _ = live_run(rows)
    write_spool(tmp_path / "spool", rows)
    page = build_report(tmp_path / "spool", out=tmp_path / "r.html").read_text()
    drawn = chart_json(page)["moments"]
    expected = detect_moments(load_readings(tmp_path / "spool"))  # the report's ranking
    assert [(d["kind"], d["x"]) for d in drawn] == [
        (m.kind, round(m.start_offset, 1)) for m in expected
    ]
    assert sorted((d["kind"], d["x"]) for d in drawn) == sorted(
        (m.kind, round(m.start_offset, 1)) for m in live.moments()
    )


@pytest.mark.parametrize("seed", range(4))
def test_live_equals_after_stream_on_irregular_chat(seed: int, tmp_path: Path) -> None:
    """Irregular windows (0.2-8 s, gaps, sub-millisecond times, windows starting exactly
    one baseline apart, readings with too few scored messages), with spikes: the live path
    and the spool path must agree bit for bit, moment for moment."""
    rng = np.random.default_rng(100 + seed)
    rows: list[Reading] = []
    at = T0 + rng.random()
    for i in range(2500):
        length = float(rng.choice([0.2, 1.0, 5.0, 8.0, 300.0 / 60]))
        count = int(rng.poisson(6))
        scored = min(count, int(rng.integers(0, 8)))
        scores = np.clip(0.2 + rng.normal(0, 0.03, len(LABELS)), 0, 1)
        if 600 <= i < 640 or 1800 <= i < 1830:
            scores[LABELS.index("joy")] += 0.5
        if 1200 <= i < 1260:
            count = 80
        rows.append(
            Reading(
                session_id="irregular",
                platform="kick",
                channel="c",
                batch_id=f"b{i}",
                seq=i,
                window_start=at,
                window_end=at + length,
                message_count=count,
                scored_count=scored,
                scores=tuple(float(s) for s in np.clip(scores, 0, 1)),
                dominant="joy",
                model_id="m",
                agent_version="0",
            )
        )
        at += length + (float(rng.exponential(20)) if rng.random() < 0.02 else 0.0)
    _, events = live_run(rows)
    ended = [e.moment for _, e in events if e.kind is MomentEventKind.ENDED]  # type: ignore[attr-defined]
    write_spool(tmp_path, rows)
    after = all_moments(load_readings(tmp_path))
    assert after, "the constructed spikes must be found"
    assert [key(m) for m in ended] == [key(m) for m in after]
