"""Moments worth clipping: spikes of an emotion or of the message rate against a rolling baseline.

Pure code over readings: no files, no clock. All thresholds below are fields of
`MomentParams`. The method is **causal**: every decision about a reading uses only that reading
and the ones before it, so the live agent (`LiveMoments`, fed one reading at a time) announces a
moment while it happens, and the after-stream report (`detect_moments`, over a whole readings
table as `agent.report.load_readings` returns it) finds exactly the same moments afterwards.

Method, per timeline (one session's readings of one platform and channel) and per series
(each displayed emotion's mean probability, and the message rate in messages per minute):

1. **Series.** Each reading is first pooled with the readings that started less than
   `smooth_seconds` before its end (itself included), so that a chart of one reading per
   second, where each reading holds a handful of messages, is judged on about ten seconds of
   chat rather than on single noisy readings; readings as long as `smooth_seconds` or longer
   stand alone. Over that pool, an emotion's value is its mean probability over all scored
   messages (the readings' means weighted by scored count), left out when fewer than
   `min_scored` messages were scored: the mean of one or two messages is noise, not a mood.
   The message rate is ``60 * messages / max(pool span, rate_min_window_seconds)`` messages
   per minute, the pool span running from its first reading's start to this reading's end.
   Times are taken to the millisecond and means to the micro-unit, as the spool's CSV keeps
   them, and summed in integers: a live reading and the same reading read back from the spool
   give bit-identical series.
2. **Baseline.** For each reading, the readings whose start lies in the previous
   `baseline_minutes` (the reading itself excluded: the past only) give a median ``m`` and a
   robust spread ``s = IQR / 1.349`` (the interquartile range scaled so that ``s`` is the
   standard deviation for normal noise, like ``1.4826 * MAD``; pandas has rolling quantiles
   but no rolling MAD). The window is in time, not in rows, so it works for fixed-time and
   fixed-count windows alike and after gaps.
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
5. **Merging, reading by reading.** A spike reading opens a moment of its series, or extends
   the open one when it starts at most `merge_gap_seconds` after that moment's last spike
   reading ended; a reading starting later than that closes the open moment. Different
   series are never merged: a hype moment usually shows as a joy moment and a message-rate
   moment at the same time, and both are listed.

   A moment starts at the first reading of its first spike reading's pool that on its own
   (unpooled) reaches the value that made that reading a spike (pooling makes a spike cross
   the threshold a few seconds late; the VOD time should point at its beginning).
   A moment is **announced** (it becomes a moment at all) at the first spike reading where
   the chat it rests on, from the start of its first spike reading's pool to the end of its
   latest spike reading, spans at least `min_moment_seconds`: one short window of chat that
   happens to be busy or one-sided is noise, not something to clip (chat is bursty: message
   counts have a heavier tail than the normal curve the z-score assumes). With readings of
   five seconds that is the window after the onset; with one-second readings, pooled over
   ten seconds, it is the first spike reading. A moment that closes unannounced is dropped.
   Its end, peak and strength keep growing while it lasts.
6. **Ranking (report only).** A moment's strength is the z-score of its strongest reading (its
   peak; the first one on ties); the ratio ``value / baseline`` and the lift are reported
   beside it. The report ranks moments by peak z (ties: larger lift first) and keeps the top
   `top_n`; the live path announces every one.

A moment's VOD time is its start measured from the session's first reading, so it lines up
with the stream's recording.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import pandas as pd

from agent.vocab import DEFAULT_DISPLAYED, LABELS, Reading, format_timestamp, parse_timestamp

MESSAGE_RATE = "message_rate"

# IQR of a normal distribution is 1.349 sigma.
_IQR_TO_SIGMA = 1.349
# Series arithmetic in integers: times in milliseconds, means in micro-units (the CSV's digits).
_MS = 1000
_MICRO = 1_000_000


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
        if self.smooth_seconds < 0:
            raise ValueError(f"smooth_seconds must be >= 0, got {self.smooth_seconds}")
        if self.top_n < 0:
            raise ValueError(f"top_n must be >= 0, got {self.top_n}")


@dataclass(frozen=True, slots=True)
class Moment:
    """One spike: where it is on the stream's timeline and how far above its baseline."""

    session_id: str
    kind: str  # an emotion label or MESSAGE_RATE
    start: float  # UNIX seconds: window start of the onset reading
    end: float  # UNIX seconds: window end of the last spike reading
    peak: float  # UNIX seconds: window start of the strongest reading
    start_offset: float  # seconds since the stream's first reading
    peak_offset: float
    value: float  # the series' value at the peak
    baseline: float  # the baseline median at the peak
    z: float  # robust z-score at the peak: the moment's strength
    readings: int  # how many spike readings merged into this moment
    platform: str = ""  # the timeline it was found on ("" when the table has no such column)
    channel: str = ""

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

    @property
    def label(self) -> str:
        """What rose and by how much, in a few words: "joy up 3.0x (0.60 vs 0.20)"."""
        return describe(self)


def kind_name(kind: str) -> str:
    return "chat rate" if kind == MESSAGE_RATE else kind


def describe(moment: Moment) -> str:
    """What rose and by how much: ``joy up 3.0x (0.60 vs 0.20)``,
    ``chat rate up 6.0x (720/min vs 120/min)``; ``... up from 0`` out of silence."""
    ratio = moment.ratio
    times = f"{ratio:.1f}x" if ratio is not None else "from 0"
    if moment.kind == MESSAGE_RATE:
        figures = f"{moment.value:,.0f}/min vs {moment.baseline:,.0f}/min"
    else:
        figures = f"{moment.value:.2f} vs {moment.baseline:.2f}"
    return f"{kind_name(moment.kind)} up {times} ({figures})"


def format_vod_time(seconds: float) -> str:
    """Seconds since stream start as ``HH:MM:SS`` (hours keep counting past 24)."""
    whole = max(0, math.floor(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


# ------------------------------------------------------------------------------ series


@dataclass(frozen=True, slots=True)
class _Table:
    """One timeline's readings in the integer units of step 1, sorted by start."""

    starts: np.ndarray  # int64 ms
    ends: np.ndarray  # int64 ms
    messages: np.ndarray  # int64
    scored: np.ndarray  # int64
    micro: dict[str, np.ndarray]  # label -> int64 micro-units of its mean

    def __len__(self) -> int:
        return len(self.starts)


def _table(frame: pd.DataFrame, labels: Iterable[str]) -> _Table:
    def ms(column: str) -> np.ndarray:
        return np.rint(frame[column].to_numpy(dtype=float) * _MS).astype(np.int64)

    return _Table(
        starts=ms("window_start"),
        ends=ms("window_end"),
        messages=frame["message_count"].to_numpy(dtype=np.int64),
        scored=frame["scored_count"].to_numpy(dtype=np.int64).clip(min=0),
        micro={
            label: np.rint(frame[label].to_numpy(dtype=float) * _MICRO).astype(np.int64)
            for label in labels
        },
    )


def _pool_first(table: _Table, params: MomentParams) -> np.ndarray:
    """The pool of reading i is readings first[i]..i: those starting after ends[i] - smooth."""
    smooth = round(params.smooth_seconds * _MS)
    found = np.searchsorted(table.starts, table.ends - smooth, side="right")
    return np.minimum(found, np.arange(len(table)))


def _series(
    table: _Table, labels: Iterable[str], params: MomentParams, first: np.ndarray
) -> dict[str, np.ndarray]:
    def pooled(values: np.ndarray) -> np.ndarray:
        running = np.concatenate((np.zeros(1, dtype=np.int64), np.cumsum(values)))
        return running[np.arange(1, len(values) + 1)] - running[first]

    scored_pool = pooled(table.scored)
    series: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for label in labels:
            weighted = pooled(table.micro[label] * table.scored).astype(float)
            means = weighted / _MICRO / scored_pool
            series[label] = np.where(scored_pool >= params.min_scored, means, np.nan)
        span_ms = np.maximum(
            table.ends - table.starts[first], round(params.rate_min_window_seconds * _MS)
        )
        rate = 60.0 * pooled(table.messages).astype(float) * _MS / span_ms
    series[MESSAGE_RATE] = rate
    return series


def smoothed_series(
    readings: pd.DataFrame, labels: Iterable[str], params: MomentParams | None = None
) -> dict[str, np.ndarray]:
    """Step 1 of the method for one timeline's readings, sorted by window_start: each label's
    pooled mean (NaN where too few messages were scored) and MESSAGE_RATE in messages/min."""
    params = params or MomentParams()
    labels = tuple(labels)
    table = _table(readings, labels)
    return _series(table, labels, params, _pool_first(table, params))


def _unpooled(table: _Table, kind: str, params: MomentParams) -> np.ndarray:
    """Each reading's own value of a series (no pooling), to time a moment's start."""
    if kind == MESSAGE_RATE:
        duration = np.maximum(
            table.ends - table.starts, round(params.rate_min_window_seconds * _MS)
        )
        return 60.0 * table.messages.astype(float) * _MS / duration
    values = table.micro[kind].astype(float) / _MICRO
    return np.where(table.scored > 0, values, np.nan)


@dataclass(frozen=True, slots=True)
class _Verdict:
    """Steps 1-4 for one reading of one series."""

    start: int  # ms
    end: int  # ms
    spike: bool
    z: float
    value: float
    baseline: float
    onset: int  # ms: where a moment opened by this reading starts
    evidence: int  # ms: the start of this reading's pool


def _verdicts(
    table: _Table, labels: tuple[str, ...], params: MomentParams, rows: Sequence[int]
) -> dict[str, list[_Verdict]]:
    """Each series' verdict on the readings at `rows` (every reading before them is the past
    they are judged against)."""
    first = _pool_first(table, params)
    series = _series(table, labels, params, first)
    index = pd.DatetimeIndex(pd.to_datetime(table.starts, unit="ms"))
    wanted = np.asarray(rows, dtype=np.int64)
    out: dict[str, list[_Verdict]] = {}
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
        unpooled = _unpooled(table, kind, params) if flags[wanted].any() else None
        verdicts = []
        for i in wanted.tolist():
            onset = i
            if flags[i] and unpooled is not None:
                pool = np.arange(first[i], i + 1)
                with np.errstate(invalid="ignore"):
                    risen = unpooled[pool] >= threshold[i]
                onset = int(pool[np.argmax(risen)]) if risen.any() else i
            verdicts.append(
                _Verdict(
                    start=int(table.starts[i]),
                    end=int(table.ends[i]),
                    spike=bool(flags[i]),
                    z=float(z[i]),
                    value=float(values[i]),
                    baseline=float(baseline[i]),
                    onset=int(table.starts[onset]),
                    evidence=int(table.starts[first[i]]),
                )
            )
        out[kind] = verdicts
    return out


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


# ----------------------------------------------------------------------------- merging


class MomentEventKind(StrEnum):
    STARTED = "started"  # announced: it is a moment from now on
    UPDATED = "updated"  # a later spike reading extended it (end, peak, strength)
    ENDED = "ended"  # it is over; these are its final figures


@dataclass(frozen=True, slots=True)
class MomentEvent:
    kind: MomentEventKind
    moment: Moment


@dataclass(slots=True)
class _Open:
    onset: int
    evidence: int
    last_end: int
    peak: _Verdict
    readings: int = 1
    announced: bool = False


@dataclass(slots=True)
class _Grouper:
    """Step 5 for one series of one timeline, one verdict at a time."""

    session_id: str
    kind: str
    stream_start: float
    params: MomentParams
    platform: str = ""
    channel: str = ""
    current: _Open | None = None
    finished: list[Moment] = field(default_factory=list)

    def feed(self, verdict: _Verdict) -> list[MomentEvent]:
        events: list[MomentEvent] = []
        gap = round(self.params.merge_gap_seconds * _MS)
        if self.current is not None and verdict.start - self.current.last_end > gap:
            events.extend(self.close())
        if not verdict.spike:
            return events
        group = self.current
        if group is None:
            group = self.current = _Open(
                onset=verdict.onset,
                evidence=min(verdict.evidence, verdict.onset),
                last_end=verdict.end,
                peak=verdict,
            )
        else:
            group.last_end = verdict.end
            group.readings += 1
            if verdict.z > group.peak.z:
                group.peak = verdict
        if group.announced:
            events.append(MomentEvent(MomentEventKind.UPDATED, self._moment(group)))
        elif group.last_end - group.evidence >= round(self.params.min_moment_seconds * _MS):
            group.announced = True
            events.append(MomentEvent(MomentEventKind.STARTED, self._moment(group)))
        return events

    def close(self) -> list[MomentEvent]:
        group, self.current = self.current, None
        if group is None or not group.announced:
            return []
        moment = self._moment(group)
        self.finished.append(moment)
        return [MomentEvent(MomentEventKind.ENDED, moment)]

    def _moment(self, group: _Open) -> Moment:
        start = group.onset / _MS
        peak = group.peak.start / _MS
        return Moment(
            session_id=self.session_id,
            kind=self.kind,
            start=start,
            end=group.last_end / _MS,
            peak=peak,
            start_offset=start - self.stream_start,
            peak_offset=peak - self.stream_start,
            value=group.peak.value,
            baseline=group.peak.baseline,
            z=group.peak.z,
            readings=group.readings,
            platform=self.platform,
            channel=self.channel,
        )


# ------------------------------------------------------------------------ after stream


def _check_labels(displayed: Iterable[str]) -> tuple[str, ...]:
    labels = tuple(displayed)
    unknown = [label for label in labels if label not in LABELS]
    if unknown:
        raise ValueError(f"unknown emotion label(s) {unknown}: use some of {', '.join(LABELS)}")
    return labels


def rank(moments: Iterable[Moment], top_n: int | None) -> list[Moment]:
    """Strongest first (peak z, then lift, then the earlier); the first `top_n` if given."""
    ranked = sorted(moments, key=lambda m: (-m.z, -m.lift, m.start))
    return ranked if top_n is None else ranked[:top_n]


def all_moments(
    readings: pd.DataFrame,
    *,
    displayed: Iterable[str] = DEFAULT_DISPLAYED,
    params: MomentParams | None = None,
    stream_starts: Mapping[str, float] | None = None,
) -> list[Moment]:
    """Every moment of every session in `readings`, in the order of their start: exactly the
    moments the live path announces for the same readings.

    `readings` needs the columns session_id, window_start, window_end (UNIX seconds),
    message_count, scored_count and one column per displayed label; with platform and channel
    columns each (platform, channel) timeline of a session is judged on its own.
    `stream_starts` maps a session id to the time its VOD starts; by default the session's
    first reading.
    """
    params = params or MomentParams()
    labels = _check_labels(displayed)
    if readings.empty:
        return []
    keys = [c for c in ("platform", "channel") if c in readings.columns]
    found: list[Moment] = []
    for session_id, session in readings.groupby("session_id", sort=False):
        first = float(session["window_start"].min())
        stream_start = (stream_starts or {}).get(str(session_id), first)
        timelines = session.groupby(keys, sort=False) if keys else [((), session)]
        for key, timeline in timelines:
            names = key if isinstance(key, tuple) else (key,)
            platform, channel = (*map(str, names), "", "")[:2]
            timeline = timeline.sort_values("window_start", kind="stable")
            table = _table(timeline, labels)
            verdicts = _verdicts(table, labels, params, range(len(table)))
            for kind, series in verdicts.items():
                grouper = _Grouper(str(session_id), kind, stream_start, params, platform, channel)
                for verdict in series:
                    if verdict.spike or grouper.current is not None:
                        grouper.feed(verdict)
                grouper.close()
                found.extend(grouper.finished)
    found.sort(key=lambda m: (m.start, m.kind))
    return found


def detect_moments(
    readings: pd.DataFrame,
    *,
    displayed: Iterable[str] = DEFAULT_DISPLAYED,
    params: MomentParams | None = None,
    stream_starts: Mapping[str, float] | None = None,
) -> list[Moment]:
    """The top `params.top_n` moments of every session in `readings`, strongest first (see
    `all_moments` for the arguments)."""
    params = params or MomentParams()
    if params.top_n == 0:
        _check_labels(displayed)
        return []
    found = all_moments(readings, displayed=displayed, params=params, stream_starts=stream_starts)
    return rank(found, params.top_n)


# -------------------------------------------------------------------------------- live


def _spool_ms(unix_seconds: float) -> int:
    """A time as the spool keeps it (`format_timestamp`: whole milliseconds), in ms."""
    return round(parse_timestamp(format_timestamp(unix_seconds)) * _MS)


def _spool_micro(score: float) -> int:
    """A mean as the spool keeps it (six decimals), in micro-units."""
    return round(float(f"{score:.6f}") * _MICRO)


def _pandas_median(ordered: list[float]) -> float:
    """pandas' rolling median of sorted values (roll_median_c): the middle one, or the mean
    of the two middle ones."""
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid] + ordered[mid - 1]) / 2


def _pandas_quantile(ordered: list[float], q: float) -> float:
    """pandas' rolling quantile of sorted values (roll_quantile, linear interpolation)."""
    n = len(ordered)
    if n == 1:
        return ordered[0]
    at = q * (n - 1)
    low = int(at)
    if at == low:
        return ordered[low]
    return ordered[low] + (ordered[low + 1] - ordered[low]) * (at - low)


@dataclass(slots=True)
class _Timeline:
    """One timeline's recent readings in the integer units of step 1, and each one's
    series values (fixed once computed: they depend on the past only)."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)
    weighted: dict[str, list[int]] = field(default_factory=dict)  # micro-units x scored
    micro: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    groupers: dict[str, _Grouper] = field(default_factory=dict)

    def drop_before(self, horizon: int) -> None:
        drop = bisect.bisect_left(self.starts, horizon)
        drop = min(drop, len(self.starts) - 1)
        if drop <= 0:
            return
        for column in (self.starts, self.ends, self.messages, self.scored):
            del column[:drop]
        for ints in (*self.weighted.values(), *self.micro.values()):
            del ints[:drop]
        for floats in self.values.values():
            del floats[:drop]


class LiveMoments:
    """The causal method fed one reading at a time, as the agent writes them.

    `add` returns what the reading changed: moments announced (STARTED), extended (UPDATED)
    and closed (ENDED). It computes steps 1-4 for the new reading only, with the same
    integer sums and the same median and quantile arithmetic as pandas' rolling windows
    that `all_moments` uses, so both find bit-identical moments; each timeline keeps only the
    readings its next verdict can depend on (the baseline window plus the smoothing window),
    so time and memory per reading stay flat over a long stream. Readings of one timeline
    must come in the order of their start (the agent's windows do).
    """

    def __init__(
        self,
        *,
        displayed: Iterable[str] = DEFAULT_DISPLAYED,
        params: MomentParams | None = None,
    ) -> None:
        self.params = params or MomentParams()
        self.labels = _check_labels(displayed)
        self._timelines: dict[tuple[str, str, str], _Timeline] = {}
        self._stream_starts: dict[str, float] = {}
        p = self.params
        self._baseline_ms = round(pd.Timedelta(minutes=p.baseline_minutes).value / 1_000_000)
        self._smooth_ms = round(p.smooth_seconds * _MS)
        self._keep_ms = self._baseline_ms + self._smooth_ms + _MS
        self._rate_window_ms = round(p.rate_min_window_seconds * _MS)

    def _timeline(self, reading: Reading, start_ms: int) -> _Timeline:
        key = (reading.session_id, reading.platform, reading.channel)
        timeline = self._timelines.get(key)
        if timeline is None:
            stream_start = self._stream_starts.setdefault(reading.session_id, start_ms / _MS)
            timeline = self._timelines[key] = _Timeline()
            for kind in (*self.labels, MESSAGE_RATE):
                timeline.groupers[kind] = _Grouper(
                    reading.session_id,
                    kind,
                    stream_start,
                    self.params,
                    reading.platform,
                    reading.channel,
                )
                timeline.values[kind] = []
            for label in self.labels:
                timeline.weighted[label] = []
                timeline.micro[label] = []
        return timeline

    def add(self, reading: Reading) -> list[MomentEvent]:
        p = self.params
        start, end = _spool_ms(reading.window_start), _spool_ms(reading.window_end)
        t = self._timeline(reading, start)
        t.drop_before(start - self._keep_ms)
        scored = max(0, int(reading.scored_count))
        t.starts.append(start)
        t.ends.append(end)
        t.messages.append(int(reading.message_count))
        t.scored.append(scored)
        for label in self.labels:
            micro = _spool_micro(reading.scores[LABELS.index(label)])
            t.micro[label].append(micro)
            t.weighted[label].append(micro * scored)
        i = len(t.starts) - 1
        # Step 1: the pool, readings first..i (those starting after end - smooth).
        first = min(bisect.bisect_right(t.starts, end - self._smooth_ms), i)
        scored_pool = sum(t.scored[first:])
        current: dict[str, float] = {}
        for label in self.labels:
            weighted = float(sum(t.weighted[label][first:]))
            mean = weighted / _MICRO / scored_pool if scored_pool else math.nan
            current[label] = mean if scored_pool >= p.min_scored else math.nan
        span = max(end - t.starts[first], self._rate_window_ms)
        current[MESSAGE_RATE] = 60.0 * float(sum(t.messages[first:])) * _MS / span
        # Step 2: the baseline, readings starting in [start - baseline, start).
        low = bisect.bisect_left(t.starts, start - self._baseline_ms)
        high = bisect.bisect_left(t.starts, start)
        events: list[MomentEvent] = []
        for kind, value in current.items():
            past = sorted(v for v in t.values[kind][low:high] if not math.isnan(v))
            t.values[kind].append(value)
            verdict = self._verdict(t, kind, value, past, first, i)
            events.extend(t.groupers[kind].feed(verdict))
        return events

    def _verdict(
        self, t: _Timeline, kind: str, value: float, past: list[float], first: int, i: int
    ) -> _Verdict:
        p = self.params
        is_rate = kind == MESSAGE_RATE
        floor = p.rate_scale_floor if is_rate else p.emotion_scale_floor
        min_lift = p.rate_min_lift if is_rate else p.emotion_min_lift
        spike = False
        z = baseline = math.nan
        onset = i
        if past:
            baseline = _pandas_median(past)
            spread = (_pandas_quantile(past, 0.75) - _pandas_quantile(past, 0.25)) / _IQR_TO_SIGMA
            threshold = max(baseline + min_lift, baseline + p.z_threshold * (spread + floor))
            if is_rate:
                threshold = max(threshold, p.rate_min_ratio * baseline)
            z = (value - baseline) / (spread + floor)
            spike = (
                len(past) >= p.min_baseline_readings
                and not math.isnan(value)
                and value >= threshold
            )
            if spike:
                for k in range(first, i + 1):
                    if self._unpooled(t, kind, k) >= threshold:
                        onset = k
                        break
        return _Verdict(
            start=t.starts[i],
            end=t.ends[i],
            spike=spike,
            z=z,
            value=value,
            baseline=baseline,
            onset=t.starts[onset],
            evidence=t.starts[first],
        )

    def _unpooled(self, t: _Timeline, kind: str, k: int) -> float:
        if kind == MESSAGE_RATE:
            duration = max(t.ends[k] - t.starts[k], self._rate_window_ms)
            return 60.0 * float(t.messages[k]) * _MS / duration
        return t.micro[kind][k] / _MICRO if t.scored[k] > 0 else math.nan

    def finish(self, session_id: str | None = None) -> list[MomentEvent]:
        """The stream ended (of `session_id`, or every one): close the open moments."""
        events: list[MomentEvent] = []
        for key, timeline in list(self._timelines.items()):
            if session_id is not None and key[0] != session_id:
                continue
            for grouper in timeline.groupers.values():
                events.extend(grouper.close())
        return events

    def moments(self, session_id: str | None = None) -> list[Moment]:
        """Every moment announced so far (open ones with their figures so far), by start."""
        found: list[Moment] = []
        for key, timeline in self._timelines.items():
            if session_id is not None and key[0] != session_id:
                continue
            for grouper in timeline.groupers.values():
                found.extend(grouper.finished)
                if grouper.current is not None and grouper.current.announced:
                    found.append(grouper._moment(grouper.current))
        found.sort(key=lambda m: (m.start, m.kind))
        return found


def with_offsets(moment: Moment, stream_start: float) -> Moment:
    """The same moment timed from another VOD start."""
    return replace(
        moment,
        start_offset=moment.start - stream_start,
        peak_offset=moment.peak - stream_start,
    )
