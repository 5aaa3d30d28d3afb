"""A session's moments where editors work: a CSV, a CMX3600 EDL with markers, YouTube chapters.

The formatters are pure functions over `agent.moments.Moment` lists; `session_markers` reads a
session's readings from the spool (the same moments as the report, every one of them, in
VOD order) and is what ``captaflow markers --session ID --format csv|edl|chapters`` calls.

Formats
    **csv**: one row per moment: VOD time, emotion, strength (peak robust z) and ratio, the
    values against their baseline, and a few sample messages from the local journal. Quoted
    by the csv module; a cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``,
    ``@``) is prefixed with ``'`` (OWASP's advice against CSV injection): chat is hostile.

    **edl**: CMX3600 (the grammar of Harris, *Guide to EDL Management*, 1995,
    http://www.edlmax.com/MAXGUIDE.HTML, and of DaVinci Resolve's manual, "Conforming EDL
    Files" and "Exporting Timeline Markers to EDL"): a ``TITLE:`` line, an ``FCM: NON-DROP
    FRAME`` line, then one event per moment: a three-digit event number, an eight-character
    reel name, the track (``V``), the transition (``C``, a cut) and four timecodes (source
    in/out, record in/out, ``HH:MM:SS:FF``), followed by Resolve's marker comment
    ``|C:ResolveColorBlue |M:name |D:frames`` (Timelines > Import > Timeline Markers from
    EDL) and a ``* FROM CLIP NAME:`` comment that Premiere Pro shows as the event's name.
    Record times are the VOD time plus the timeline's start (Resolve's default 01:00:00:00;
    Premiere's 00:00:00:00).

    **chapters**: YouTube's chapter list for a video's description: the first at ``0:00``, at
    least three, each at least ten seconds long (YouTube's rules); moments closer than that
    to the previous chapter are named in it instead.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import CaptaFlowError, UsageError
from agent.moments import MESSAGE_RATE, Moment, describe, kind_name

FORMATS: tuple[str, ...] = ("csv", "edl", "chapters")
EDL_FRAME_RATES: tuple[int, ...] = (24, 25, 30, 50, 60)
EDL_MAX_EVENTS = 999
EDL_REEL = "001"
CHAPTER_MIN_SECONDS = 10.0
CHAPTERS_MIN = 3
SAMPLES_PER_MOMENT = 3
TWITCH_DESCRIPTION_MAX = 140

# Resolve's marker colours (the names its marker EDLs use), one per series.
RESOLVE_COLORS: dict[str, str] = {
    "anger": "ResolveColorRed",
    "anticipation": "ResolveColorSand",
    "disgust": "ResolveColorCocoa",
    "fear": "ResolveColorLavender",
    "joy": "ResolveColorYellow",
    "love": "ResolveColorPink",
    "optimism": "ResolveColorGreen",
    "pessimism": "ResolveColorCream",
    "sadness": "ResolveColorCyan",
    "surprise": "ResolveColorPurple",
    "trust": "ResolveColorMint",
    MESSAGE_RATE: "ResolveColorBlue",
}

log = logging.getLogger("captaflow.markers")

SampleSource = Callable[[str, float, float, int], Sequence[str]]


class MarkersError(CaptaFlowError):
    """The marker list cannot be made (no moments for chapters, too long for an EDL...)."""


# ------------------------------------------------------------------------------- names


def title_of(moment: Moment) -> str:
    """A short name for a marker or chapter: ``Joy spike (3.0x)``."""
    ratio = moment.ratio
    times = f"{ratio:.1f}x" if ratio is not None else "from silence"
    return f"{kind_name(moment.kind).capitalize()} spike ({times})"


def twitch_description(moment: Moment) -> str:
    """A Twitch stream marker's description: at most 140 characters (Helix's limit)."""
    text = f"CaptaFlow: {describe(moment)}"
    return text if len(text) <= TWITCH_DESCRIPTION_MAX else text[: TWITCH_DESCRIPTION_MAX - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------- csv

CSV_COLUMNS: tuple[str, ...] = (
    "vod_time",
    "vod_seconds",
    "peak_vod_time",
    "duration_seconds",
    "emotion",
    "strength_z",
    "ratio",
    "value",
    "baseline",
    "label",
    "utc_start",
    "platform",
    "channel",
    "sample_messages",
)


def _cell(value: object) -> str:
    text = _one_line(str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def moments_csv(moments: Sequence[Moment], samples: Sequence[Sequence[str]] | None = None) -> str:
    """The CSV marker list, one row per moment in the order given."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, m in enumerate(moments):
        texts = samples[i] if samples is not None else ()
        ratio = m.ratio
        writer.writerow(
            [
                m.vod_time,
                f"{m.start_offset:.1f}",
                m.peak_vod_time,
                f"{m.end - m.start:.1f}",
                kind_name(m.kind),
                f"{m.z:.1f}",
                "" if ratio is None else f"{ratio:.2f}",
                f"{m.value:.3f}" if m.kind != MESSAGE_RATE else f"{m.value:.1f}",
                f"{m.baseline:.3f}" if m.kind != MESSAGE_RATE else f"{m.baseline:.1f}",
                _cell(describe(m)),
                datetime.fromtimestamp(m.start, tz=UTC).strftime("%Y-%m-%d %H:%M:%S"),
                m.platform,
                m.channel,
                " | ".join(_cell(t) for t in texts),
            ]
        )
    return out.getvalue()


# --------------------------------------------------------------------------------- edl


def parse_timecode(text: str, fps: int) -> int:
    """``HH:MM:SS:FF`` (non-drop) as a frame count."""
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise UsageError(f"timecode {text!r} is not HH:MM:SS:FF (for example 01:00:00:00)")
    hours, minutes, seconds, frames = (int(p) for p in parts)
    if minutes > 59 or seconds > 59 or frames >= fps:
        raise UsageError(f"timecode {text!r} is out of range at {fps} frames per second")
    return ((hours * 60 + minutes) * 60 + seconds) * fps + frames


def timecode(frames: int, fps: int) -> str:
    """A frame count as non-drop ``HH:MM:SS:FF``."""
    seconds, ff = divmod(frames, fps)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    if hh > 23:
        raise MarkersError(
            "the EDL's timecodes would pass 23:59:59: use an earlier --timeline-start"
        )
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}"


def _marker_name(moment: Moment) -> str:
    # '|' separates Resolve's comment fields; keep the name on one line without it.
    return _one_line(describe(moment)).replace("|", "/")


def moments_edl(
    moments: Sequence[Moment],
    *,
    title: str,
    fps: int = 30,
    timeline_start: str = "01:00:00:00",
) -> str:
    """A CMX3600 EDL with one marker event per moment (see the module docstring)."""
    if fps not in EDL_FRAME_RATES:
        rates = ", ".join(map(str, EDL_FRAME_RATES))
        raise UsageError(f"EDL frame rate {fps} is not one of {rates} (non-drop timecode)")
    if len(moments) > EDL_MAX_EVENTS:
        raise MarkersError(
            f"{len(moments)} moments do not fit a CMX3600 EDL ({EDL_MAX_EVENTS} events at most)"
        )
    origin = parse_timecode(timeline_start, fps)
    clean_title = _one_line(title).replace("|", "/")[:60] or "CaptaFlow"
    lines = [f"TITLE: {clean_title}", "FCM: NON-DROP FRAME", ""]
    for number, m in enumerate(sorted(moments, key=lambda m: m.start_offset), start=1):
        at = origin + max(0, round(m.start_offset * fps))
        length = max(1, round((m.end - m.start) * fps))
        tc_in, tc_out = timecode(at, fps), timecode(at + length, fps)
        lines.append(
            f"{number:03d}  {EDL_REEL:<8} V     C        {tc_in} {tc_out} {tc_in} {tc_out}"
        )
        color = RESOLVE_COLORS.get(m.kind, "ResolveColorBlue")
        lines.append(f" |C:{color} |M:{_marker_name(m)} |D:{length}")
        lines.append(f"* FROM CLIP NAME: {title_of(m)}")
        lines.append("")
    return "\r\n".join(lines)


# ---------------------------------------------------------------------------- chapters


def chapter_time(seconds: float) -> str:
    """YouTube's timestamp: ``0:00``, ``12:34``, ``1:02:03``."""
    whole = max(0, math.floor(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True, slots=True)
class Chapter:
    at: float  # seconds into the VOD
    title: str


def chapters(
    moments: Sequence[Moment], *, duration: float, opening: str = "Stream start"
) -> list[Chapter]:
    """YouTube chapters: 0:00, then one per moment at least ten seconds after the previous
    chapter and ten seconds before the end; moments closer than that join the previous
    chapter's title. Raises MarkersError when fewer than three chapters result."""
    found = [Chapter(0.0, opening)]
    titles: list[list[str]] = [[opening]]
    for m in sorted(moments, key=lambda m: m.start_offset):
        at = float(math.floor(max(0.0, m.start_offset)))
        if at - found[-1].at < CHAPTER_MIN_SECONDS or duration - at < CHAPTER_MIN_SECONDS:
            if len(found) > 1 and title_of(m) not in titles[-1]:
                titles[-1].append(title_of(m))
            continue
        found.append(Chapter(at, title_of(m)))
        titles.append([title_of(m)])
    result = [Chapter(c.at, " + ".join(t)) for c, t in zip(found, titles, strict=True)]
    if len(result) < CHAPTERS_MIN:
        raise MarkersError(
            f"YouTube needs at least {CHAPTERS_MIN} chapters ten seconds apart and this session "
            f"gives {len(result)} (its start and {len(result) - 1} moment(s)): use --format csv "
            "or edl for it"
        )
    return result


def chapters_text(items: Sequence[Chapter]) -> str:
    return "".join(f"{chapter_time(c.at)} {_one_line(c.title)}\n" for c in items)


# ----------------------------------------------------------------------------- session


def session_markers(
    spool_dir: Path,
    *,
    session_id: str | None,
    fmt: str,
    displayed: tuple[str, ...],
    samples: SampleSource | None = None,
    fps: int = 30,
    timeline_start: str = "01:00:00:00",
) -> str:
    """The marker list of one session (`session_id`, else the latest) in format `fmt`."""
    from agent.moments import all_moments
    from agent.report import ReportError, choose_session, load_readings, summarize_sessions

    if fmt not in FORMATS:
        raise UsageError(f"marker format {fmt!r} is not one of {', '.join(FORMATS)}")
    readings = load_readings(Path(spool_dir))
    if readings.empty:
        raise ReportError(
            f"no readings in {spool_dir} yet: run `captaflow demo` or "
            "`captaflow run --channel NAME` first"
        )
    sessions = summarize_sessions(readings)
    chosen = choose_session(
        sessions, session_id=session_id, latest=session_id is None, date=None, spool_dir=spool_dir
    )
    session = readings[readings["session_id"] == chosen]
    moments = all_moments(session, displayed=displayed)
    moments.sort(key=lambda m: (m.start_offset, m.kind))
    if fmt == "csv":
        texts = [_samples(m, samples) for m in moments]
        return moments_csv(moments, texts)
    if fmt == "edl":
        return moments_edl(
            moments, title=f"CaptaFlow {chosen}", fps=fps, timeline_start=timeline_start
        )
    duration = float(session["window_end"].max() - session["window_start"].min())
    return chapters_text(chapters(moments, duration=duration))


def _samples(moment: Moment, samples: SampleSource | None) -> list[str]:
    if samples is None:
        return []
    try:
        return [
            str(t) for t in samples(moment.session_id, moment.start, moment.end, SAMPLES_PER_MOMENT)
        ]
    except (CaptaFlowError, OSError, sqlite3.Error) as exc:
        log.warning("markers: no sample messages for %s: %s", moment.vod_time, exc)
        return []
