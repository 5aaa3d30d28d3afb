"""Moments worth clipping: spikes of an emotion or of the message rate against a rolling baseline.

Pure functions over a readings table (one row per reading, as `agent.report.load_readings`
returns it): no files, no clock. All thresholds below are fields of `MomentParams`.

Method, per session and per series (each displayed emotion's mean probability, and the
message rate in messages per minute):

1. **Series.** An emotion's value is the reading's mean probability of that label. Readings
   that scored fewer than `min_scored` messages are left out of emotion series (both as
   candidates and in the baseline): the mean of one or two messages is noise, not a mood.
   The message rate of a reading is ``60 * message_count / max(window_end - window_start,
   rate_min_window_seconds)``; every reading counts for it.
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
    rate_min_lift: float = 5.0
    rate_min_ratio: float = 2.0
    rate_scale_floor: float = 1.0
    rate_min_window_seconds: float = 1.0
    merge_gap_seconds: float = 30.0
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


def message_rate(readings: pd.DataFrame, min_window_seconds: float = 1.0) -> pd.Series:
    """Messages per minute of each reading (see the module docstring, step 1)."""
    duration = (readings["window_end"] - readings["window_start"]).clip(lower=min_window_seconds)
    return 60.0 * readings["message_count"].astype(float) / duration


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
    enough_scored = session["scored_count"].to_numpy() >= params.min_scored

    found: list[Moment] = []
    for label in labels:
        values = np.where(enough_scored, session[label].to_numpy(dtype=float), np.nan)
        flags, z, baseline = _spikes(
            values,
            index,
            params,
            floor=params.emotion_scale_floor,
            min_lift=params.emotion_min_lift,
            min_ratio=None,
        )
        found.extend(
            _merge(
                session_id, label, flags, z, values, baseline, starts, ends, params, stream_start
            )
        )
    rate = message_rate(session, params.rate_min_window_seconds).to_numpy(dtype=float)
    flags, z, baseline = _spikes(
        rate,
        index,
        params,
        floor=params.rate_scale_floor,
        min_lift=params.rate_min_lift,
        min_ratio=params.rate_min_ratio,
    )
    found.extend(
        _merge(
            session_id, MESSAGE_RATE, flags, z, rate, baseline, starts, ends, params, stream_start
        )
    )
    return found


def _spikes(
    values: np.ndarray,
    index: pd.DatetimeIndex,
    params: MomentParams,
    *,
    floor: float,
    min_lift: float,
    min_ratio: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per reading: is it a spike reading, its robust z, and its baseline median."""
    series = pd.Series(values, index=index)
    window = pd.Timedelta(minutes=params.baseline_minutes)
    # closed="left": the baseline holds only readings before this one, never itself.
    rolling = series.rolling(window, closed="left", min_periods=1)
    median = rolling.median().to_numpy()
    spread = (rolling.quantile(0.75) - rolling.quantile(0.25)).to_numpy() / _IQR_TO_SIGMA
    count = rolling.count().fillna(0).to_numpy()

    lift = values - median
    z = lift / (spread + floor)
    with np.errstate(invalid="ignore"):
        flags = (count >= params.min_baseline_readings) & (z >= params.z_threshold)
        flags &= lift >= min_lift
        if min_ratio is not None:
            flags &= values >= min_ratio * median
    flags &= ~np.isnan(values)
    return flags, z, median


def _merge(
    session_id: str,
    kind: str,
    flags: np.ndarray,
    z: np.ndarray,
    values: np.ndarray,
    baseline: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    params: MomentParams,
    stream_start: float,
) -> list[Moment]:
    positions = np.flatnonzero(flags)
    if positions.size == 0:
        return []
    # A new group begins where the gap since the previous spike reading's end is too large.
    gaps = starts[positions[1:]] - ends[positions[:-1]]
    breaks = np.flatnonzero(gaps > params.merge_gap_seconds) + 1
    moments = []
    for group in np.split(positions, breaks):
        peak = int(group[np.argmax(z[group])])
        start = float(starts[group[0]])
        moments.append(
            Moment(
                session_id=session_id,
                kind=kind,
                start=start,
                end=float(ends[group[-1]]),
                peak=float(starts[peak]),
                start_offset=start - stream_start,
                peak_offset=float(starts[peak]) - stream_start,
                value=float(values[peak]),
                baseline=float(baseline[peak]),
                z=float(z[peak]),
                readings=int(group.size),
            )
        )
    return moments
