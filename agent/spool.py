"""The on-disk spool: readings in CSV part files that survive crashes and full disks.

Layout under the spool directory (shared with `agent.sync` and the report; keep it)::

    open/<session>-<part:05d>.csv.open        the part being written (one per session)
    sealed/platform=<p>/channel=<c>/dt=<YYYY-MM-DD>/<session>-<part:05d>.csv
                                              sealed, immutable, waiting for upload; the path
                                              relative to sealed/ is the S3 key after {prefix}/
    uploaded/<same relative path>             moved here by the sync after a verified upload
    corrupt/<relative path of the part>       set aside, never deleted

An open part needs no sidecar: its own rows carry the platform and channel, and its dt is
the UTC date of its first row's window_start. A part only ever holds rows of one session,
platform, channel and UTC date (a new date starts a new part), so that identity is known
from the first row. An open part with no complete row holds no reading and is simply
removed on recovery.

Part numbers are per session, increasing and never reused: a new part takes one more than
the highest number found for the session in open/, sealed/, uploaded/ and corrupt/.

Rotation: `append` seals a part that is full (`max_part_rows`) or whose session, platform,
channel or UTC date differs before writing; `maybe_seal(now)` seals full parts and parts
older than `max_part_age_seconds`; `seal_open` seals everything at stop.

Writing: every row is one ``write`` of ``row + "\\n"`` followed by a flush, so a killed
process leaves at most one partial last line (the row in flight), which recovery cuts off.
Sealing is flush, fsync, close, ``os.replace`` into sealed/, fsync of both directories
(skipped on Windows, which cannot open a directory).

Full disk: a write failing with ENOSPC is cut back to the last complete row, the reading is
kept in memory (`Spool.pending`) and retried before the next one, and `SpoolError` says how
much space is free and what to do. If the process dies meanwhile, the runtime re-windows the
journaled messages whose batch is not in the spool (`Spool.batch_ids_in`).

Disk bound: `enforce_bound` deletes the oldest *uploaded* parts first; data not yet uploaded
is never deleted, and `disk_usage().warning` says what to do once it fills `warn_fraction` of
the bound.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from agent.errors import SpoolError
from agent.vocab import LABELS, READING_COLUMNS, Reading, utc_date, validate_name

log = logging.getLogger("captaflow.spool")

OPEN_DIR = "open"
SEALED_DIR = "sealed"
UPLOADED_DIR = "uploaded"
CORRUPT_DIR = "corrupt"
OPEN_SUFFIX = ".open"

HEADER_LINE = (",".join(READING_COLUMNS) + "\n").encode("ascii")

# <session>-<part>.csv, optionally .open; a session may itself contain '-' (the part number
# is the last dash-separated group).
_PART_NAME_RE = re.compile(r"^(?P<session>[a-z0-9_][a-z0-9_-]*)-(?P<part>\d{5,})\.csv(?:\.open)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Free-form fields (model id, agent version) must still need no CSV quoting.
_PLAIN_FIELD_RE = re.compile(r"^[A-Za-z0-9_.:/+@-]{1,200}$")
_BATCH_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")

FileOpener = Callable[[Path], BinaryIO]


def _open_for_append(path: Path) -> BinaryIO:
    # Unbuffered: each row reaches the OS in its own write call, so a failure (ENOSPC) is
    # seen at that row and the file offset is exact.
    return open(path, "ab", buffering=0)


@dataclass(frozen=True, slots=True)
class PartName:
    session_id: str
    part: int

    @property
    def file_name(self) -> str:
        return f"{self.session_id}-{self.part:05d}.csv"


def parse_part_name(name: str) -> PartName | None:
    """The session and part number in a part's file name, or None for any other file."""
    match = _PART_NAME_RE.match(name)
    if not match:
        return None
    return PartName(match["session"], int(match["part"]))


def partition_dir(platform: str, channel: str, dt: str) -> str:
    """The hive partition path of a part (and of its S3 key after the prefix)."""
    return f"platform={platform}/channel={channel}/dt={dt}"


def validate_reading(reading: Reading) -> None:
    """Raise ValueError naming the first field that cannot go into a spool row as is."""
    for what, value in (
        ("session id", reading.session_id),
        ("platform", reading.platform),
        ("channel", reading.channel),
    ):
        if validate_name(value, what) != value:
            raise ValueError(f"{what} {value!r} is not in canonical (lower-case) form")
    if not _BATCH_ID_RE.match(reading.batch_id):
        raise ValueError(f"batch id {reading.batch_id!r} is not a hex digest")
    for what, value in (("model id", reading.model_id), ("agent version", reading.agent_version)):
        if not _PLAIN_FIELD_RE.match(value):
            raise ValueError(f"{what} {value!r} holds characters a CSV row cannot carry unquoted")
    if reading.seq < 0:
        raise ValueError(f"seq {reading.seq} must be >= 0")
    if not (1 <= reading.scored_count <= reading.message_count):
        raise ValueError(
            f"scored_count {reading.scored_count} must be 1..message_count "
            f"({reading.message_count})"
        )
    if not (math.isfinite(reading.window_start) and math.isfinite(reading.window_end)):
        raise ValueError("window start and end must be finite")
    if reading.window_end < reading.window_start:
        raise ValueError(
            f"window ends ({reading.window_end}) before it starts ({reading.window_start})"
        )
    if len(reading.scores) != len(LABELS):
        raise ValueError(f"expected {len(LABELS)} scores, got {len(reading.scores)}")
    for label, score in zip(LABELS, reading.scores, strict=True):
        if not (0.0 <= score <= 1.0):
            raise ValueError(f"score of {label!r} is {score!r}, outside 0..1")
    if reading.dominant not in LABELS:
        raise ValueError(f"dominant {reading.dominant!r} is not a model label")


def _encode_row(reading: Reading) -> bytes:
    validate_reading(reading)
    return (",".join(reading.as_row()) + "\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class ParsedPart:
    """What a part file's bytes hold.

    `readings` are the complete, schema-valid rows before the first bad line; `valid_bytes`
    is where they end. `problem` is None when the rest is at most one partial last line
    (a row in flight), else a description of the corruption.
    """

    readings: list[Reading]
    valid_bytes: int
    header_ok: bool
    problem: str | None


def parse_part(data: bytes) -> ParsedPart:
    """Split a part's bytes into valid rows and what follows them (pure; no I/O)."""
    if not data.startswith(HEADER_LINE):
        if HEADER_LINE.startswith(data):
            # Empty, or the header itself was in flight: no reading was ever written.
            return ParsedPart([], 0, header_ok=False, problem=None)
        return ParsedPart([], 0, header_ok=False, problem="header is not the reading columns")
    readings: list[Reading] = []
    offset = len(HEADER_LINE)
    while True:
        newline = data.find(b"\n", offset)
        if newline < 0:
            # Only a line without its newline may follow: the row in flight at a crash.
            return ParsedPart(readings, offset, header_ok=True, problem=None)
        line = data[offset:newline]
        try:
            reading = Reading.from_row(line.decode("ascii").split(","))
            validate_reading(reading)
        except (ValueError, UnicodeDecodeError) as exc:
            where = f"row {len(readings) + 1}"
            return ParsedPart(readings, offset, header_ok=True, problem=f"{where}: {exc}")
        readings.append(reading)
        offset = newline + 1


def read_part(path: Path) -> list[Reading]:
    """The readings of one part (open, sealed or uploaded); a partial last line is ignored."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SpoolError(f"cannot read spool part {path}: {exc.strerror or exc}") from exc
    parsed = parse_part(data)
    if parsed.problem is not None:
        raise SpoolError(
            f"spool part {path} is corrupt ({parsed.problem}); move it to the spool's "
            "corrupt/ folder or restart the agent, which sets it aside"
        )
    return parsed.readings


def _part_files(spool_dir: Path, area: str) -> list[Path]:
    root = spool_dir / area
    if not root.is_dir():
        return []
    pattern = "*.csv.open" if area == OPEN_DIR else "*.csv"
    return [p for p in root.rglob(pattern) if p.is_file() and parse_part_name(p.name)]


def _read_moving(spool_dir: Path, path: Path) -> list[Reading]:
    """Read a sealed part that the sync may be moving to uploaded/ right now."""
    try:
        return read_part(path)
    except SpoolError:
        sealed_root = spool_dir / SEALED_DIR
        if path.exists() or not path.is_relative_to(sealed_root):
            raise
        return read_part(spool_dir / UPLOADED_DIR / path.relative_to(sealed_root))


def iter_readings(spool_dir: Path, session_id: str | None = None) -> Iterator[Reading]:
    """Every reading in open, sealed and uploaded parts; by session, then part, then row.

    A part that cannot be read is skipped with a warning (the report should still show the
    rest); `Spool.recover` sets such parts aside.
    """
    spool_dir = Path(spool_dir)
    found: list[tuple[str, int, Path]] = []
    for area in (OPEN_DIR, SEALED_DIR, UPLOADED_DIR):
        for path in _part_files(spool_dir, area):
            name = parse_part_name(path.name)
            assert name is not None
            if session_id is None or name.session_id == session_id:
                found.append((name.session_id, name.part, path))
    seen: set[tuple[str, int]] = set()
    for session, part, path in sorted(found):
        if (session, part) in seen:  # moved between areas while we listed them
            continue
        seen.add((session, part))
        try:
            readings = _read_moving(spool_dir, path)
        except SpoolError as exc:
            log.warning("%s", exc)
            continue
        yield from readings


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Bytes in the spool. `fraction` is what `enforce_bound` cannot free (everything but
    uploaded parts) over the bound; `warning` is one line when that passes `warn_fraction`."""

    bytes_total: int
    bytes_uploaded: int
    bytes_waiting: int
    fraction: float
    warning: str | None


@dataclass(slots=True)
class RecoveryReport:
    """What `Spool.recover` did at start."""

    sealed: list[Path] = field(default_factory=list)  # open parts recovered and sealed
    truncated_bytes: int = 0  # partial rows cut off those parts
    removed_empty: list[Path] = field(default_factory=list)  # open parts with no complete row
    corrupt: list[Path] = field(default_factory=list)  # where corrupt parts were moved
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _OpenPart:
    path: Path
    name: PartName
    platform: str
    channel: str
    dt: str
    handle: BinaryIO
    rows: int
    opened_at: float


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; Windows cannot open a directory (and NTFS journals renames)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself happened
    finally:
        os.close(fd)


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


class Spool:
    """Append readings, seal parts, recover after a crash, keep disk use bounded.

    Thread-safe: the runtime appends from one place, the report and status may read.
    `opener` opens an open part for appending; it exists so a test can stand in for a
    full disk.
    """

    def __init__(
        self,
        spool_dir: Path,
        *,
        max_part_rows: int = 5000,
        max_part_age_seconds: float = 300,
        max_disk_bytes: int = 2 << 30,
        warn_fraction: float = 0.8,
        clock: Callable[[], float] = time.time,
        opener: FileOpener = _open_for_append,
    ) -> None:
        if max_part_rows < 1:
            raise ValueError(f"max_part_rows must be >= 1, got {max_part_rows}")
        if not 0 < warn_fraction <= 1:
            raise ValueError(f"warn_fraction must be in (0, 1], got {warn_fraction}")
        self.spool_dir = Path(spool_dir)
        self.max_part_rows = max_part_rows
        self.max_part_age_seconds = max_part_age_seconds
        self.max_disk_bytes = max_disk_bytes
        self.warn_fraction = warn_fraction
        self._clock = clock
        self._opener = opener
        self._open: dict[str, _OpenPart] = {}
        self._next_part: dict[str, int] = {}
        self._pending: list[Reading] = []
        self._lock = threading.RLock()
        try:
            for area in (OPEN_DIR, SEALED_DIR, UPLOADED_DIR, CORRUPT_DIR):
                (self.spool_dir / area).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"cannot create the spool folder {self.spool_dir}: {exc.strerror or exc}; "
                "choose a writable folder with --data-dir"
            ) from exc

    # ----------------------------------------------------------------- writing

    @property
    def pending(self) -> tuple[Reading, ...]:
        """Readings that a full disk kept from the spool; retried before the next append."""
        return tuple(self._pending)

    def append(self, reading: Reading) -> None:
        """Write one reading (after any pending ones) as a row of its session's open part.

        Raises ValueError for a reading that cannot be a CSV row as is (a bug upstream) and
        SpoolError when the disk is full; then the reading waits in `pending`.
        """
        validate_reading(reading)  # before it can join the pending queue
        with self._lock:
            self._pending.append(reading)
            self.retry_pending()

    def retry_pending(self) -> None:
        """Write the readings a full disk held back, oldest first (SpoolError if still full)."""
        with self._lock:
            while self._pending:
                self._write(self._pending[0])
                self._pending.pop(0)

    def _write(self, reading: Reading) -> None:
        row = _encode_row(reading)
        dt = utc_date(reading.window_start)
        part = self._open.get(reading.session_id)
        if part is not None and (
            part.rows >= self.max_part_rows
            or (part.platform, part.channel, part.dt) != (reading.platform, reading.channel, dt)
        ):
            self._seal(part)
            part = None
        if part is None:
            part = self._start_part(reading, dt)
        offset = part.handle.tell()
        try:
            written = 0
            while written < len(row):
                n = part.handle.write(row[written:])
                if not n:
                    raise OSError(errno.EIO, "write returned no progress")
                written += n
            part.handle.flush()
        except OSError as exc:
            self._cut_back(part, offset)
            raise self._write_error(part.path, exc) from exc
        part.rows += 1

    def _start_part(self, reading: Reading, dt: str) -> _OpenPart:
        session = reading.session_id
        if session not in self._next_part:
            self._next_part[session] = self._highest_part(session) + 1
        name = PartName(session, self._next_part[session])
        self._next_part[session] += 1
        path = self.spool_dir / OPEN_DIR / (name.file_name + OPEN_SUFFIX)
        try:
            handle = self._opener(path)
        except OSError as exc:
            raise self._write_error(path, exc) from exc
        try:
            handle.write(HEADER_LINE)
            handle.flush()
        except OSError as exc:
            handle.close()
            # A header-only (or partial) file holds no reading; recovery would remove it too.
            path.unlink(missing_ok=True)
            raise self._write_error(path, exc) from exc
        part = _OpenPart(
            path=path,
            name=name,
            platform=reading.platform,
            channel=reading.channel,
            dt=dt,
            handle=handle,
            rows=0,
            opened_at=self._clock(),
        )
        self._open[session] = part
        return part

    def _cut_back(self, part: _OpenPart, offset: int) -> None:
        # Truncating needs no free space, so the rows before stay a valid part.
        try:
            part.handle.truncate(offset)
            part.handle.seek(offset)
        except OSError as exc:
            log.warning("could not cut %s back to its last complete row: %s", part.path, exc)

    def _write_error(self, path: Path, exc: OSError) -> SpoolError:
        if exc.errno == errno.ENOSPC:
            try:
                free = _mb(shutil.disk_usage(self.spool_dir).free)
            except OSError:
                free = "unknown"
            return SpoolError(
                f"disk full writing {path} ({free} free): free some space on that drive or "
                "move the spool with --data-dir; readings wait in memory and are retried"
            )
        return SpoolError(
            f"cannot write spool part {path}: {exc.strerror or exc}; check that the folder is "
            "writable, or choose another with --data-dir"
        )

    # ----------------------------------------------------------------- sealing

    def maybe_seal(self, now: float) -> list[Path]:
        """Seal every open part that holds `max_part_rows` rows or is older than the age limit."""
        with self._lock:
            due = [
                part
                for part in self._open.values()
                if part.rows >= self.max_part_rows
                or (part.rows > 0 and now - part.opened_at >= self.max_part_age_seconds)
            ]
            sealed = [self._seal(part) for part in due]
            return [path for path in sealed if path is not None]

    def seal_open(self) -> Path | None:
        """At stop: write what a full disk held back if it can, then seal the open parts.

        Returns the last part sealed (None if none). Readings still held back by a full
        disk are not in the spool; the runtime re-makes them from the journal at the next
        start (their batch ids are missing from `batch_ids_in`).
        """
        with self._lock:
            try:
                self.retry_pending()
            except SpoolError as exc:
                log.warning("%s (%d readings not written)", exc, len(self._pending))
            sealed = [self._seal(part) for part in list(self._open.values())]
            done = [path for path in sealed if path is not None]
            return done[-1] if done else None

    def _seal(self, part: _OpenPart) -> Path | None:
        """Seal one open part; a part whose first row never made it is removed instead."""
        del self._open[part.name.session_id]
        try:
            part.handle.flush()
            os.fsync(part.handle.fileno())
        except OSError as exc:
            part.handle.close()
            raise SpoolError(
                f"cannot save spool part {part.path} to disk: {exc.strerror or exc}; "
                "restart the agent, which recovers it"
            ) from exc
        part.handle.close()
        if part.rows == 0:
            # Only the header: a full disk refused the first row. It holds no reading.
            part.path.unlink(missing_ok=True)
            return None
        return self._move_to_sealed(part.path, part.name, part.platform, part.channel, part.dt)

    def _move_to_sealed(
        self, path: Path, name: PartName, platform: str, channel: str, dt: str
    ) -> Path:
        target_dir = self.spool_dir / SEALED_DIR / partition_dir(platform, channel, dt)
        target = target_dir / name.file_name
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            if (
                target.exists()
                or (
                    self.spool_dir / UPLOADED_DIR / target.relative_to(self.spool_dir / SEALED_DIR)
                ).exists()
            ):
                # Sealed parts never change: never replace one.
                raise SpoolError(
                    f"spool part {target} already exists; {path} was not sealed over it, "
                    "restart the agent, which sets the duplicate aside"
                )
            os.replace(path, target)
        except OSError as exc:
            raise SpoolError(
                f"cannot seal spool part {path}: {exc.strerror or exc}; restart the agent, "
                "which recovers it"
            ) from exc
        _fsync_dir(target_dir)
        _fsync_dir(path.parent)
        return target

    # ----------------------------------------------------------------- recovery

    def recover(self) -> RecoveryReport:
        """At start: seal what a crash left open, set corrupt parts aside (never delete)."""
        report = RecoveryReport()
        with self._lock:
            if self._open:
                raise RuntimeError("recover() runs at start, before any append")
            for path in sorted(_part_files(self.spool_dir, OPEN_DIR)):
                self._recover_open(path, report)
            for path in sorted(_part_files(self.spool_dir, SEALED_DIR)):
                self._check_sealed(path, report)
            self._next_part.clear()
        for warning in report.warnings:
            log.warning("%s", warning)
        return report

    def _recover_open(self, path: Path, report: RecoveryReport) -> None:
        name = parse_part_name(path.name)
        assert name is not None
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._set_aside(path, f"unreadable ({exc.strerror or exc})", report)
            return
        parsed = parse_part(data)
        if parsed.problem is not None:
            self._set_aside(path, parsed.problem, report)
            return
        if not parsed.readings:
            # Header (or part of it) only: the crash came before the first row.
            path.unlink()
            report.removed_empty.append(path)
            return
        identities = {(r.session_id, r.platform, r.channel) for r in parsed.readings}
        first = parsed.readings[0]
        if identities != {(name.session_id, first.platform, first.channel)}:
            self._set_aside(path, "rows of another session, platform or channel", report)
            return
        cut = len(data) - parsed.valid_bytes
        if cut:
            with open(path, "r+b") as handle:
                handle.truncate(parsed.valid_bytes)
                handle.flush()
                os.fsync(handle.fileno())
            report.truncated_bytes += cut
        try:
            sealed = self._move_to_sealed(
                path, name, first.platform, first.channel, utc_date(first.window_start)
            )
        except SpoolError as exc:
            self._set_aside(path, str(exc), report)
            return
        report.sealed.append(sealed)

    def _check_sealed(self, path: Path, report: RecoveryReport) -> None:
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(HEADER_LINE))
        except FileNotFoundError:
            return  # the sync moved it to uploaded/ meanwhile
        except OSError as exc:
            self._set_aside(path, f"unreadable ({exc.strerror or exc})", report)
            return
        if head != HEADER_LINE:
            self._set_aside(path, "header is not the reading columns", report)

    def _set_aside(self, path: Path, why: str, report: RecoveryReport) -> None:
        relative = path.relative_to(self.spool_dir)
        target = self.spool_dir / CORRUPT_DIR / relative.relative_to(relative.parts[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while target.exists():
            target = target.with_name(f"{path.name}.{n}")
            n += 1
        os.replace(path, target)
        _fsync_dir(target.parent)
        report.corrupt.append(target)
        report.warnings.append(
            f"spool part {path} is corrupt ({why}); moved to {target} and kept: "
            "look at it or delete it by hand"
        )

    # ----------------------------------------------------------------- queries

    def _highest_part(self, session_id: str) -> int:
        highest = 0
        for area in (OPEN_DIR, SEALED_DIR, UPLOADED_DIR, CORRUPT_DIR):
            root = self.spool_dir / area
            if not root.is_dir():
                continue
            for path in root.rglob(f"{session_id}-*"):
                # corrupt/ may hold suffixed names (part.csv.1); the part number still counts
                name = parse_part_name(re.sub(r"(\.csv(?:\.open)?)\.\d+$", r"\1", path.name))
                if name is not None and name.session_id == session_id:
                    highest = max(highest, name.part)
        return highest

    def batch_ids_in(self, session_id: str) -> set[str]:
        """Batch ids of every reading of a session in open, sealed and uploaded parts."""
        with self._lock:
            for part in self._open.values():
                part.handle.flush()
            return {r.batch_id for r in iter_readings(self.spool_dir, session_id)}

    def sealed_parts(self) -> list[Path]:
        """Sealed parts waiting for upload, oldest sealed first (ties: session, part)."""
        keyed = []
        for path in _part_files(self.spool_dir, SEALED_DIR):
            name = parse_part_name(path.name)
            assert name is not None
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # uploaded meanwhile
            keyed.append(((mtime, name.session_id, name.part), path))
        return [path for _, path in sorted(keyed)]

    def disk_usage(self) -> DiskUsage:
        sizes = {area: 0 for area in (OPEN_DIR, SEALED_DIR, UPLOADED_DIR, CORRUPT_DIR)}
        for area in sizes:
            root = self.spool_dir / area
            if not root.is_dir():
                continue
            for path in root.rglob("*"):
                try:
                    if path.is_file():
                        sizes[area] += path.stat().st_size
                except FileNotFoundError:
                    continue
        total = sum(sizes.values())
        waiting = sizes[OPEN_DIR] + sizes[SEALED_DIR]
        kept = total - sizes[UPLOADED_DIR]
        fraction = kept / self.max_disk_bytes if self.max_disk_bytes > 0 else math.inf
        warning = None
        if fraction >= self.warn_fraction:
            warning = (
                f"spool {self.spool_dir} holds {_mb(kept)} not yet uploaded, "
                f"{fraction:.0%} of its {_mb(self.max_disk_bytes)} bound: go online so uploads "
                "can run, or raise spool.max_disk_mb"
            )
        return DiskUsage(
            bytes_total=total,
            bytes_uploaded=sizes[UPLOADED_DIR],
            bytes_waiting=waiting,
            fraction=fraction,
            warning=warning,
        )

    def enforce_bound(self) -> list[Path]:
        """Delete the oldest uploaded parts until the spool fits its bound; return them.

        Never deletes data that is not uploaded: when that alone passes the bound, nothing
        more is deleted and a warning (also in `disk_usage().warning`) says what to do.
        """
        usage = self.disk_usage()
        excess = usage.bytes_total - self.max_disk_bytes
        deleted: list[Path] = []
        if excess > 0:
            uploaded = []
            for path in _part_files(self.spool_dir, UPLOADED_DIR):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                uploaded.append((stat.st_mtime_ns, str(path), stat.st_size, path))
            for _, _, size, path in sorted(uploaded):
                if excess <= 0:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                excess -= size
                deleted.append(path)
        if excess > 0:
            log.warning(
                "spool %s is %s over its %s bound with data not yet uploaded; nothing was "
                "dropped: go online so uploads can run, or raise spool.max_disk_mb",
                self.spool_dir,
                _mb(excess),
                _mb(self.max_disk_bytes),
            )
        elif usage.warning:
            log.warning("%s", usage.warning)
        return deleted
