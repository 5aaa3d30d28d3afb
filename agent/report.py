"""The local report: one self-contained HTML file showing how a stream's chat felt over time.

`build_report` reads the spooled readings (open, sealed and uploaded parts) with pandas,
picks one session, finds its moments (`agent.moments`) on the full-resolution readings, and
writes one HTML file that needs no network: the chart is an inline SVG drawn by a small
inline script (agent/data/report_template.html), the data an inline JSON block.

Chart downsampling: a session's time span is cut into equal time buckets, at most
`MAX_CHART_POINTS` of them, and never shorter than the median reading window or two mean
spacings between readings (so a bucket normally pools a couple of readings and a chart of a
short stream is not a saw-tooth of single readings). Per bucket:

- each emotion: the mean probability over all scored messages in the bucket (the readings'
  means weighted by their scored count), so a bucket tells the same story as one big reading;
- message rate: the bucket's messages per minute of bucket time (the last, partial bucket is
  measured up to the last reading's end);
- dominant emotion: the displayed emotion with the highest bucket mean.

Buckets with no reading are left out. Readings only exist where chat said something, so the
chart joins emotion points across empty buckets up to `connect` seconds apart
(max(3 buckets, `CONNECT_SECONDS`)) and breaks its lines over longer gaps, while the message
rate drops to zero over every empty bucket. A 12-hour stream at one reading per second
(43,200 readings) becomes 2,000 points per series; the spikes that bucket means flatten are
still found, because moments use every reading, and are drawn as numbered markers.

Everything that came from data is escaped: HTML text with `html.escape`, the JSON block with
`<`, `>` and `&` as unicode escapes so no value can close the script element.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agent.errors import CaptaFlowError, UsageError
from agent.layout import (
    FORMAT_COLUMNS,
    OPEN_DIR,
    SEALED_DIR,
    UPLOADED_DIR,
    checksum_problem,
    corrupt_files,
    format_of_header,
    header_line,
    part_files,
)
from agent.moments import MESSAGE_RATE, Moment, MomentParams, detect_moments
from agent.vocab import DEFAULT_DISPLAYED, LABELS, READING_COLUMNS

log = logging.getLogger("captaflow.report")

# (session_id, start_unix, end_unix, k) -> up to k message texts from the local journal.
SampleSource = Callable[[str, float, float, int], list[str]]

MAX_CHART_POINTS = 2000
CONNECT_SECONDS = 120.0
SAMPLES_PER_MOMENT = 3
SAMPLE_MAX_CHARS = 200
KNOWN_IDS_SHOWN = 5

# Spool areas in the order parts move through them. Listing and reading them in this order
# means a part moved on while we read (open → sealed → uploaded) is met again further on;
# the rare double read is dropped by batch_id.
_AREAS: tuple[str, ...] = (OPEN_DIR, SEALED_DIR, UPLOADED_DIR)
_HEADER_LINES = tuple(header_line(v) for v in FORMAT_COLUMNS)
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
_INT_COLUMNS = ("seq", "message_count", "scored_count")
# Counts are read as float so a missing value is NaN, not an error; _typed makes them int.
_FAST_DTYPES: dict[str, Any] = {
    column: float if column in (*_INT_COLUMNS, *LABELS) else str for column in READING_COLUMNS
}

# One colour per label, fixed so a label looks the same in every report.
COLORS: dict[str, str] = {
    "anger": "#d62728",
    "anticipation": "#ff7f0e",
    "disgust": "#8c8c1a",
    "fear": "#9467bd",
    "joy": "#e6ac00",
    "love": "#e377c2",
    "optimism": "#2ca02c",
    "pessimism": "#8c564b",
    "sadness": "#1f77b4",
    "surprise": "#17becf",
    "trust": "#3b6e8f",
    MESSAGE_RATE: "#555555",
}


class ReportError(CaptaFlowError):
    """The report cannot be made: no readings yet, or the file cannot be written."""


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class SpoolScan:
    """The readings of a spool and what was left out of them."""

    readings: pd.DataFrame
    skipped: list[str]  # one line per part left out (checksum, header, unreadable)
    corrupt: int  # parts the agent or the sync set aside in corrupt/


def load_readings(spool_dir: Path) -> pd.DataFrame:
    """Every reading in the spool's open, sealed and uploaded parts, one row each.

    Columns: READING_COLUMNS, with window_start/window_end as UNIX seconds (float), plus
    `part_state` ("open", "sealed" or "uploaded"). Sorted by session, window_start, seq.
    Parts of every format version are read (columns an older format lacks are empty).
    A partial or invalid row (an open part's row in flight, a damaged file) is left out;
    a part that fails its checksum or whose header is no format's is skipped with a warning;
    corrupt/ is ignored. Empty frame (with those columns) when there is nothing.
    """
    return scan_spool(spool_dir).readings


def scan_spool(spool_dir: Path) -> SpoolScan:
    """`load_readings`, plus which parts were skipped and how many wait in corrupt/."""
    spool_dir = Path(spool_dir)
    frames = []
    skipped: list[str] = []
    for area in _AREAS:
        try:
            paths = sorted(part_files(spool_dir, area))
        except OSError as exc:
            log.warning("report: cannot list %s: %s", spool_dir / area, exc.strerror or exc)
            continue
        for path in paths:
            read = _read_part(path, open_part=area == OPEN_DIR)
            if isinstance(read, str):
                log.warning("report: %s", read)
                skipped.append(read)
                continue
            if read is None:
                continue
            version, body = read
            frame = _parse_body(body, version)
            frame["part_state"] = area
            frames.append(frame)
    corrupt = len(corrupt_files(spool_dir))
    if not frames:
        return SpoolScan(_empty_readings(), skipped, corrupt)
    return SpoolScan(_typed(pd.concat(frames, ignore_index=True)), skipped, corrupt)


def _parse_body(body: str, version: int) -> pd.DataFrame:
    """The rows of one part as a frame; numbers parsed by the C reader where they all parse.

    Columns a later format added are filled with their default ("")."""
    columns = list(FORMAT_COLUMNS[version])
    options: dict[str, Any] = {
        "header": None,
        "names": columns,
        "keep_default_na": False,
        "na_values": [],
        "on_bad_lines": "skip",
        "engine": "c",
    }
    try:
        # Fast path: parsing numbers while reading is twice as fast as converting strings.
        dtypes = {column: _FAST_DTYPES[column] for column in columns}
        frame = pd.read_csv(io.StringIO(body), dtype=dtypes, **options)
    except (ValueError, TypeError):
        # A damaged value somewhere: read as text and let _typed drop just the bad rows.
        frame = pd.read_csv(io.StringIO(body), dtype=str, **options)
    for column in READING_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    return frame[list(READING_COLUMNS)]


def _read_part(path: Path, *, open_part: bool) -> tuple[int, str] | str | None:
    """(format version, data lines) of one part; None when it holds nothing (yet), or one
    line saying why it is left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None  # moved to the next area while we listed; read there
    except OSError as exc:
        return f"skipped unreadable spool part {path}: {exc.strerror or exc}"
    if not open_part:
        # A part without a recorded checksum is read leniently, row by row, as before.
        problem = checksum_problem(path, data)
        if problem is not None:
            return f"skipped spool part {path}: {problem}"
    header, newline, rest = data.partition(b"\n")
    version = format_of_header(header) if newline else None
    if version is None:
        if data and not any(h.startswith(data) for h in _HEADER_LINES):
            return f"skipped {path}: its header is not the reading columns"
        return None
    body = rest.decode("utf-8", errors="replace")
    if open_part and body and not body.endswith("\n"):
        # The row being written when we read: incomplete, so not a reading yet.
        body = body[: body.rfind("\n") + 1]
    return (version, body) if body else None


def _typed(raw: pd.DataFrame) -> pd.DataFrame:
    frame = raw.copy()
    for column in ("window_start", "window_end"):
        stamps = pd.to_datetime(frame[column], format=_TIME_FORMAT, utc=True, errors="coerce")
        frame[column] = (stamps - _EPOCH) / pd.Timedelta(seconds=1)
    for column in (*_INT_COLUMNS, *LABELS):
        if frame[column].dtype != float:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    numeric = ["window_start", "window_end", *_INT_COLUMNS, *LABELS]
    valid = frame[numeric].notna().all(axis=1)
    valid &= frame["session_id"].fillna("").str.len() > 0
    valid &= frame[list(LABELS)].ge(0).all(axis=1) & frame[list(LABELS)].le(1).all(axis=1)
    dropped = int((~valid).sum())
    if dropped:
        log.warning("report: left out %d invalid spool row(s)", dropped)
    frame = frame[valid]
    frame = frame.drop_duplicates("batch_id", keep="first")
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("int64")
    frame = frame.sort_values(["session_id", "window_start", "seq"], kind="stable")
    return frame.reset_index(drop=True)


def _empty_readings() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: pd.Series(dtype=str) for c in (*READING_COLUMNS, "part_state")}))


# --------------------------------------------------------------------------- sessions


def summarize_sessions(readings: pd.DataFrame) -> pd.DataFrame:
    """One row per session, newest first: session_id, platform, channel, start, end,
    duration (seconds), readings, messages, state ("recording", "on disk" or "uploaded")."""
    grouped = readings.groupby("session_id", sort=False)
    sessions = grouped.agg(
        platform=("platform", "first"),
        channel=("channel", "first"),
        start=("window_start", "min"),
        end=("window_end", "max"),
        readings=("batch_id", "size"),
        messages=("message_count", "sum"),
    )
    state = readings["part_state"]
    has_open = (state == "open").groupby(readings["session_id"]).any()
    all_uploaded = (state == "uploaded").groupby(readings["session_id"]).all()
    sessions["state"] = np.where(
        has_open.reindex(sessions.index),
        "recording",
        np.where(all_uploaded.reindex(sessions.index), "uploaded", "on disk"),
    )
    sessions["duration"] = sessions["end"] - sessions["start"]
    # Replays of one recording share their chat's times: between those, the session started
    # last on this PC (its id begins with that UTC instant) is the newer.
    sessions = sessions.reset_index().sort_values(
        ["start", "session_id"], ascending=[False, False], kind="stable"
    )
    return sessions.reset_index(drop=True)


def choose_session(
    sessions: pd.DataFrame,
    *,
    session_id: str | None,
    latest: bool,
    date: str | None,
    spool_dir: Path,
) -> str:
    """The id of the session to report: by id, by UTC start date (the latest that day), or
    the latest session (also when nothing is asked for)."""
    if sum(x is not None and x is not False for x in (session_id, date, latest or None)) > 1:
        raise UsageError("choose one of --session ID, --latest or --date YYYY-MM-DD, not several")
    if session_id is not None:
        if session_id in set(sessions["session_id"]):
            return session_id
        known = list(sessions["session_id"].head(KNOWN_IDS_SHOWN))
        more = len(sessions) - len(known)
        listing = ", ".join(known) + (f" (and {more} more)" if more > 0 else "")
        raise UsageError(
            f"no session {session_id!r} in {spool_dir}: known sessions (newest first) are {listing}"
        )
    if date is not None:
        try:
            datetime.strptime(date, "%Y-%m-%d")
        except ValueError:
            raise UsageError(
                f"date {date!r} is not a valid YYYY-MM-DD date (for example 2024-05-01)"
            ) from None
        days = sessions["start"].map(_utc_day)
        on_day = sessions[days == date]
        if on_day.empty:
            known_days = ", ".join(dict.fromkeys(days.head(KNOWN_IDS_SHOWN * 4)).keys())
            raise UsageError(
                f"no session started on {date} (UTC) in {spool_dir}: sessions started on "
                f"{known_days}"
            )
        return str(on_day["session_id"].iloc[0])
    return str(sessions["session_id"].iloc[0])


def _utc_day(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%Y-%m-%d")


def _utc_clock(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------ chart


def chart_data(
    session: pd.DataFrame, displayed: Sequence[str], max_points: int = MAX_CHART_POINTS
) -> dict[str, Any]:
    """The chart's series for one session's readings, bucketed as the module docstring says.

    Returns t0 (UNIX seconds of the first reading), span, bucket and connect (seconds), x (bucket
    centres as seconds since t0), series (label → means, None for no scored message),
    rate (messages per minute) and dominant (index into `displayed`, -1 when unknown).
    """
    starts = session["window_start"].to_numpy(dtype=float)
    ends = session["window_end"].to_numpy(dtype=float)
    t0 = float(starts.min())
    last = float(ends.max())
    span = max(last - t0, 1.0)
    typical_window = float(np.median(ends - starts))
    bucket = max(span / max_points, typical_window, 2 * span / len(starts), 1.0)
    index = np.minimum(((starts - t0) // bucket).astype(np.int64), max_points - 1)

    weights = session["scored_count"].to_numpy(dtype=float).clip(min=0)
    frame = pd.DataFrame(
        {
            "bucket": index,
            "mid": (starts + ends) / 2 - t0,
            "messages": session["message_count"].to_numpy(dtype=float),
            "weight": weights,
        }
    )
    for label in displayed:
        frame[label] = session[label].to_numpy(dtype=float) * weights
    sums = frame.groupby("bucket", sort=True).sum()
    counts = frame.groupby("bucket", sort=True).size()
    buckets = sums.index.to_numpy()

    covered = np.minimum(bucket, last - (t0 + buckets * bucket)).clip(min=1.0)
    rate = 60.0 * sums["messages"].to_numpy() / covered
    x = sums["mid"].to_numpy() / counts.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.column_stack(
            [sums[label].to_numpy() / sums["weight"].to_numpy() for label in displayed]
        )
    known = sums["weight"].to_numpy() > 0
    dominant = np.where(known, np.argmax(np.nan_to_num(means, nan=-1.0), axis=1), -1)

    return {
        "t0": t0,
        "span": span,
        "bucket": bucket,
        "connect": max(3 * bucket, CONNECT_SECONDS),
        "x": _rounded(x, 1),
        "series": {label: _rounded(means[:, i], 4) for i, label in enumerate(displayed)},
        "rate": _rounded(rate, 1),
        "dominant": [int(d) for d in dominant],
    }


def _rounded(values: np.ndarray, digits: int) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in values]


def _script_json(payload: object) -> str:
    """JSON safe inside <script>: nothing in it can close the element or start markup."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


# ----------------------------------------------------------------------------- report


def build_report(
    spool_dir: Path,
    *,
    session_id: str | None = None,
    latest: bool = False,
    date: str | None = None,
    displayed: tuple[str, ...] = DEFAULT_DISPLAYED,
    samples: SampleSource | None = None,
    out: Path,
    params: MomentParams | None = None,
    max_points: int = MAX_CHART_POINTS,
    model_labels: Mapping[str, str | None] | None = None,
) -> Path:
    """Write the HTML report of one session to `out` and return its path.

    `model_labels` maps a model id to its test-model label (None for a real model), as
    `agent.model_download.model_labels` reads it from a bundle: the page names the model
    its readings came from and warns when that is a test model (random emotions).

    The session is `session_id`, else the latest one started on `date` (UTC, YYYY-MM-DD),
    else the latest one (`latest`, also the default). `samples` gives each moment a few
    chat messages from the local journal; without it the moments have none.
    """
    spool_dir = Path(spool_dir)
    displayed = _check_displayed(displayed)
    scan = scan_spool(spool_dir)
    readings = scan.readings
    if readings.empty:
        raise ReportError(
            f"no readings in {spool_dir} yet: run `captaflow demo` or "
            "`captaflow run --channel NAME` first"
        )
    sessions = summarize_sessions(readings)
    chosen = choose_session(
        sessions, session_id=session_id, latest=latest, date=date, spool_dir=spool_dir
    )
    session = readings[readings["session_id"] == chosen]
    moments = detect_moments(session, displayed=displayed, params=params)
    found_samples = [_samples_for(m, samples) for m in moments]
    page = render_report(
        session,
        sessions,
        chosen,
        moments,
        found_samples,
        displayed=displayed,
        journal_available=samples is not None,
        max_points=max_points,
        model_banner=model_banner_html(session, model_labels or {})
        + spool_notes_html(scan, spool_dir)
        + platforms_html(readings, sessions, chosen, displayed),
    )
    return _write_atomically(Path(out), page)


def spool_notes_html(scan: SpoolScan, spool_dir: Path) -> str:
    """What the report left out: parts that failed their checksum (or could not be read) and
    the parts set aside in corrupt/. Empty when nothing was left out."""
    if not scan.skipped and not scan.corrupt:
        return ""
    items = [f"<li>{_esc(line)}</li>" for line in scan.skipped[:10]]
    if len(scan.skipped) > 10:
        items.append(f"<li>… and {len(scan.skipped) - 10} more (see the log)</li>")
    if scan.corrupt:
        items.append(
            f"<li>{scan.corrupt} part(s) set aside in <code>{_esc(spool_dir / 'corrupt')}</code>"
            " (damaged, never uploaded) are not shown</li>"
        )
    return (
        '<div class="banner warn" role="note" style="background:#fee2e2;color:#991b1b;'
        'padding:6px 10px;font-size:14px"><b>Some readings are left out of this report.'
        "</b><ul>" + "".join(items) + "</ul></div>"
    )


def companion_sessions(readings: pd.DataFrame, sessions: pd.DataFrame, chosen: str) -> list[str]:
    """The sessions of the same multistream as `chosen` (chosen first, then by platform):
    sessions of other platforms that came through the same bridge (`via`) and overlap it in
    time. A multistream feed is windowed per platform, so each platform has its own session
    (pure)."""
    via = readings.loc[readings["session_id"] == chosen, "via"]
    bridge = next((str(v) for v in via if str(v)), "")
    if not bridge:
        return [chosen]
    info = sessions.set_index("session_id")
    start, end = float(info.at[chosen, "start"]), float(info.at[chosen, "end"])
    found = [chosen]
    for other, group in readings.groupby("session_id", sort=False):
        other = str(other)
        if other == chosen or bridge not in set(group["via"].astype(str)):
            continue
        o_start, o_end = float(info.at[other, "start"]), float(info.at[other, "end"])
        if (
            o_start <= end
            and start <= o_end
            and info.at[other, "platform"] != info.at[chosen, "platform"]
        ):
            found.append(other)
    # The chosen platform first, the others by name: the same order in every report.
    return [chosen, *sorted(found[1:], key=lambda sid: (str(info.at[sid, "platform"]), sid))]


PLATFORM_CHART_BUCKETS = 120


def platforms_html(
    readings: pd.DataFrame, sessions: pd.DataFrame, chosen: str, displayed: Sequence[str]
) -> str:
    """A multistream's platforms side by side: one small chart and the means per platform,
    on one time axis. Empty for a session that is not part of a multistream."""
    ids = companion_sessions(readings, sessions, chosen)
    if len(ids) < 2:
        return ""
    part = readings[readings["session_id"].isin(ids)]
    t0 = float(part["window_start"].min())
    span = max(float(part["window_end"].max()) - t0, 1.0)
    bucket = span / PLATFORM_CHART_BUCKETS
    columns = []
    for session_id in ids:
        rows = part[part["session_id"] == session_id]
        platform = str(rows["platform"].iloc[0])
        weights = rows["scored_count"].to_numpy(dtype=float).clip(min=0)
        total = max(weights.sum(), 1e-9)
        means = {
            label: float((rows[label].to_numpy(dtype=float) * weights).sum() / total)
            for label in displayed
        }
        top = max(displayed, key=lambda label: means[label])
        columns.append(
            '<div class="platform">'
            f"<h3>{_esc(platform)} <small>{_esc(str(rows['channel'].iloc[0]))}</small></h3>"
            + _platform_svg(rows, displayed, t0, span, bucket)
            + f'<p class="meta">{len(rows):,} readings · '
            f"{int(rows['message_count'].sum()):,} messages · mostly {_esc(top)}</p>"
            + "<table><tbody>"
            + "".join(
                f'<tr><td><span class="swatch" style="background:{COLORS[label]}"></span>'
                f'{_esc(label)}</td><td class="num">{means[label]:.2f}</td></tr>'
                for label in displayed
            )
            + f"</tbody></table><p><small>session <code>{_esc(session_id)}</code></small></p>"
            "</div>"
        )
    bridge = next((str(v) for v in part["via"] if str(v)), "")
    return (
        '<section class="platforms"><h2>Platforms side by side</h2>'
        f'<p class="note">One multistream through {_esc(bridge)}, windowed per platform; the '
        f"charts share one time axis of {_esc(_duration(span))}.</p>"
        '<div style="display:flex;gap:16px;flex-wrap:wrap">' + "".join(columns) + "</div>"
        "</section>"
    )


def _platform_svg(
    rows: pd.DataFrame, displayed: Sequence[str], t0: float, span: float, bucket: float
) -> str:
    width, height = 360.0, 120.0
    index = ((rows["window_start"].to_numpy(dtype=float) - t0) // bucket).astype(np.int64)
    weights = rows["scored_count"].to_numpy(dtype=float).clip(min=0)
    frame = pd.DataFrame({"bucket": index, "weight": weights})
    for label in displayed:
        frame[label] = rows[label].to_numpy(dtype=float) * weights
    sums = frame.groupby("bucket", sort=True).sum()
    lines = []
    for label in displayed:
        points = []
        for b, row in sums.iterrows():
            if row["weight"] <= 0:
                continue
            x = (float(b) + 0.5) * bucket / span * width
            y = height - float(row[label] / row["weight"]) * height
            points.append(f"{x:.1f},{y:.1f}")
        if points:
            lines.append(
                f'<polyline fill="none" stroke="{COLORS[label]}" stroke-width="1.5" '
                f'points="{" ".join(points)}"/>'
            )
    return (
        f'<svg viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        'role="img" aria-label="emotions over time" style="background:#fafafa;border:1px solid '
        '#ddd">' + "".join(lines) + "</svg>"
    )


def model_banner_html(session: pd.DataFrame, labels: Mapping[str, str | None]) -> str:
    """Which model made the readings, and a warning when it is a test model."""
    if "model_id" not in session.columns or session.empty:
        return ""
    ids = [str(x) for x in dict.fromkeys(session["model_id"].tolist())]
    named = ", ".join(f"<code>{_esc(model)}</code>" for model in ids)
    tests = [
        labels.get(model) or ("random weights" if "random" in model else None) for model in ids
    ]
    found = [label for label in tests if label]
    if found:
        return (
            f'<p class="badge test-model" style="display:block;background:#fef3c7;'
            f'color:#92400e;padding:6px 10px;font-size:14px">&#9888; TEST MODEL '
            f"({_esc(', '.join(dict.fromkeys(found)))}): these readings come from {named}, "
            f"a model with random weights; the emotions mean nothing about the chat.</p>"
        )
    return f'<p class="meta">readings by {named}</p>'


def _check_displayed(displayed: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(displayed))
    unknown = [label for label in chosen if label not in LABELS]
    if unknown or not chosen:
        raise UsageError(
            f"emotions to display {list(displayed)!r} must be some of: {', '.join(LABELS)}"
        )
    return chosen


def _samples_for(moment: Moment, samples: SampleSource | None) -> list[str] | str:
    """Up to SAMPLES_PER_MOMENT texts, or a one-line reason why there are none."""
    if samples is None:
        return []
    try:
        texts = samples(moment.session_id, moment.start, moment.end, SAMPLES_PER_MOMENT)
    except (CaptaFlowError, OSError, sqlite3.Error) as exc:
        # The report is still worth having when the journal is busy or gone.
        log.warning("report: no sample messages for %s: %s", moment.vod_time, exc)
        return f"journal unavailable: {exc}"
    return [_clip(str(text)) for text in list(texts)[:SAMPLES_PER_MOMENT]]


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_MAX_CHARS else text[: SAMPLE_MAX_CHARS - 1] + "…"


def _write_atomically(out: Path, page: str) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8", newline="\n")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(
            f"cannot write the report to {out}: {exc.strerror or exc}; choose another --out"
        ) from exc
    return out


def render_report(
    session: pd.DataFrame,
    sessions: pd.DataFrame,
    chosen: str,
    moments: Sequence[Moment],
    moment_samples: Sequence[list[str] | str],
    *,
    displayed: tuple[str, ...],
    journal_available: bool,
    max_points: int = MAX_CHART_POINTS,
    model_banner: str = "",
) -> str:
    """The report page as a string (pure: no I/O besides reading the packaged template)."""
    info = sessions[sessions["session_id"] == chosen].iloc[0]
    data = chart_data(session, displayed, max_points)
    data["labels"] = list(displayed)
    data["colors"] = {label: COLORS[label] for label in (*displayed, MESSAGE_RATE)}
    data["moments"] = [
        {
            "n": rank,
            "x": round(m.start_offset, 1),
            "x_end": round(m.end - m.start + m.start_offset, 1),
            "kind": m.kind,
        }
        for rank, m in enumerate(moments, start=1)
    ]
    values = {
        "TITLE": _esc(f"CaptaFlow · {info['channel']} · {chosen}"),
        "SUMMARY": _summary_html(info) + model_banner,
        "LEGEND": _legend_html(displayed),
        "MOMENTS": _moments_html(moments, moment_samples, journal_available),
        "SESSIONS": _sessions_html(sessions, chosen),
        "DATA": _script_json(data),
        "POINTS": str(len(data["x"])),
        "BUCKET": _esc(_duration(data["bucket"])),
        "READINGS": f"{len(session):,}",
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], _template())


def _template() -> str:
    return (resources.files("agent") / "data" / "report_template.html").read_text(encoding="utf-8")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _kind_name(kind: str) -> str:
    return "message rate" if kind == MESSAGE_RATE else kind


def _summary_html(info: pd.Series) -> str:
    recording = (
        ' <span class="badge live">still recording: build the report again for newer readings'
        "</span>"
        if info["state"] == "recording"
        else ""
    )
    return (
        f"<h1>{_esc(info['channel'])} <small>on {_esc(info['platform'])}</small></h1>"
        f'<p class="meta">session <code>{_esc(info["session_id"])}</code> · started '
        f"{_esc(_utc_clock(info['start']))} · {_esc(_duration(info['duration']))} · "
        f"{int(info['readings']):,} readings · {int(info['messages']):,} messages{recording}</p>"
    )


def _legend_html(displayed: tuple[str, ...]) -> str:
    items = [
        f'<button type="button" class="key" data-series="{_esc(label)}" aria-pressed="true">'
        f'<span class="swatch" style="background:{COLORS[label]}"></span>{_esc(label)}</button>'
        for label in displayed
    ]
    return "".join(items)


def _moments_html(
    moments: Sequence[Moment], moment_samples: Sequence[list[str] | str], journal_available: bool
) -> str:
    if not moments:
        return (
            '<p class="empty">No moments: no emotion or message rate rose clearly above its '
            "baseline of the previous minutes.</p>"
        )
    rows = []
    for rank, (moment, texts) in enumerate(zip(moments, moment_samples, strict=True), start=1):
        rows.append(
            f'<tr id="moment-{rank}" data-x="{moment.start_offset:.1f}">'
            f'<td class="num">{rank}</td>'
            f'<td class="vod"><b>{moment.vod_time}</b><br><small>peak {moment.peak_vod_time}'
            f" · {_esc(_duration(max(moment.end - moment.start, 1)))}</small></td>"
            f'<td><span class="swatch" style="background:{COLORS[moment.kind]}"></span>'
            f"{_esc(_kind_name(moment.kind))}</td>"
            f"<td>{_strength_html(moment)}</td>"
            f"<td>{_value_html(moment)}</td>"
            f"<td>{_samples_html(texts, journal_available)}</td>"
            f'<td class="clock">{_esc(_utc_clock(moment.start))}</td>'
            "</tr>"
        )
    return (
        '<table class="moments"><thead><tr><th>#</th><th>VOD time</th><th>what</th>'
        "<th>strength vs baseline</th><th>value vs baseline</th><th>sample messages</th>"
        "<th>wall clock</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _strength_html(moment: Moment) -> str:
    ratio = moment.ratio
    times = f"×{ratio:.1f}" if ratio is not None else "from zero"
    return f"<b>{_esc(times)}</b> <small>z {moment.z:.1f}</small>"


def _value_html(moment: Moment) -> str:
    if moment.kind == MESSAGE_RATE:
        return f"{moment.value:,.0f}/min <small>vs {moment.baseline:,.0f}/min</small>"
    return f"{moment.value:.2f} <small>vs {moment.baseline:.2f}</small>"


def _samples_html(texts: list[str] | str, journal_available: bool) -> str:
    if isinstance(texts, str):
        return f'<span class="empty">{_esc(texts)}</span>'
    if not texts:
        why = "no longer in the journal" if journal_available else "no journal on this PC"
        return f'<span class="empty">{why}</span>'
    return '<ul class="samples">' + "".join(f"<li>{_esc(t)}</li>" for t in texts) + "</ul>"


def _sessions_html(sessions: pd.DataFrame, chosen: str) -> str:
    rows = []
    for row in sessions.itertuples(index=False):
        mine = row.session_id == chosen
        rows.append(
            ('<tr class="chosen" aria-current="true">' if mine else "<tr>")
            + f"<td><code>{_esc(row.session_id)}</code>{' ◀ this report' if mine else ''}</td>"
            f"<td>{_esc(row.channel)}</td><td>{_esc(row.platform)}</td>"
            f"<td>{_esc(_utc_clock(row.start))}</td><td>{_esc(_duration(row.duration))}</td>"
            f'<td class="num">{int(row.readings):,}</td>'
            f'<td class="num">{int(row.messages):,}</td><td>{_esc(row.state)}</td></tr>'
        )
    return (
        '<table class="sessions"><thead><tr><th>session</th><th>channel</th><th>platform</th>'
        "<th>start</th><th>duration</th><th>readings</th><th>messages</th><th>state</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
