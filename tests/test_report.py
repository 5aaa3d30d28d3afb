"""The local HTML report, built from spool parts written in the spool's layout."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.errors import CaptaFlowError, SpoolError, UsageError
from agent.report import (
    MAX_CHART_POINTS,
    ReportError,
    build_report,
    chart_data,
    load_readings,
)
from agent.vocab import LABELS, READING_COLUMNS, Reading

T0 = 1_714_500_000.0  # 2024-04-30 18:00:00 UTC
DAY = 86_400.0


def make_readings(
    session_id: str,
    *,
    start: float = T0,
    count: int = 720,
    step: float = 5.0,
    seed: int = 0,
    channel: str = "xqcow",
    platform: str = "twitch",
    spikes: Iterable[tuple[str, float, float, float]] = (),
    messages: int = 10,
) -> list[Reading]:
    """Flat noisy readings; each spike is (label, offset s, length s, added probability)."""
    rng = np.random.default_rng(seed)
    readings = []
    for i in range(count):
        offset = i * step
        scores = 0.2 + rng.normal(0, 0.01, len(LABELS))
        for label, at, length, add in spikes:
            if at <= offset < at + length:
                scores[LABELS.index(label)] += add
        scores = np.clip(scores, 0, 1)
        readings.append(
            Reading(
                session_id=session_id,
                platform=platform,
                channel=channel,
                batch_id=f"{session_id}-{i:08d}",
                seq=i,
                window_start=start + offset,
                window_end=start + offset + step,
                message_count=messages,
                scored_count=messages,
                scores=tuple(float(s) for s in scores),
                dominant=LABELS[int(np.argmax(scores))],
                model_id="cardiffnlp/twitter-roberta-base-emotion-multilabel-latest",
                agent_version="0.1.0",
            )
        )
    return readings


def part_text(readings: Iterable[Reading]) -> str:
    lines = [",".join(READING_COLUMNS), *(",".join(r.as_row()) for r in readings)]
    return "\n".join(lines) + "\n"


def sealed_path(spool: Path, reading: Reading, part: int, area: str = "sealed") -> Path:
    dt = time.strftime("%Y-%m-%d", time.gmtime(reading.window_start))
    return (
        spool
        / area
        / f"platform={reading.platform}"
        / f"channel={reading.channel}"
        / f"dt={dt}"
        / f"{reading.session_id}-{part:05d}.csv"
    )


def write_sealed(spool: Path, readings: list[Reading], part: int = 1, area: str = "sealed") -> Path:
    path = sealed_path(spool, readings[0], part, area)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(part_text(readings), encoding="ascii")
    return path


def write_open(spool: Path, readings: list[Reading], part: int, tail: str = "") -> Path:
    path = spool / "open" / f"{readings[0].session_id}-{part:05d}.csv.open"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(part_text(readings) + tail, encoding="ascii")
    return path


def chart_json(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="cf-data">(.*?)</script>', page, re.S)
    assert match, "the report has no chart data block"
    return json.loads(match.group(1))


def table(page: str, css_class: str) -> str:
    match = re.search(rf'<table class="{css_class}">(.*?)</table>', page, re.S)
    assert match, f"the report has no {css_class} table"
    return match.group(1)


def rows(table_html: str) -> list[str]:
    """The body rows of a table."""
    body = table_html[table_html.index("<tbody>") :]
    return re.findall(r"<tr[ >].*?</tr>", body, re.S)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """Three sessions: two past ones (sealed, uploaded) and one still recording."""
    root = tmp_path / "spool"
    old = make_readings("old-stream", start=T0 - 2 * DAY, count=200, channel="pokimane", seed=1)
    write_sealed(root, old, area="uploaded")
    past = make_readings(
        "yesterday", start=T0 - DAY, count=720, seed=2, spikes=[("anger", 1200, 20, 0.35)]
    )
    write_sealed(root, past[:360], part=1)
    write_sealed(root, past[360:], part=2)
    live = make_readings(
        "live-now",
        count=720,
        seed=3,
        spikes=[("joy", 1800, 30, 0.45), ("surprise", 2700, 20, 0.25)],
    )
    write_sealed(root, live[:500], part=1)
    # The open part ends in the row being written when the report reads it.
    write_open(root, live[500:], part=2, tail="live-now,twitch,xqcow,live-now-9,9,2024-04-")
    # Set aside by the spool: never read.
    corrupt = root / "corrupt" / "live-now-00003.csv.open"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text(part_text(make_readings("ghost", count=5)), encoding="ascii")
    return root


def test_load_readings_reads_every_area_and_skips_partial_rows(spool: Path) -> None:
    readings = load_readings(spool)
    assert list(readings.columns[: len(READING_COLUMNS)]) == list(READING_COLUMNS)
    counts = readings.groupby("session_id").size().to_dict()
    assert counts == {"old-stream": 200, "yesterday": 720, "live-now": 720}
    assert readings["window_start"].dtype == float
    assert readings["window_start"].min() == T0 - 2 * DAY
    states = readings.groupby("session_id")["part_state"].agg(lambda s: sorted(set(s)))
    assert states.to_dict() == {
        "old-stream": ["uploaded"],
        "yesterday": ["sealed"],
        "live-now": ["open", "sealed"],
    }


def test_load_readings_drops_duplicates_bad_rows_and_foreign_files(tmp_path: Path) -> None:
    readings = make_readings("s1", count=30)
    write_sealed(tmp_path, readings[:20], part=1)
    write_sealed(tmp_path, readings[:20], part=1, area="uploaded")  # seen mid-move
    fields = readings[20].as_row()
    fields[READING_COLUMNS.index("message_count")] = "many"
    bad_row = ",".join(fields)
    path = write_open(tmp_path, readings[21:], part=2)
    path.write_text(part_text(readings[21:]).replace("\n", f"\n{bad_row}\n", 1), encoding="ascii")
    (tmp_path / "sealed" / "notes.csv").write_text("a,b\n1,2\n", encoding="ascii")

    loaded = load_readings(tmp_path)

    assert sorted(loaded["seq"]) == [*range(20), *range(21, 30)]
    assert loaded["batch_id"].is_unique


def test_report_lists_sessions_and_highlights_the_latest(spool: Path, tmp_path: Path) -> None:
    page = build_report(spool, out=tmp_path / "r.html").read_text(encoding="utf-8")

    sessions = rows(table(page, "sessions"))
    assert [re.search(r"<code>(.*?)</code>", r).group(1) for r in sessions] == [
        "live-now",
        "yesterday",
        "old-stream",
    ]
    chosen = [r for r in sessions if 'class="chosen"' in r]
    assert len(chosen) == 1 and "live-now" in chosen[0]
    assert "recording" in chosen[0] and "1 h 00 min" in chosen[0] and "7,200" in chosen[0]
    assert "uploaded" in sessions[2] and "pokimane" in sessions[2]
    assert "still recording" in page


def test_moments_are_listed_with_their_vod_times(spool: Path, tmp_path: Path) -> None:
    calls: list[tuple[str, float, float, int]] = []

    def samples(session_id: str, start: float, end: float, k: int) -> list[str]:
        calls.append((session_id, start, end, k))
        return ["PogU", "W", "LETS GO"]

    page = build_report(spool, latest=True, samples=samples, out=tmp_path / "r.html").read_text(
        encoding="utf-8"
    )

    moments = rows(table(page, "moments"))
    assert len(moments) == 2
    assert "<b>00:30:00</b>" in moments[0] and "joy" in moments[0]
    assert "<b>00:45:00</b>" in moments[1] and "surprise" in moments[1]
    assert "2024-04-30 18:30:00 UTC" in moments[0]
    assert "<li>LETS GO</li>" in moments[0]
    assert calls[0] == ("live-now", T0 + 1800, T0 + 1830, 3)
    drawn = chart_json(page)["moments"]
    assert [(m["n"], m["kind"], m["x"]) for m in drawn] == [
        (1, "joy", 1800.0),
        (2, "surprise", 2700.0),
    ]


def test_a_session_is_picked_by_id_or_by_date(spool: Path, tmp_path: Path) -> None:
    by_id = build_report(spool, session_id="yesterday", out=tmp_path / "a.html").read_text(
        encoding="utf-8"
    )
    chosen = [r for r in rows(table(by_id, "sessions")) if 'class="chosen"' in r]
    assert "yesterday" in chosen[0]
    assert "anger" in table(by_id, "moments") and "<b>00:20:00</b>" in table(by_id, "moments")
    assert "still recording" not in by_id

    by_date = build_report(spool, date="2024-04-28", out=tmp_path / "b.html").read_text(
        encoding="utf-8"
    )
    chosen = [r for r in rows(table(by_date, "sessions")) if 'class="chosen"' in r]
    assert "old-stream" in chosen[0]
    assert "No moments" in by_date


def test_unknown_session_names_some_known_ones(spool: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        build_report(spool, session_id="nope", out=tmp_path / "r.html")
    message = str(caught.value)
    assert "'nope'" in message and str(spool) in message
    assert "live-now, yesterday, old-stream" in message
    assert "\n" not in message
    assert not (tmp_path / "r.html").exists()


def test_bad_or_empty_date_is_a_clear_usage_error(spool: Path, tmp_path: Path) -> None:
    for bad in ("30/04/2024", "2024-04-31"):
        with pytest.raises(UsageError, match="not a valid YYYY-MM-DD date"):
            build_report(spool, date=bad, out=tmp_path / "r.html")
    with pytest.raises(UsageError, match=r"no session started on 2024-01-01.*2024-04-30"):
        build_report(spool, date="2024-01-01", out=tmp_path / "r.html")
    with pytest.raises(UsageError, match="choose one of"):
        build_report(spool, session_id="live-now", latest=True, out=tmp_path / "r.html")
    with pytest.raises(UsageError, match="glee"):
        build_report(spool, displayed=("joy", "glee"), out=tmp_path / "r.html")


@pytest.mark.parametrize("make", ["missing", "empty", "header only"])
def test_no_readings_says_what_to_run(tmp_path: Path, make: str) -> None:
    spool = tmp_path / "spool"
    if make != "missing":
        (spool / "open").mkdir(parents=True)
    if make == "header only":
        (spool / "open" / "s1-00001.csv.open").write_text(
            ",".join(READING_COLUMNS) + "\n", encoding="ascii"
        )
    with pytest.raises(ReportError) as caught:
        build_report(spool, out=tmp_path / "r.html")
    assert str(caught.value) == (
        f"no readings in {spool} yet: run `captaflow demo` or `captaflow run --channel NAME` first"
    )
    assert isinstance(caught.value, CaptaFlowError)


def test_data_from_chat_is_escaped(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    write_sealed(spool, make_readings("s1", spikes=[("fear", 1800, 30, 0.5)]))
    hostile = [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(2)>',
        "{{DATA}} </script><b>bold</b>",
    ]
    page = build_report(spool, samples=lambda *_: hostile, out=tmp_path / "r.html").read_text(
        encoding="utf-8"
    )

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<b>bold</b>" not in page and "{{DATA}} &lt;/script&gt;" in page
    # Exactly the page's own scripts: the error hook, the data block and the chart.
    assert page.count("<script") == 3 and page.count("</script>") == 3


def test_the_page_loads_nothing_from_the_network(spool: Path, tmp_path: Path) -> None:
    page = build_report(spool, out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""\b(src|href)\s*=|@import|url\(|<link\b|<iframe\b""", page)


def test_journal_trouble_leaves_the_report_usable(spool: Path, tmp_path: Path) -> None:
    def broken(session_id: str, start: float, end: float, k: int) -> list[str]:
        raise SpoolError("journal /x/journal.sqlite is locked by another process")

    page = build_report(spool, samples=broken, out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert "journal unavailable: journal /x/journal.sqlite is locked" in page

    without = build_report(spool, out=tmp_path / "s.html").read_text(encoding="utf-8")
    assert "no journal on this PC" in without
    empty = build_report(spool, samples=lambda *_: [], out=tmp_path / "t.html")
    assert "no longer in the journal" in empty.read_text(encoding="utf-8")


def test_an_unwritable_destination_is_a_report_error(spool: Path, tmp_path: Path) -> None:
    taken = tmp_path / "a-directory"
    (taken / "inside").mkdir(parents=True)
    with pytest.raises(ReportError, match=r"cannot write the report to .*a-directory.*--out"):
        build_report(spool, out=taken)


def test_chart_buckets_weight_means_by_scored_messages(tmp_path: Path) -> None:
    readings = make_readings("s1", count=4, step=1.0)
    spool = tmp_path / "spool"
    write_sealed(spool, readings)
    frame = load_readings(spool)
    frame.loc[0, "joy"], frame.loc[0, "scored_count"] = 0.9, 1
    frame.loc[1, "joy"], frame.loc[1, "scored_count"] = 0.1, 3
    frame.loc[[2, 3], "message_count"] = [0, 20]

    data = chart_data(frame, ("joy",), max_points=2)  # 4 s in two buckets of 2 s

    assert data["bucket"] == 2.0
    assert data["x"] == [1.0, 3.0]
    assert data["series"]["joy"][0] == pytest.approx((0.9 * 1 + 0.1 * 3) / 4)
    assert data["rate"] == [600.0, 600.0]  # 20 messages in 2 s, twice


def test_a_twelve_hour_stream_renders_small(tmp_path: Path) -> None:
    count = 12 * 3600
    spool = tmp_path / "spool"
    rng = np.random.default_rng(5)
    starts = T0 + np.arange(count, dtype=float)
    scores = np.clip(0.2 + rng.normal(0, 0.01, (count, len(LABELS))), 0, 1)
    scores[7200:7230, LABELS.index("joy")] += 0.5  # a 30 s spike at 02:00:00
    messages = rng.poisson(3, count)
    lines = [",".join(READING_COLUMNS)]
    for i in range(count):
        reading = Reading(
            "marathon", "twitch", "xqcow", f"m{i:015x}", i, starts[i], starts[i] + 1.0,
            int(messages[i]), int(messages[i]), tuple(scores[i]), "joy", "m", "0.1.0",
        )  # fmt: skip
        lines.append(",".join(reading.as_row()))
    # Sealed in hourly parts, as the spool would.
    for hour in range(12):
        path = sealed_path(spool, Reading.from_row(lines[1 + hour * 3600].split(",")), hour + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = lines[1 + hour * 3600 : 1 + (hour + 1) * 3600]
        path.write_text("\n".join([lines[0], *body]) + "\n", encoding="ascii")

    began = time.perf_counter()
    out = build_report(spool, out=tmp_path / "marathon.html")
    elapsed = time.perf_counter() - began
    size = out.stat().st_size
    print(f"\n12-hour session, {count:,} readings: report {size / 1e6:.2f} MB in {elapsed:.2f} s")

    page = out.read_text(encoding="utf-8")
    assert size < 1_500_000
    data = chart_json(page)
    assert len(data["x"]) <= MAX_CHART_POINTS
    assert all(len(v) == len(data["x"]) for v in data["series"].values())
    assert "43,200 readings" in page
    assert "<b>02:00:00</b>" in table(page, "moments")


def test_a_part_that_fails_its_checksum_is_left_out_and_the_report_says_so(
    tmp_path: Path,
) -> None:
    from agent.layout import sha256_hex, write_checksum

    root = tmp_path / "spool"
    readings = make_readings("stream", count=40, seed=5)
    good = write_sealed(root, readings[:20], part=1)
    bad = write_sealed(root, readings[20:], part=2)
    for path in (good, bad):
        write_checksum(path, sha256_hex(path.read_bytes()))
    # One row garbled after sealing, header intact.
    lines = bad.read_text(encoding="ascii").splitlines(keepends=True)
    lines[5] = lines[5].replace("0.", "9.", 1)
    bad.write_text("".join(lines), encoding="ascii")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "stream-00009.csv").write_text("junk", encoding="ascii")

    page = build_report(root, out=tmp_path / "r.html").read_text(encoding="utf-8")
    loaded = load_readings(root)
    assert sorted(loaded["seq"]) == list(range(20))  # the damaged part's rows are all left out
    assert "Some readings are left out" in page
    assert "stream-00002.csv" in page and "recorded when sealed" in page
    assert "1 part(s) set aside in" in page
    assert ">20 readings<" in page or "20 readings" in page


def test_a_multistream_shows_its_platforms_side_by_side(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    # One Streamer.bot feed windowed per platform: a session per platform, same stretch.
    for n, platform in enumerate(("youtube", "kick", "twitch")):
        chunk = make_readings(f"multi-{platform}", count=60, seed=10 + n, platform=platform)
        write_sealed(root, [replace(r, via="streamerbot") for r in chunk])
    apart = make_readings("other-day", start=T0 + 3 * DAY, count=30, platform="kick")
    write_sealed(root, [replace(r, via="streamerbot") for r in apart])

    page = build_report(root, session_id="multi-kick", out=tmp_path / "m.html").read_text(
        encoding="utf-8"
    )
    section = page[page.index("Platforms side by side") : page.index("</section>")]
    headings = re.findall(r"<h3>(\w+) <small>", section)
    assert headings == ["kick", "twitch", "youtube"]  # the chosen one first, then by name
    assert "streamerbot" in section and section.count("<svg") == 3
    assert "other-day" not in section  # another stream, not this one
    alone = build_report(root, session_id="other-day", out=tmp_path / "o.html")
    assert "Platforms side by side" not in alone.read_text(encoding="utf-8")


def test_of_two_replays_of_one_recording_the_one_started_last_is_the_latest(
    tmp_path: Path,
) -> None:
    # `captaflow demo` twice: both sessions hold the recording's own times; the session ids
    # begin with the UTC instant each run started on this PC.
    root = tmp_path / "spool"
    first = "20261201t103032z-captaflow_demo-jnj4uh"
    second = "20261201t103551z-captaflow_demo-aaaaaa"
    write_sealed(root, make_readings(first, count=30, channel="captaflow_demo"))
    write_sealed(root, make_readings(second, count=30, channel="captaflow_demo", seed=4))
    page = build_report(root, latest=True, out=tmp_path / "r.html").read_text(encoding="utf-8")
    [chosen] = [r for r in rows(table(page, "sessions")) if 'class="chosen"' in r]
    assert second in chosen
