"""Marker lists: CSV, CMX3600 EDL (checked against the format's grammar) and YouTube chapters."""

from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.markers import (
    CSV_COLUMNS,
    EDL_REEL,
    MarkersError,
    chapters,
    chapters_text,
    moments_csv,
    moments_edl,
    parse_timecode,
    session_markers,
    timecode,
    twitch_description,
)
from agent.moments import MESSAGE_RATE, Moment
from tests.test_live_moments import BURSTS, SPIKES, readings, write_spool

T0 = 1_714_500_000.0


def moment(kind: str, at: float, length: float = 20.0, value: float = 0.6) -> Moment:
    return Moment(
        session_id="s1",
        kind=kind,
        start=T0 + at,
        end=T0 + at + length,
        peak=T0 + at + 5,
        start_offset=at,
        peak_offset=at + 5,
        value=value,
        baseline=0.2 if kind != MESSAGE_RATE else 120.0,
        z=8.0,
        readings=4,
        platform="twitch",
        channel="xqcow",
    )


MOMENTS = [
    moment("joy", 1200.0),
    moment("anger", 1800.5, length=15),
    moment(MESSAGE_RATE, 3000.0, length=60, value=720.0),
]

# CMX3600, after Harris (http://www.edlmax.com/MAXGUIDE.HTML) and DaVinci Resolve's manual:
# event number (3 digits), reel (8 characters), track, transition, four timecodes.
TC = r"(\d{2}):([0-5]\d):([0-5]\d):(\d{2})"
EVENT = re.compile(
    rf"^(?P<num>\d{{3}})  (?P<reel>[A-Za-z0-9_ ]{{8}}) (?P<track>V|A|A2|AA|AA/V|B)\s+"
    rf"(?P<trans>C|D|W\d{{3}})\s+(?:\d{{3}}\s+)?"
    rf"(?P<src_in>{TC}) (?P<src_out>{TC}) (?P<rec_in>{TC}) (?P<rec_out>{TC})\s*$"
)
RESOLVE_MARKER = re.compile(r"^ \|C:ResolveColor[A-Z][a-z]+ \|M:[^|\r\n]+ \|D:\d+$")
COMMENT = re.compile(r"^\* [A-Z ]+: .*$")


def parse_edl(text: str, fps: int) -> list[dict[str, object]]:
    """A strict reader of the EDL grammar: every line is a header, an event, a comment of
    the event before it or blank; returns the events with their comments."""
    assert "\n" not in text.replace("\r\n", ""), "CMX3600 lines end with CR LF"
    lines = text.split("\r\n")
    assert re.fullmatch(r"TITLE: [^\r\n]{1,60}", lines[0]), lines[0]
    assert lines[1] in ("FCM: NON-DROP FRAME", "FCM: DROP FRAME")
    events: list[dict[str, object]] = []
    for line in lines[2:]:
        if not line.strip():
            continue
        found = EVENT.match(line)
        if found:
            frames = {
                k: parse_timecode(found.group(k), fps)
                for k in ("src_in", "src_out", "rec_in", "rec_out")
            }
            for k in frames:
                assert int(found.group(k)[-2:]) < fps
            events.append({**found.groupdict(), **frames, "comments": []})
            continue
        assert events, f"comment before the first event: {line!r}"
        assert RESOLVE_MARKER.match(line) or COMMENT.match(line), f"not CMX3600: {line!r}"
        events[-1]["comments"].append(line)  # type: ignore[attr-defined]
    return events


def test_the_edl_follows_the_cmx3600_grammar_with_resolve_markers() -> None:
    text = moments_edl(MOMENTS, title="CaptaFlow s1", fps=30, timeline_start="01:00:00:00")
    events = parse_edl(text, 30)

    assert [e["num"] for e in events] == ["001", "002", "003"]
    assert all(e["reel"] == f"{EDL_REEL:<8}" for e in events)
    assert all(e["track"] == "V" and e["trans"] == "C" for e in events)
    hour = parse_timecode("01:00:00:00", 30)
    # Record in = timeline start + VOD time; the marker lasts the moment.
    assert [e["rec_in"] for e in events] == [hour + 1200 * 30, hour + 1800 * 30 + 15, hour + 90000]
    assert [int(e["rec_out"]) - int(e["rec_in"]) for e in events] == [600, 450, 1800]  # type: ignore[call-overload]
    assert all(e["src_in"] == e["rec_in"] and e["src_out"] == e["rec_out"] for e in events)
    markers = [c for e in events for c in e["comments"] if c.startswith(" |")]  # type: ignore[attr-defined]
    assert markers[0] == " |C:ResolveColorYellow |M:joy up 3.0x (0.60 vs 0.20) |D:600"
    assert markers[2].startswith(" |C:ResolveColorBlue |M:chat rate up 6.0x (720/min vs 120/min)")
    names = [c for e in events for c in e["comments"] if c.startswith("* FROM CLIP NAME:")]  # type: ignore[attr-defined]
    assert names[0] == "* FROM CLIP NAME: Joy spike (3.0x)"


def test_edl_other_frame_rates_and_starts() -> None:
    events = parse_edl(
        moments_edl(MOMENTS[:1], title="x", fps=25, timeline_start="00:00:00:00"), 25
    )
    assert events[0]["rec_in"] == 1200 * 25
    with pytest.raises(UsageError, match="frame rate"):
        moments_edl(MOMENTS, title="x", fps=29)
    with pytest.raises(UsageError, match="HH:MM:SS:FF"):
        moments_edl(MOMENTS, title="x", timeline_start="1:00:00")
    with pytest.raises(MarkersError, match="23:59:59"):
        moments_edl(MOMENTS, title="x", timeline_start="23:50:00:00")


@pytest.mark.parametrize("frames", [0, 1, 29, 30, 1799, 108_000, 2_591_999])
def test_timecodes_round_trip(frames: int) -> None:
    assert parse_timecode(timecode(frames, 30), 30) == frames


def test_an_edl_name_never_breaks_the_marker_comment() -> None:
    text = moments_edl([MOMENTS[0]], title="a|b\r\nTITLE: evil")
    parse_edl(text, 30)
    assert [line for line in text.split("\r\n") if line.startswith("TITLE:")] == [
        "TITLE: a/b TITLE: evil"
    ]


def test_csv_lists_vod_time_emotion_strength_and_samples() -> None:
    samples = [["LETS GO", '=HYPERLINK("x")'], [], ['a, "quoted"\nline']]
    rows = list(csv.reader(io.StringIO(moments_csv(MOMENTS, samples))))
    assert tuple(rows[0]) == CSV_COLUMNS
    first = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert first["vod_time"] == "00:20:00" and first["emotion"] == "joy"
    assert first["strength_z"] == "8.0" and first["ratio"] == "3.00"
    assert first["sample_messages"] == 'LETS GO | \'=HYPERLINK("x")'  # no formula runs
    third = dict(zip(CSV_COLUMNS, rows[3], strict=True))
    assert third["emotion"] == "chat rate" and third["value"] == "720.0"
    assert third["sample_messages"] == 'a, "quoted" line'
    assert len(rows) == 4


def test_chapters_follow_youtubes_rules() -> None:
    close = moment(MESSAGE_RATE, 1203.0, value=500.0)  # 3 s after the joy moment: joins it
    items = chapters([*MOMENTS, close], duration=3600.0)
    text = chapters_text(items)
    assert text.splitlines() == [
        "0:00 Stream start",
        "20:00 Joy spike (3.0x) + Chat rate spike (4.2x)",
        "30:00 Anger spike (3.0x)",
        "50:00 Chat rate spike (6.0x)",
    ]
    at = [c.at for c in items]
    assert at[0] == 0 and len(at) >= 3
    assert all(b - a >= 10 for a, b in itertools.pairwise(at))
    assert 3600 - at[-1] >= 10


def test_chapters_past_an_hour_and_too_few() -> None:
    items = chapters([moment("joy", 4000.0), moment("anger", 7384.0)], duration=9000.0)
    assert chapters_text(items).splitlines()[1:] == [
        "1:06:40 Joy spike (3.0x)",
        "2:03:04 Anger spike (3.0x)",
    ]
    with pytest.raises(MarkersError, match="at least 3 chapters"):
        chapters([moment("joy", 1200.0)], duration=3600.0)
    with pytest.raises(MarkersError):
        chapters([moment("joy", 5.0), moment("anger", 3595.0)], duration=3600.0)


def test_twitch_description_fits_140_characters() -> None:
    text = twitch_description(MOMENTS[0])
    assert text == "CaptaFlow: joy up 3.0x (0.60 vs 0.20)"
    huge = moment(MESSAGE_RATE, 10.0, value=1e120)
    assert len(twitch_description(huge)) <= 140


def test_session_markers_from_the_spool(tmp_path: Path) -> None:
    rows = readings(minutes=60, spikes=SPIKES, bursts=BURSTS, seed=3)
    write_spool(tmp_path, rows)
    got = session_markers(
        tmp_path, session_id="s1", fmt="chapters", displayed=("joy", "anger", "surprise")
    )
    assert got.splitlines()[0] == "0:00 Stream start"
    assert [line.split()[0] for line in got.splitlines()] == [
        "0:00",
        "20:00",
        "30:00",
        "40:00",
        "50:00",
    ]
    edl = session_markers(tmp_path, session_id=None, fmt="edl", displayed=("joy",))
    assert len(parse_edl(edl, 30)) == 2  # joy and the message rate
    calls: list[tuple[str, float, float, int]] = []

    def samples(session: str, start: float, end: float, k: int) -> list[str]:
        calls.append((session, start, end, k))
        return ["W", "LETS GO"]

    text = session_markers(
        tmp_path, session_id="s1", fmt="csv", displayed=("joy",), samples=samples
    )
    assert "W | LETS GO" in text and len(calls) == 2
    with pytest.raises(UsageError, match="no session 'nope'"):
        session_markers(tmp_path, session_id="nope", fmt="csv", displayed=("joy",))
    with pytest.raises(UsageError, match="format"):
        session_markers(tmp_path, session_id="s1", fmt="xml", displayed=("joy",))
