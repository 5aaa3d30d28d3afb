"""The spool on a real directory: rows, sealing, crash recovery, corrupt parts, disk bound,
full disk. The only stand-in is for the disk itself (a file whose writes run out of space)."""

from __future__ import annotations

import errno
import io
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import SpoolError
from agent.layout import checksum_path, move_part
from agent.spool import (
    HEADER_LINE,
    Spool,
    iter_readings,
    parse_part,
    parse_part_name,
    read_part,
)
from agent.vocab import LABELS, READING_COLUMNS, Reading, format_timestamp

ROOT = Path(__file__).resolve().parents[1]
DAY1 = 1714557600.0  # 2024-05-01 10:00:00 UTC
DAY2 = DAY1 + 86400.0


def reading(seq: int, session: str = "s1", channel: str = "xqcow", t0: float = DAY1) -> Reading:
    start = t0 + 10.0 * seq + 0.123
    scores = tuple(round(((seq + i) % 10) / 10, 6) for i in range(len(LABELS)))
    return Reading(
        session_id=session,
        platform="twitch",
        channel=channel,
        batch_id=f"{seq:020x}",
        seq=seq,
        window_start=start,
        window_end=start + 9.5,
        message_count=10,
        scored_count=10 if seq % 3 else 7,
        scores=scores,
        dominant="joy",
        model_id="cardiffnlp/twitter-roberta-base-emotion-multilabel-latest",
        agent_version="1.0.0.dev0",
    )


def same(a: Reading, b: Reading) -> bool:
    """Equal as written: times to the millisecond, scores to 6 decimals."""
    return a.as_row() == b.as_row()


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ append and seal


def test_append_then_seal_writes_one_row_per_reading(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    readings = [reading(i) for i in range(5)]
    for r in readings:
        spool.append(r)
    (open_part,) = (tmp_path / "open").iterdir()
    assert open_part.name == "s1-00001.csv.open"
    # each row reaches the file as it is appended (a kill loses at most the row in flight)
    assert open_part.read_bytes().count(b"\n") == 6

    sealed = spool.seal_open()
    assert sealed == tmp_path / "sealed/platform=twitch/channel=xqcow/dt=2024-05-01/s1-00001.csv"
    assert not list((tmp_path / "open").iterdir())
    lines = sealed.read_bytes().decode("ascii").split("\n")
    assert lines[0] == ",".join(READING_COLUMNS)
    assert lines[-1] == ""  # ends with a newline
    assert all(line.count(",") == len(READING_COLUMNS) - 1 for line in lines[:-1])
    assert all(same(a, b) for a, b in zip(read_part(sealed), readings, strict=True))
    assert spool.sealed_parts() == [sealed]
    assert spool.seal_open() is None


def test_rows_are_rotated_at_the_row_limit_and_by_age(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    spool = Spool(tmp_path, max_part_rows=3, max_part_age_seconds=60, clock=clock)
    for i in range(7):
        spool.append(reading(i))
    # the fourth and seventh readings found a full part: it was sealed before they were written
    assert [p.name for p in spool.sealed_parts()] == ["s1-00001.csv", "s1-00002.csv"]
    assert spool.maybe_seal(now=1059.0) == []
    (aged,) = spool.maybe_seal(now=1060.0)
    assert aged.name == "s1-00003.csv"
    assert [len(read_part(p)) for p in spool.sealed_parts()] == [3, 3, 1]
    assert [r.seq for r in iter_readings(tmp_path)] == list(range(7))


def test_maybe_seal_seals_a_full_part(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_part_rows=2)
    spool.append(reading(0))
    assert spool.maybe_seal(now=0.0) == []
    spool.append(reading(1))
    (full,) = spool.maybe_seal(now=0.0)
    assert len(read_part(full)) == 2


def test_a_new_utc_date_or_channel_starts_a_new_part(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(reading(0))
    spool.append(reading(1, t0=DAY2))
    spool.append(reading(2, channel="other", t0=DAY2))
    spool.seal_open()
    relative = sorted(p.relative_to(tmp_path / "sealed").as_posix() for p in spool.sealed_parts())
    assert relative == [
        "platform=twitch/channel=other/dt=2024-05-02/s1-00003.csv",
        "platform=twitch/channel=xqcow/dt=2024-05-01/s1-00001.csv",
        "platform=twitch/channel=xqcow/dt=2024-05-02/s1-00002.csv",
    ]


def test_sessions_have_their_own_parts(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(reading(0, session="s1"))
    spool.append(reading(1, session="s1-b"))
    spool.append(reading(2, session="s1"))
    spool.seal_open()
    names = sorted(p.name for p in spool.sealed_parts())
    assert names == ["s1-00001.csv", "s1-b-00001.csv"]
    assert spool.batch_ids_in("s1") == {reading(0).batch_id, reading(2).batch_id}
    assert spool.batch_ids_in("s1-b") == {reading(1).batch_id}


def test_rows_that_would_need_quoting_are_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="model id"):
        spool.append(replace(reading(0), model_id='a,"b"'))
    with pytest.raises(ValueError, match="channel"):
        spool.append(replace(reading(0), channel="../etc"))
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        spool.append(replace(reading(0), scores=(1.5,) * len(LABELS)))
    assert spool.pending == ()
    assert not list((tmp_path / "open").iterdir())


def test_a_sealed_part_never_changes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_part_rows=2)
    for i in range(2):
        spool.append(reading(i))
    (first,) = spool.maybe_seal(now=0.0)
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    for i in range(2, 9):
        spool.append(reading(i))
        spool.maybe_seal(now=0.0)
    spool.seal_open()
    Spool(tmp_path).recover()
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before


def test_sealing_never_replaces_an_existing_part(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(reading(0))
    target = tmp_path / "sealed/platform=twitch/channel=xqcow/dt=2024-05-01/s1-00001.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"someone else's part")
    with pytest.raises(SpoolError, match="already exists") as info:
        spool.seal_open()
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"someone else's part"
    assert (tmp_path / "open/s1-00001.csv.open").exists()  # kept for recovery


# ------------------------------------------------------------------ crash recovery


def crash_after_appending(spool_dir: Path, count: int) -> None:
    """Append `count` readings in another process that then dies without any cleanup."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from agent.spool import Spool
        from test_spool import reading
        spool = Spool(Path({str(spool_dir)!r}))
        for i in range({count}):
            spool.append(reading(i))
        os._exit(0)  # like kill -9: no flush at exit, no close, no seal
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_recovery_seals_the_complete_rows_of_a_crashed_part(tmp_path: Path) -> None:
    crash_after_appending(tmp_path, 3)
    open_part = tmp_path / "open/s1-00001.csv.open"
    complete = open_part.read_bytes()
    half_row = ",".join(reading(3).as_row())[:57].encode("ascii")
    with open(open_part, "ab") as handle:
        handle.write(half_row)

    spool = Spool(tmp_path)
    report = spool.recover()
    (sealed,) = report.sealed
    assert sealed == tmp_path / "sealed/platform=twitch/channel=xqcow/dt=2024-05-01/s1-00001.csv"
    assert sealed.read_bytes() == complete
    assert report.truncated_bytes == len(half_row)
    assert report.corrupt == [] and report.warnings == []
    assert [r.seq for r in read_part(sealed)] == [0, 1, 2]
    assert spool.batch_ids_in("s1") == {reading(i).batch_id for i in range(3)}

    # the session goes on in a new part; the recovered one is never reopened
    spool.append(reading(3))
    assert spool.seal_open() == sealed.with_name("s1-00002.csv")
    assert sealed.read_bytes() == complete


def test_a_kill_at_any_byte_keeps_exactly_the_rows_written_whole() -> None:
    rows = [(",".join(reading(i).as_row()) + "\n").encode("ascii") for i in range(3)]
    data = HEADER_LINE + b"".join(rows)
    ends = [len(HEADER_LINE) + sum(len(r) for r in rows[: i + 1]) for i in range(3)]
    for cut in range(len(data) + 1):
        parsed = parse_part(data[:cut])
        whole = sum(1 for end in ends if end <= cut)
        assert parsed.problem is None, cut
        assert [r.seq for r in parsed.readings] == list(range(whole)), cut
        header_end = len(HEADER_LINE) if cut >= len(HEADER_LINE) else 0
        assert parsed.valid_bytes == (ends[whole - 1] if whole else header_end), cut


@given(st.binary(max_size=400))
def test_any_bytes_after_the_header_parse_or_are_named_corrupt(tail: bytes) -> None:
    parsed = parse_part(HEADER_LINE + tail)
    assert parsed.header_ok
    assert parsed.valid_bytes <= len(HEADER_LINE) + len(tail)
    if parsed.problem is None:
        assert b"\n" not in tail[parsed.valid_bytes - len(HEADER_LINE) :]


def test_an_open_part_without_rows_is_removed(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir()
    (tmp_path / "open/s1-00001.csv.open").write_bytes(HEADER_LINE)
    (tmp_path / "open/s1-00002.csv.open").write_bytes(HEADER_LINE[:20])
    (tmp_path / "open/s1-00003.csv.open").write_bytes(b"")
    report = Spool(tmp_path).recover()
    assert len(report.removed_empty) == 3
    assert report.sealed == [] and report.corrupt == []
    assert not list((tmp_path / "open").iterdir())


def test_corrupt_parts_are_set_aside_never_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    for i in range(2):
        spool.append(reading(i))
    good = spool.seal_open()
    assert good is not None
    garbage = tmp_path / "open/s2-00001.csv.open"
    garbage.write_bytes(b"\x00\xff\x13 not a csv at all\n" * 5)
    bad_header = good.with_name("s3-00001.csv")
    bad_header.write_bytes(b"a,b,c\n1,2,3\n")
    row = ",".join(reading(0, session="s4").as_row()).encode("ascii")
    bad_middle = tmp_path / "open/s4-00001.csv.open"
    bad_middle.write_bytes(HEADER_LINE + row + b"\n" + b"junk,row\n" + row + b"\n")
    contents = {p: p.read_bytes() for p in (garbage, bad_header, bad_middle)}

    with caplog.at_level(logging.WARNING, logger="captaflow.spool"):
        report = Spool(tmp_path).recover()

    assert sorted(p.relative_to(tmp_path).as_posix() for p in report.corrupt) == [
        "corrupt/platform=twitch/channel=xqcow/dt=2024-05-01/s3-00001.csv",
        "corrupt/s2-00001.csv.open",
        "corrupt/s4-00001.csv.open",
    ]
    assert sorted(p.read_bytes() for p in report.corrupt) == sorted(contents.values())
    assert len(report.warnings) == 3
    for original in contents:
        assert not original.exists()
        (message,) = [m for m in caplog.messages if str(original) in m]
        assert "\n" not in message and "corrupt" in message
    assert good.exists() and len(read_part(good)) == 2
    assert report.sealed == []

    # the set-aside part numbers are not reused either
    spool = Spool(tmp_path)
    spool.append(reading(0, session="s2"))
    assert (tmp_path / "open/s2-00002.csv.open").exists()
    spool.seal_open()


def test_part_numbers_continue_after_every_area(tmp_path: Path) -> None:
    uploaded = tmp_path / "uploaded/platform=twitch/channel=xqcow/dt=2024-05-01"
    uploaded.mkdir(parents=True)
    (uploaded / "s1-00007.csv").write_bytes(HEADER_LINE)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt/s1-00009.csv.open.1").write_bytes(b"junk")
    (tmp_path / "corrupt/s1-x-00042.csv").write_bytes(b"another session")
    spool = Spool(tmp_path)
    spool.append(reading(0))
    assert spool.seal_open() is not None
    assert [p.name for p in spool.sealed_parts()] == ["s1-00010.csv"]


def test_part_names() -> None:
    assert parse_part_name("abc-def-00012.csv.open") is not None
    name = parse_part_name("abc-def-00012.csv")
    assert name is not None and (name.session_id, name.part) == ("abc-def", 12)
    assert name.file_name == "abc-def-00012.csv"
    assert parse_part_name("abc.csv") is None
    assert parse_part_name("ABC-00001.csv") is None


def test_read_part_names_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "s1-00001.csv"
    path.write_bytes(b"nope\n")
    with pytest.raises(SpoolError, match=r"s1-00001\.csv is corrupt") as info:
        read_part(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ uploads and disk bound


def upload(spool_dir: Path, sealed: Path, mtime: int) -> Path:
    """What the sync does after a verified upload: move the part to uploaded/."""
    target = spool_dir / "uploaded" / sealed.relative_to(spool_dir / "sealed")
    move_part(sealed, target)
    os.utime(target, ns=(mtime, mtime))
    return target


def make_parts(spool: Spool, count: int, rows: int = 4) -> list[Path]:
    parts = []
    for n in range(count):
        for i in range(rows):
            spool.append(reading(n * rows + i))
        sealed = spool.seal_open()
        assert sealed is not None
        parts.append(sealed)
    return parts


def test_batch_ids_and_readings_span_open_sealed_and_uploaded(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = make_parts(spool, 2, rows=2)
    upload(tmp_path, first, 1)
    spool.append(reading(4))
    spool.append(reading(0, session="other"))
    assert spool.batch_ids_in("s1") == {reading(i).batch_id for i in range(5)}
    assert [r.seq for r in iter_readings(tmp_path, "s1")] == [0, 1, 2, 3, 4]
    assert len(list(iter_readings(tmp_path))) == 6
    assert spool.sealed_parts() == [second]
    spool.seal_open()


def test_sealed_parts_are_listed_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    parts = make_parts(spool, 3, rows=1)
    for age, part in zip((300, 100, 200), parts, strict=True):
        os.utime(part, ns=(age, age))
    assert spool.sealed_parts() == [parts[1], parts[2], parts[0]]


def test_bound_deletes_the_oldest_uploaded_parts_and_never_waiting_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Spool(tmp_path / "probe")
    parts = make_parts(probe, 6)
    # a part on disk is its CSV and its checksum
    sizes = [p.stat().st_size + checksum_path(p).stat().st_size for p in parts]
    bound = sum(sizes) - 1  # one byte too many: exactly one uploaded part has to go

    spool = Spool(probe.spool_dir, max_disk_bytes=bound, warn_fraction=0.5)
    mtimes = (40, 10, 30, 20)
    uploaded = [upload(spool.spool_dir, p, m) for p, m in zip(parts[:4], mtimes, strict=True)]
    waiting = parts[4:]

    usage = spool.disk_usage()
    assert usage.bytes_total == sum(sizes)
    assert usage.bytes_uploaded == sum(sizes[:4])
    assert usage.bytes_waiting == sum(sizes[4:])
    assert usage.fraction == pytest.approx(sum(sizes[4:]) / bound)
    assert usage.warning is None

    deleted = spool.enforce_bound()
    assert deleted == [uploaded[1]]  # the oldest upload, and only as much as needed
    assert spool.disk_usage().bytes_total <= bound
    assert all(p.exists() for p in waiting)

    # uploads stall: waiting data grows past the warning, then past the bound
    more = make_parts(spool, 1)
    usage = spool.disk_usage()
    assert usage.warning is not None and "not yet uploaded" in usage.warning
    assert "spool.max_disk_mb" in usage.warning and "\n" not in usage.warning
    more += make_parts(spool, 4)
    with caplog.at_level(logging.WARNING, logger="captaflow.spool"):
        deleted = spool.enforce_bound()
    assert sorted(deleted) == sorted([uploaded[0], uploaded[2], uploaded[3]])
    assert all(p.exists() for p in waiting + more)
    assert spool.disk_usage().bytes_uploaded == 0
    assert spool.disk_usage().bytes_waiting > bound
    assert any("nothing was dropped" in m and "go online" in m for m in caplog.messages)


# ------------------------------------------------------------------ full disk


class DiskSpace:
    """Bytes left on a pretend drive; writes past it fail the way a full disk does."""

    def __init__(self, free: int) -> None:
        self.free = free


class FileOnSmallDisk(io.FileIO):
    def __init__(self, path: Path, space: DiskSpace) -> None:
        super().__init__(path, "ab")
        self.space = space

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(data) <= self.space.free:
            self.space.free -= len(data)
            return super().write(data)
        # a real full disk accepts what fits, then fails
        if self.space.free:
            super().write(bytes(data[: self.space.free]))
            self.space.free = 0
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_written_rows_and_retries_the_reading(tmp_path: Path) -> None:
    row_size = len(",".join(reading(0).as_row())) + 1
    space = DiskSpace(len(HEADER_LINE) + 2 * row_size + row_size // 2)

    def opener(path: Path) -> BinaryIO:
        return FileOnSmallDisk(path, space)  # type: ignore[return-value]

    spool = Spool(tmp_path, opener=opener)
    spool.append(reading(0))
    spool.append(reading(1))
    with pytest.raises(SpoolError) as info:
        spool.append(reading(2))
    message = str(info.value)
    assert "disk full" in message and "free" in message and "--data-dir" in message
    assert "\n" not in message
    open_part = tmp_path / "open/s1-00001.csv.open"
    assert [r.seq for r in read_part(open_part)] == [0, 1]
    assert open_part.read_bytes().endswith(b"\n")  # the half-written row was cut back
    assert [r.seq for r in spool.pending] == [2]

    spool.append(reading(3))  # still full: said once already, both wait, in order
    assert [r.seq for r in spool.pending] == [2, 3]
    assert spool.problem is not None and "2 reading(s)" in spool.problem

    space.free = 10 * row_size  # the streamer freed some space
    spool.append(reading(4))
    assert spool.pending == ()
    sealed = spool.seal_open()
    assert sealed is not None
    assert [r.seq for r in read_part(sealed)] == [0, 1, 2, 3, 4]


def test_a_full_disk_while_starting_a_part_leaves_no_broken_file(tmp_path: Path) -> None:
    space = DiskSpace(10)
    spool = Spool(tmp_path, opener=lambda path: FileOnSmallDisk(path, space))  # type: ignore[arg-type,return-value]
    with pytest.raises(SpoolError, match="disk full"):
        spool.append(reading(0))
    assert not list((tmp_path / "open").iterdir())
    space.free = 1 << 20
    spool.retry_pending()
    sealed = spool.seal_open()
    assert sealed is not None and sealed.name == "s1-00002.csv"
    assert [r.seq for r in read_part(sealed)] == [0]


def test_timestamps_keep_milliseconds(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(reading(0))
    sealed = spool.seal_open()
    assert sealed is not None
    row = sealed.read_bytes().decode("ascii").split("\n")[1].split(",")
    assert row[READING_COLUMNS.index("window_start")] == format_timestamp(DAY1 + 0.123)
    assert row[READING_COLUMNS.index("window_start")].endswith(".123")


def test_a_part_whose_first_row_hit_a_full_disk_is_not_sealed_empty(tmp_path: Path) -> None:
    space = DiskSpace(len(HEADER_LINE) + 5)
    spool = Spool(tmp_path, opener=lambda path: FileOnSmallDisk(path, space))  # type: ignore[arg-type,return-value]
    with pytest.raises(SpoolError, match="disk full"):
        spool.append(reading(0))
    assert spool.seal_open() is None  # still full at stop: nothing sealed, nothing broken
    assert not list((tmp_path / "open").iterdir())
    assert not list((tmp_path / "sealed").rglob("*.csv"))
    assert [r.seq for r in spool.pending] == [0]
