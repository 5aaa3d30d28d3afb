"""Moments worth clipping: spikes of an emotion or of the message rate against a rolling baseline.

Pure functions over a readings table (one row per reading, as `agent.report.load_readings`
returns it): no files, no clock. All thresholds below are fields of `MomentParams`.

Method, per session and per series (each displayed emotion's mean probability, and the
message rate in messages per minute):

1. **Series.** Each reading is first pooled with the readings that started less than
   `smooth_seconds` before its end (itself included), so that a chart of one reading per
   second, where each reading holds a handful of messages, is judged on about ten seconds of
   chat rather than on single noisy readings; readings as long as `smooth_seconds` or longer
   stand alone. Over that pool, an emotion's value is its mean probability over all scored
   messages (the readings' means weighted by scored count), left out when fewer than
   `min_scored` messages were scored: the mean of one or two messages is noise, not a mood.
   The message rate is ``60 * messages / max(pool span, rate_min_window_seconds)`` messages
   per minute, the pool span running from its first reading's start to this reading's end.
2. **Baseline.** For each reading, the readings whose start lies in the previous
   `baseline_minutes` (the reading itself excluded) give a median ``m`` and a robust spread
   ``s = IQR / 1.349`` (the interquartile range scaled so that ``s`` is the standard deviation
   for normal noise, like ``1.4826 * MAD``; pandas has rolling quantiles but no rolling MAD, and
   a per-window MAD would cost a Python call per reading). The window is in time, not in rows,
   so it works for fixed-time and fixed-count windows alike and after gaps.
3. **Robust z-score.** ``z = (x - m) / (s + floor)`` where ``floor`` is `emotion_scale_floor`
   (probability) or `rate_scale_floor` (messages/min): it keeps a perfectly flat baseline from
   turning a tiny wobble into an enormous z.
4. **Spike reading.** A reading is part of a spike when all of these hold:
   at least `min_baseline_readings` readings in its baseline window (the first minutes of a
   stream, or the minutes after a long gap, cannot be judged); ``z >= z_threshold``; the lift
   ``x - m`` is at least `emotion_min_lift` (probability) or `rate_min_lift` (messages/min);
   and for the message rate also ``x >= rate_min_ratio * m``. Only rises count: a sudden
   quiet is not a moment to clip. A slow drift is not a spike: the baseline follows it, so
   the lift over the median of the last few minutes stays small.
5. **Merging.** Spike readings of the same series and session merge into one moment while
   the gap between one reading's end and the next one's start is at most
   `merge_gap_seconds`; a larger gap starts a new moment. Different series are never merged:
   a hype moment usually shows as a joy moment and a message-rate moment at the same time,
   and both are listed.

   A moment starts at the first reading of its first spike reading's pool that on its own
   (unpooled) reaches the value that made that reading a spike (pooling makes a spike cross
   the threshold a few seconds late; the VOD time should point at its beginning), and ends
   at its last spike reading's end. A moment shorter than `min_moment_seconds` is dropped:
   one short window of chat that happens to be busy or one-sided is noise, not something to
   clip (chat is bursty: message counts have a heavier tail than the normal curve the
   z-score assumes).
6. **Ranking.** A moment's strength is the z-score of its strongest reading (its peak); the
   ratio ``value / baseline`` and the lift are reported beside it. Moments are ranked by peak
   z (ties: larger lift first) and the top `top_n` kept.

A moment's VOD time is its start measured from the session's first reading, so it lines up
with the stream's recording.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from agent.vocab import DEFAULT_DISPLAYED, LABELS

MESSAGE_RATE = "message_rate"

# IQR of a normal distribution is 1.349 sigma.
_IQR_TO_SIGMA = 1.349


@dataclass(frozen=True, slots=True)
class MomentParams:
    """The thresholds of moment detection; the module docstring says what each one does."""

    baseline_minutes: float = 5.0
    min_baseline_readings: int = 10
    z_threshold: float = 4.0
    emotion_min_lift: float = 0.10
    emotion_scale_floor: float = 0.02
    min_scored: int = 3
    smooth_seconds: float = 10.0
    rate_min_lift: float = 5.0
    rate_min_ratio: float = 2.0
    rate_scale_floor: float = 1.0
    rate_min_window_seconds: float = 1.0
    merge_gap_seconds: float = 30.0
    min_moment_seconds: float = 10.0
    top_n: int = 10

    def __post_init__(self) -> None:
        if self.baseline_minutes <= 0:
            raise ValueError(f"baseline_minutes must be > 0, got {self.baseline_minutes}")
        if self.min_baseline_readings < 1:
            raise ValueError(
                f"min_baseline_readings must be >= 1, got {self.min_baseline_readings}"
            )
        if self.merge_gap_seconds < 0:
            raise ValueError(f"merge_gap_seconds must be >= 0, got {self.merge_gap_seconds}")
        if self.top_n < 0:
            raise ValueError(f"top_n must be >= 0, got {self.top_n}")


@dataclass(frozen=True, slots=True)
class Moment:
    """One spike: where it is on the stream's timeline and how far above its baseline."""

    session_id: str
    kind: str  # an emotion label or MESSAGE_RATE
    start: float  # UNIX seconds: window start of the first spike reading
    end: float  # UNIX seconds: window end of the last spike reading
    peak: float  # UNIX seconds: window start of the strongest reading
    start_offset: float  # seconds since the stream's first reading
    peak_offset: float
    value: float  # the series' value at the peak
    baseline: float  # the baseline median at the peak
    z: float  # robust z-score at the peak: the moment's strength
    readings: int  # how many spike readings merged into this moment

    @property
    def lift(self) -> float:
        return self.value - self.baseline

    @property
    def ratio(self) -> float | None:
        """value / baseline, or None when the baseline is zero (activity out of silence)."""
        return self.value / self.baseline if self.baseline > 0 else None

    @property
    def vod_time(self) -> str:
        return format_vod_time(self.start_offset)

    @property
    def peak_vod_time(self) -> str:
        return format_vod_time(self.peak_offset)


def format_vod_time(seconds: float) -> str:
    """Seconds since stream start as ``HH:MM:SS`` (hours keep counting past 24)."""
    whole = max(0, math.floor(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def smoothed_series(
    readings: pd.DataFrame, labels: Iterable[str], params: MomentParams | None = None
) -> dict[str, np.ndarray]:
    """Step 1 of the method for one session's readings, sorted by window_start: each label's
    pooled mean (NaN where too few messages were scored) and MESSAGE_RATE in messages/min."""
    params = params or MomentParams()
    starts = readings["window_start"].to_numpy(dtype=float)
    ends = readings["window_end"].to_numpy(dtype=float)
    first = _pool_first(starts, ends, params.smooth_seconds)

    def pooled(values: np.ndarray) -> np.ndarray:
        running = np.concatenate(([0.0], np.cumsum(values, dtype=float)))
        return running[np.arange(1, len(values) + 1)] - running[first]

    scored = readings["scored_count"].to_numpy(dtype=float).clip(min=0)
    scored_pool = pooled(scored)
    series: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for label in labels:
            means = pooled(readings[label].to_numpy(dtype=float) * scored) / scored_pool
            series[label] = np.where(scored_pool >= params.min_scored, means, np.nan)
    span = np.maximum(ends - starts[first], params.rate_min_window_seconds)
    series[MESSAGE_RATE] = 60.0 * pooled(readings["message_count"].to_numpy(dtype=float)) / span
    return series


def _pool_first(starts: np.ndarray, ends: np.ndarray, smooth_seconds: float) -> np.ndarray:
    """The pool of reading i is readings first[i]..i: those starting after ends[i] - smooth."""
    found = np.searchsorted(starts, ends - smooth_seconds, side="right")
    return np.minimum(found, np.arange(len(starts)))


def _unpooled(readings: pd.DataFrame, kind: str, params: MomentParams) -> np.ndarray:
    """Each reading's own value of a series (no pooling), to time a moment's start."""
    if kind == MESSAGE_RATE:
        duration = (readings["window_end"] - readings["window_start"]).to_numpy(dtype=float)
        counts = readings["message_count"].to_numpy(dtype=float)
        return 60.0 * counts / np.maximum(duration, params.rate_min_window_seconds)
    values = readings[kind].to_numpy(dtype=float)
    return np.where(readings["scored_count"].to_numpy() > 0, values, np.nan)


def detect_moments(
    readings: pd.DataFrame,
    *,
    displayed: Iterable[str] = DEFAULT_DISPLAYED,
    params: MomentParams | None = None,
    stream_starts: Mapping[str, float] | None = None,
) -> list[Moment]:
    """The top `params.top_n` moments of every session in `readings`, strongest first.

    `readings` needs the columns session_id, window_start, window_end (UNIX seconds),
    message_count, scored_count and one column per displayed label. `stream_starts` maps a
    session id to the time its VOD starts; by default the session's first reading.
    """
    params = params or MomentParams()
    labels = tuple(displayed)
    unknown = [label for label in labels if label not in LABELS]
    if unknown:
        raise ValueError(f"unknown emotion label(s) {unknown}: use some of {', '.join(LABELS)}")
    if readings.empty or params.top_n == 0:
        return []

    moments: list[Moment] = []
    for session_id, session in readings.groupby("session_id", sort=False):
        session = session.sort_values("window_start", kind="stable")
        first = float(session["window_start"].iloc[0])
        stream_start = (stream_starts or {}).get(str(session_id), first)
        moments.extend(_session_moments(str(session_id), session, labels, params, stream_start))
    moments.sort(key=lambda m: (-m.z, -m.lift, m.start))
    return moments[: params.top_n]


def _session_moments(
    session_id: str,
    session: pd.DataFrame,
    labels: tuple[str, ...],
    params: MomentParams,
    stream_start: float,
) -> list[Moment]:
    starts = session["window_start"].to_numpy(dtype=float)
    ends = session["window_end"].to_numpy(dtype=float)
    index = pd.DatetimeIndex(pd.to_datetime(starts, unit="s"))
    series = smoothed_series(session, labels, params)
    timing = _Timing(starts, ends, _pool_first(starts, ends, params.smooth_seconds), stream_start)

    found: list[Moment] = []
    for kind, values in series.items():
        is_rate = kind == MESSAGE_RATE
        flags, z, baseline, threshold = _spikes(
            values,
            index,
            params,
            floor=params.rate_scale_floor if is_rate else params.emotion_scale_floor,
            min_lift=params.rate_min_lift if is_rate else params.emotion_min_lift,
            min_ratio=params.rate_min_ratio if is_rate else None,
        )
        spike = _Spike(flags, z, values, baseline, _unpooled(session, kind, params), threshold)
        found.extend(_merge(session_id, kind, spike, timing, params))
    return found


def _spikes(
    values: np.ndarray,
    index: pd.DatetimeIndex,
    params: MomentParams,
    *,
    floor: float,
    min_lift: float,
    min_ratio: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per reading: is it a spike reading, its robust z, its baseline median and the least
    value that would have been a spike."""
    series = pd.Series(values, index=index)
    window = pd.Timedelta(minutes=params.baseline_minutes)
    # closed="left": the baseline holds only readings before this one, never itself.
    rolling = series.rolling(window, closed="left", min_periods=1)
    median = rolling.median().to_numpy()
    spread = (rolling.quantile(0.75) - rolling.quantile(0.25)).to_numpy() / _IQR_TO_SIGMA
    count = rolling.count().fillna(0).to_numpy()

    # The least value that counts as a spike: every rule of step 4 at once.
    threshold = np.maximum(median + min_lift, median + params.z_threshold * (spread + floor))
    if min_ratio is not None:
        threshold = np.maximum(threshold, min_ratio * median)
    z = (values - median) / (spread + floor)
    with np.errstate(invalid="ignore"):
        flags = (count >= params.min_baseline_readings) & (values >= threshold)
    flags &= ~np.isnan(values)
    return flags, z, median, threshold


@dataclass(frozen=True, slots=True)
class _Timing:
    starts: np.ndarray
    ends: np.ndarray
    pool_first: np.ndarray
    stream_start: float


@dataclass(frozen=True, slots=True)
class _Spike:
    flags: np.ndarray
    z: np.ndarray
    values: np.ndarray  # pooled
    baseline: np.ndarray
    unpooled: np.ndarray
    threshold: np.ndarray


def _merge(
    session_id: str, kind: str, spike: _Spike, timing: _Timing, params: MomentParams
) -> list[Moment]:
    starts, ends = timing.starts, timing.ends
    positions = np.flatnonzero(spike.flags)
    if positions.size == 0:
        return []
    # A new group begins where the gap since the previous spike reading's end is too large.
    gaps = starts[positions[1:]] - ends[positions[:-1]]
    breaks = np.flatnonzero(gaps > params.merge_gap_seconds) + 1
    moments = []
    for group in np.split(positions, breaks):
        start = float(starts[_onset(group[0], spike, timing)])
        end = float(ends[group[-1]])
        if end - start < params.min_moment_seconds:
            continue
        peak = int(group[np.argmax(spike.z[group])])
        moments.append(
            Moment(
                session_id=session_id,
                kind=kind,
                start=start,
                end=end,
                peak=float(starts[peak]),
                start_offset=start - timing.stream_start,
                peak_offset=float(starts[peak]) - timing.stream_start,
                value=float(spike.values[peak]),
                baseline=float(spike.baseline[peak]),
                z=float(spike.z[peak]),
                readings=int(group.size),
            )
        )
    return moments


def _onset(first_spike: int, spike: _Spike, timing: _Timing) -> int:
    """The first reading of the spike's first pool that on its own passes that spike
    reading's threshold (see the module docstring, step 5)."""
    pool = np.arange(timing.pool_first[first_spike], first_spike + 1)
    with np.errstate(invalid="ignore"):
        risen = spike.unpooled[pool] >= spike.threshold[first_spike]
    return int(pool[np.argmax(risen)]) if risen.any() else first_spike
