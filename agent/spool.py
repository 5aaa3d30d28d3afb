"""The on-disk spool: readings in CSV part files that survive crashes and full disks.

Where parts live, what their names and headers mean and which S3 key each goes to is
`agent.layout`'s (one module owns the layout; the sync, the report and Athena use it too).

An open part needs no sidecar: its own rows carry the platform and channel, and its dt is
the UTC date of its first row's window_start. A part only ever holds rows of one session,
platform, channel and UTC date (a new date starts a new part), so that identity is known
from the first row. Each (session, platform, channel) has its own open part, so a
multistream feed windowed per platform writes each platform to its own partition. An open
part with no complete row holds no reading and is simply removed on recovery.

Part numbers are per session, increasing and never reused: a new part takes one more than
the highest number found for the session in open/, sealed/, uploaded/ and corrupt/.

Rotation: `append` seals a part that is full (`max_part_rows`) or whose UTC date differs
before writing; `maybe_seal(now)` seals full parts and parts older than
`max_part_age_seconds`; `seal_open` seals everything at stop.

Writing: every row is one ``write`` of ``row + "\\n"`` followed by a flush, so a killed
process leaves at most one partial last line (the row in flight), which recovery cuts off.
Sealing is flush, fsync, close, the part's SHA-256 written beside its sealed place, then
``os.replace`` into sealed/ and fsync of both directories (skipped on Windows, which cannot
open a directory). Recovery verifies every sealed part against its checksum; a part that
fails goes to corrupt/ with a warning and is never uploaded.

Full disk: a write failing with ENOSPC is cut back to the last complete row, the reading is
kept in memory (`Spool.pending`) and retried before the next one, and `SpoolError` says how
much space is free and what waits. A part that cannot be sealed for lack of space is kept
and sealed by `maybe_seal` once space returns. `Spool.problem` is the one line to show
meanwhile. If the process dies, the runtime re-windows the journaled messages whose batch
is not in the spool (`Spool.batch_ids_in`): what waited in memory is made again.

Disk bound: `enforce_bound` deletes the oldest *uploaded* parts first; data not yet uploaded
is never deleted, and `disk_usage().warning` says what to do once it fills `warn_fraction` of
the bound.
"""

from __future__ import annotations

import contextlib
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
from agent.layout import (
    AREAS,
    HEADER_LINE,
    OPEN_DIR,
    SEALED_DIR,
    UPLOADED_DIR,
    ParsedPart,
    PartName,
    checksum_path,
    encode_row,
    fsync_dir,
    parse_part,
    parse_part_name,
    part_files,
    partition_dir,
    set_aside,
    sha256_hex,
    validate_reading,
    verify_part,
    write_checksum,
)
from agent.vocab import Reading, utc_date

__all__ = [
    "HEADER_LINE",
    "DiskUsage",
    "ParsedPart",
    "PartName",
    "RecoveryReport",
    "Spool",
    "iter_readings",
    "parse_part",
    "parse_part_name",
    "partition_dir",
    "read_part",
    "validate_reading",
]

log = logging.getLogger("captaflow.spool")

FileOpener = Callable[[Path], BinaryIO]

# A row's size on disk, about (24 columns of short text and 6-decimal numbers).
ROW_BYTES = 220


def _open_for_append(path: Path) -> BinaryIO:
    # Unbuffered: each row reaches the OS in its own write call, so a failure (ENOSPC) is
    # seen at that row and the file offset is exact.
    return open(path, "ab", buffering=0)


def read_part(path: Path) -> list[Reading]:
    """The readings of one part (open, sealed or uploaded, any format); a partial last line
    is ignored."""
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
        for path in part_files(spool_dir, area):
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
    adopted: list[Path] = field(default_factory=list)  # sealed parts given their checksum
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

    @property
    def stream(self) -> tuple[str, str, str]:
        return (self.name.session_id, self.platform, self.channel)


@dataclass(frozen=True, slots=True)
class _Unsealed:
    """A closed open part whose sealing failed (a full disk): sealed again later."""

    path: Path
    name: PartName
    platform: str
    channel: str
    dt: str


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


class _NoRoom(Exception):
    """Sealing ran out of space; carries the OSError."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def free_space(directory: Path) -> int | None:
    """Bytes free on the drive of `directory` (None when the OS cannot tell)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


class Spool:
    """Append readings, seal parts, recover after a crash, keep disk use bounded.

    Thread-safe: the runtime appends from one place, the report and status may read.
    `opener` opens an open part for appending; it exists so a test can stand in for a
    full disk.

    Each (session, platform, channel) has its own open part: a multistream feed windowed per
    platform interleaves readings of several platforms, and each goes to its own partition.
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
        self._open: dict[tuple[str, str, str], _OpenPart] = {}
        self._unsealed: list[_Unsealed] = []
        self._next_part: dict[str, int] = {}
        self._pending: list[Reading] = []
        self._full_since: float | None = None
        self._lock = threading.RLock()
        try:
            for area in AREAS:
                (self.spool_dir / area).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"cannot create the spool folder {self.spool_dir}: {exc.strerror or exc}; "
                "choose a writable folder with --data-dir"
            ) from exc
        free = free_space(self.spool_dir)
        if free is not None and free < self.room_needed:
            log.warning(
                "only %s free on the drive of the spool %s: a part needs up to %s; readings "
                "wait in memory while the disk is full (free some space on that drive)",
                _mb(free),
                self.spool_dir,
                _mb(self.room_needed),
            )

    @property
    def room_needed(self) -> int:
        """Free bytes one full part (and its checksum) may take: what the spool needs to
        keep writing without holding readings in memory."""
        return self.max_part_rows * ROW_BYTES + 4096

    # ----------------------------------------------------------------- writing

    @property
    def pending(self) -> tuple[Reading, ...]:
        """Readings that a full disk kept from the spool; retried before the next append."""
        return tuple(self._pending)

    @property
    def problem(self) -> str | None:
        """One line while a full disk holds readings (or a part) in memory, else None."""
        with self._lock:
            if not self._pending and not self._unsealed:
                return None
            free = free_space(self.spool_dir)
            room = "unknown space" if free is None else _mb(free)
            return (
                f"disk full: spool {self.spool_dir} has {room} free; {len(self._pending)} "
                f"reading(s) and {len(self._unsealed)} part(s) to seal wait in memory and are "
                "written by themselves when space returns: free some space on that drive"
            )

    def append(self, reading: Reading) -> None:
        """Write one reading (after any pending ones) as a row of its stream's open part.

        Raises ValueError for a reading that cannot be a CSV row as is (a bug upstream) and
        SpoolError when the disk fills up; then the reading waits in `pending`, as do the
        readings appended while it stays full (without raising again).
        """
        validate_reading(reading)  # before it can join the pending queue
        with self._lock:
            already_full = bool(self._pending)
            self._pending.append(reading)
            try:
                self.retry_pending()
            except SpoolError:
                # Said once when the disk fills; `problem` keeps saying it meanwhile.
                if not already_full:
                    raise

    def retry_pending(self) -> None:
        """Write the readings a full disk held back, oldest first (SpoolError if still full)."""
        with self._lock:
            self._retry_unsealed()
            while self._pending:
                self._write(self._pending[0])
                self._pending.pop(0)
            if self._full_since is not None and not self._unsealed:
                log.info("spool %s: disk space is back, every reading is written", self.spool_dir)
                self._full_since = None

    def _write(self, reading: Reading) -> None:
        row = encode_row(reading)
        dt = utc_date(reading.window_start)
        stream = (reading.session_id, reading.platform, reading.channel)
        part = self._open.get(stream)
        if part is not None and (part.rows >= self.max_part_rows or part.dt != dt):
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
        path = self.spool_dir / OPEN_DIR / name.open_name
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
        self._open[part.stream] = part
        return part

    def _cut_back(self, part: _OpenPart, offset: int) -> None:
        # Truncating needs no free space, so the rows before stay a valid part.
        try:
            part.handle.truncate(offset)
            part.handle.seek(offset)
        except OSError as exc:
            log.warning("could not cut %s back to its last complete row: %s", part.path, exc)

    def _write_error(self, path: Path, exc: OSError) -> SpoolError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            if self._full_since is None:
                self._full_since = self._clock()
            free = free_space(self.spool_dir)
            room = "unknown space" if free is None else _mb(free)
            return SpoolError(
                f"disk full writing {path} ({room} free): free some space on that drive or "
                f"move the spool with --data-dir; {len(self._pending)} reading(s) wait in "
                "memory and are written by themselves when space returns"
            )
        return SpoolError(
            f"cannot write spool part {path}: {exc.strerror or exc}; check that the folder is "
            "writable, or choose another with --data-dir"
        )

    # ----------------------------------------------------------------- sealing

    def maybe_seal(self, now: float) -> list[Path]:
        """Seal every open part that holds `max_part_rows` rows or is older than the age
        limit, and any part a full disk kept from being sealed."""
        with self._lock:
            sealed: list[Path] = []
            try:
                # Space may have come back: write what waits without waiting for a reading.
                self.retry_pending()
            except SpoolError as exc:
                log.debug("%s", exc)
            try:
                sealed.extend(self._retry_unsealed())
            except SpoolError as exc:
                log.debug("%s", exc)
            due = [
                part
                for part in self._open.values()
                if part.rows >= self.max_part_rows
                or (part.rows > 0 and now - part.opened_at >= self.max_part_age_seconds)
            ]
            for part in due:
                try:
                    path = self._seal(part)
                except SpoolError as exc:
                    log.warning("%s", exc)
                    continue
                if path is not None:
                    sealed.append(path)
            return sealed

    def seal_open(self) -> Path | None:
        """At stop: write what a full disk held back if it can, then seal the open parts.

        Returns the last part sealed (None if none). Readings still held back by a full
        disk are not in the spool; the runtime re-makes them from the journal at the next
        start (their batch ids are missing from `batch_ids_in`). A part that cannot be sealed
        for lack of space stays in open/ and is sealed by recovery at the next start.
        """
        with self._lock:
            try:
                self.retry_pending()
            except SpoolError as exc:
                log.warning("%s (%d readings not written)", exc, len(self._pending))
            sealed: list[Path] = []
            for part in list(self._open.values()):
                path = self._seal(part)
                if path is not None:
                    sealed.append(path)
            try:
                sealed.extend(self._retry_unsealed())
            except SpoolError as exc:
                log.warning("%s; recovery seals it at the next start", exc)
            return sealed[-1] if sealed else None

    def _seal(self, part: _OpenPart) -> Path | None:
        """Seal one open part; a part whose first row never made it is removed instead.

        A failure for lack of space keeps the part to be sealed by `maybe_seal` later (and
        raises SpoolError); the next reading of its stream starts a new part meanwhile.
        """
        del self._open[part.stream]
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
        job = _Unsealed(part.path, part.name, part.platform, part.channel, part.dt)
        return self._seal_closed(job)

    def _seal_closed(self, job: _Unsealed) -> Path:
        try:
            return self._move_to_sealed(job.path, job.name, job.platform, job.channel, job.dt)
        except _NoRoom as exc:
            if job not in self._unsealed:
                self._unsealed.append(job)
            raise self._write_error(job.path, exc.error) from exc.error

    def _retry_unsealed(self) -> list[Path]:
        done = []
        while self._unsealed:
            job = self._unsealed[0]
            path = self._seal_closed(job)
            self._unsealed.pop(0)
            done.append(path)
        return done

    def _move_to_sealed(
        self, path: Path, name: PartName, platform: str, channel: str, dt: str
    ) -> Path:
        """Record the part's checksum beside its sealed place, then move it there."""
        target_dir = self.spool_dir / SEALED_DIR / partition_dir(platform, channel, dt)
        target = target_dir / name.file_name
        uploaded = self.spool_dir / UPLOADED_DIR / target.relative_to(self.spool_dir / SEALED_DIR)
        if target.exists() or uploaded.exists():
            # Sealed parts never change: never replace one.
            raise SpoolError(
                f"spool part {target} already exists; {path} was not sealed over it, "
                "restart the agent, which sets the duplicate aside"
            )
        try:
            data = path.read_bytes()
            target_dir.mkdir(parents=True, exist_ok=True)
            # The checksum first: a sealed part never exists without one.
            write_checksum(target, sha256_hex(data))
            os.replace(path, target)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                checksum_path(target).unlink(missing_ok=True)
                raise _NoRoom(exc) from exc
            raise SpoolError(
                f"cannot seal spool part {path}: {exc.strerror or exc}; restart the agent, "
                "which recovers it"
            ) from exc
        fsync_dir(target_dir)
        fsync_dir(path.parent)
        return target

    # ----------------------------------------------------------------- recovery

    def recover(self) -> RecoveryReport:
        """At start: seal what a crash left open, verify every sealed part against its
        checksum, set corrupt parts aside (never delete)."""
        report = RecoveryReport()
        with self._lock:
            if self._open:
                raise RuntimeError("recover() runs at start, before any append")
            for path in sorted(part_files(self.spool_dir, OPEN_DIR)):
                self._recover_open(path, report)
            for path in sorted(part_files(self.spool_dir, SEALED_DIR)):
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
        job = _Unsealed(path, name, first.platform, first.channel, utc_date(first.window_start))
        try:
            sealed = self._seal_closed(job)
        except SpoolError as exc:
            if job in self._unsealed:
                # No room to seal it now: it stays in open/ and is sealed when space returns.
                report.warnings.append(str(exc))
                return
            self._set_aside(path, str(exc), report)
            return
        report.sealed.append(sealed)

    def _check_sealed(self, path: Path, report: RecoveryReport) -> None:
        """Verify a sealed part; one sealed by a release without checksums gets its own."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return  # the sync moved it to uploaded/ meanwhile
        except OSError as exc:
            self._set_aside(path, f"unreadable ({exc.strerror or exc})", report)
            return
        problem = verify_part(path, data)
        if problem is not None:
            self._set_aside(path, problem, report)
            return
        if not checksum_path(path).exists():
            try:
                write_checksum(path, sha256_hex(data))
            except OSError as exc:
                # Still uploadable: the sync checks its rows instead of a checksum.
                log.warning("could not record the checksum of %s: %s", path, exc.strerror)
            else:
                report.adopted.append(path)

    def _set_aside(self, path: Path, why: str, report: RecoveryReport) -> None:
        target, message = set_aside(self.spool_dir, path, why)
        report.corrupt.append(target)
        report.warnings.append(message)

    # ----------------------------------------------------------------- queries

    def _highest_part(self, session_id: str) -> int:
        highest = 0
        for area in AREAS:
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
        for path in part_files(self.spool_dir, SEALED_DIR):
            name = parse_part_name(path.name)
            assert name is not None
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # uploaded meanwhile
            keyed.append(((mtime, name.session_id, name.part), path))
        return [path for _, path in sorted(keyed)]

    def disk_usage(self) -> DiskUsage:
        sizes = dict.fromkeys(AREAS, 0)
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
            for path in part_files(self.spool_dir, UPLOADED_DIR):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                size = stat.st_size
                with contextlib.suppress(OSError):
                    size += checksum_path(path).stat().st_size
                uploaded.append((stat.st_mtime_ns, str(path), size, path))
            for _, _, size, path in sorted(uploaded):
                if excess <= 0:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                checksum_path(path).unlink(missing_ok=True)
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
