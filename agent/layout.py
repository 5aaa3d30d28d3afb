"""The spool's on-disk layout and part format: the one module that knows them.

The spool writes parts, the sync uploads them, the report and `captaflow status` read them and
`captaflow athena-ddl` describes them to Athena; all of them ask this module where a part lives,
what its name means, which format its bytes are in, and which S3 key it goes to.

Areas under the spool directory::

    open/<session>-<part:05d>.csv.open           the part being written (one per session,
                                                  platform and channel)
    sealed/platform=<p>/channel=<c>/dt=<YYYY-MM-DD>/<session>-<part:05d>.csv
                                                  sealed, immutable, waiting for upload
    sealed/.../<session>-<part:05d>.csv.sha256    its checksum, written before the part is moved
                                                  into sealed/ (sha256sum's format)
    uploaded/<same relative path>                 moved here (with its checksum) after a
                                                  verified upload
    corrupt/<relative path of the part>           set aside, never uploaded, never deleted

S3 key: the path relative to sealed/ after ``{prefix}/``, so a key depends only on a part's
identity and uploading it twice writes the same object twice (`object_key`).

Format version: the first line of every part is its header, and each format version has its
own exact header (`FORMAT_COLUMNS`). The header *is* the version tag, rather than a separate
comment line or a version in the file name, because:

- Athena's CSV reader skips exactly one line (``skip.header.line.count = 1``) in every object,
  so a part may carry one line that is not a row and no more; a second line would be read as a
  row of nulls in old parts or skip a row in new ones;
- the S3 key stays ``{session}-{part}.csv`` for every version, so nothing that derives keys
  (sync, Athena's partition template, a streamer's own scripts) changes with the format;
- LazySimpleSerDe maps columns by position and reads missing trailing fields as NULL, so as
  long as a new format only *appends* columns, parts of every version sit side by side in one
  table. That is the rule for a new format: append columns at the end, each with a text
  default, add its column set here, bump `CURRENT_FORMAT`.

A part of an older format is read (missing columns get their defaults) and uploaded as it is;
it is never rewritten, because sealed parts never change and their checksum must hold.

Checksums: the SHA-256 of a part's bytes is recorded when it is sealed and checked at start-up
and before every upload (`verify_part`). A sealed part without a checksum (sealed by a release
that recorded none) is checked row by row instead, and adopted when every row is valid.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from agent.vocab import LABELS, READING_COLUMNS, Reading, validate_name

OPEN_DIR = "open"
SEALED_DIR = "sealed"
UPLOADED_DIR = "uploaded"
CORRUPT_DIR = "corrupt"
AREAS: tuple[str, ...] = (OPEN_DIR, SEALED_DIR, UPLOADED_DIR, CORRUPT_DIR)

PART_SUFFIX = ".csv"
OPEN_SUFFIX = ".open"
CHECKSUM_SUFFIX = ".sha256"

# Every format's exact column set, oldest first. Never edit a released entry: parts written in
# it may wait on a streamer's disk for weeks.
FORMAT_COLUMNS: dict[int, tuple[str, ...]] = {
    1: (
        "session_id",
        "platform",
        "channel",
        "batch_id",
        "seq",
        "window_start",
        "window_end",
        "message_count",
        "scored_count",
        *LABELS,
        "dominant",
        "model_id",
        "agent_version",
    ),
    2: READING_COLUMNS,  # + via
}
CURRENT_FORMAT = max(FORMAT_COLUMNS)

# The S3 key's partition folders, in key order (Athena's partition columns).
PARTITION_KEYS: tuple[str, ...] = ("platform", "channel", "dt")
# Athena's `storage.location.template` after the table's location.
KEY_TEMPLATE = "platform=${platform}/channel=${channel}/dt=${dt}/"


def _check_formats() -> None:
    if FORMAT_COLUMNS[CURRENT_FORMAT] != READING_COLUMNS:
        raise AssertionError("the current format must be READING_COLUMNS")
    versions = sorted(FORMAT_COLUMNS)
    for old, new in itertools.pairwise(versions):
        if FORMAT_COLUMNS[new][: len(FORMAT_COLUMNS[old])] != FORMAT_COLUMNS[old]:
            raise AssertionError(f"format {new} must only append columns to format {old}")


_check_formats()


def header_line(version: int = CURRENT_FORMAT) -> bytes:
    """The first line of a part of this format, newline included."""
    return (",".join(FORMAT_COLUMNS[version]) + "\n").encode("ascii")


HEADER_LINE = header_line()
_HEADERS: dict[bytes, int] = {header_line(v): v for v in FORMAT_COLUMNS}


def format_of_header(line: bytes) -> int | None:
    """The format version whose header is `line` (with or without its newline), else None."""
    if not line.endswith(b"\n"):
        line += b"\n"
    return _HEADERS.get(line.replace(b"\r\n", b"\n"))


# ------------------------------------------------------------------------------ names

# <session>-<part>.csv, optionally .open; a session may itself contain '-' (the part number
# is the last dash-separated group).
_PART_NAME_RE = re.compile(
    r"^(?P<session>[a-z0-9_][a-z0-9_-]{0,99})-(?P<part>\d{5,})\.csv(?P<open>\.open)?$"
)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class PartName:
    session_id: str
    part: int

    @property
    def file_name(self) -> str:
        return f"{self.session_id}-{self.part:05d}{PART_SUFFIX}"

    @property
    def open_name(self) -> str:
        return self.file_name + OPEN_SUFFIX


def parse_part_name(name: str) -> PartName | None:
    """The session and part number in a part's file name, or None for any other file."""
    match = _PART_NAME_RE.match(name)
    if not match:
        return None
    return PartName(match["session"], int(match["part"]))


def partition_dir(platform: str, channel: str, dt: str) -> str:
    """The hive partition path of a part (and of its S3 key after the prefix)."""
    return f"platform={platform}/channel={channel}/dt={dt}"


@dataclass(frozen=True, slots=True)
class PartIdentity:
    """Where a sealed part belongs: its partition and name."""

    platform: str
    channel: str
    dt: str
    name: PartName

    @property
    def relative(self) -> str:
        """The path under sealed/ (and uploaded/), '/'-separated: the S3 key after the prefix."""
        return f"{partition_dir(self.platform, self.channel, self.dt)}/{self.name.file_name}"


def parse_relative(relative: PurePosixPath | str) -> PartIdentity | None:
    """The identity of a sealed part's path relative to sealed/, else None.

    Only paths of exactly this layout become keys: anything else (a stray file, an editor's
    backup, a checksum) stays out of the bucket.
    """
    parts = PurePosixPath(relative).parts
    if len(parts) != 4:
        return None
    platform_dir, channel_dir, date_dir, file_name = parts
    values: list[str] = []
    for directory, field_name in ((platform_dir, "platform"), (channel_dir, "channel")):
        head, _, value = directory.partition("=")
        if head != field_name:
            return None
        try:
            if validate_name(value, field_name) != value:
                return None
        except ValueError:
            return None
        values.append(value)
    head, _, day = date_dir.partition("=")
    if head != "dt" or not _DATE_RE.match(day):
        return None
    try:
        datetime.strptime(day, "%Y-%m-%d")
    except ValueError:
        return None
    if file_name.endswith(OPEN_SUFFIX):
        return None
    name = parse_part_name(file_name)
    if name is None:
        return None
    return PartIdentity(values[0], values[1], day, name)


def object_key(prefix: str, relative: str) -> str:
    """DESIGN.md's key: `{prefix}/platform=../channel=../dt=../{session}-{part}.csv`.

    `prefix` must already be canonical (`agent.checks.key_prefix`)."""
    return f"{prefix}/{relative}" if prefix else relative


def key_of(prefix: str, identity: PartIdentity) -> str:
    return object_key(prefix, identity.relative)


def part_files(spool_dir: Path, area: str) -> list[Path]:
    """The part files of one area (open parts in open/, sealed ones elsewhere); no checksums."""
    root = Path(spool_dir) / area
    if not root.is_dir():
        return []
    pattern = f"*{PART_SUFFIX}{OPEN_SUFFIX}" if area == OPEN_DIR else f"*{PART_SUFFIX}"
    found = []
    for path in root.rglob(pattern):
        try:
            if path.is_file() and parse_part_name(path.name):
                found.append(path)
        except OSError:
            continue
    return found


def corrupt_files(spool_dir: Path) -> list[Path]:
    """What was set aside in corrupt/, checksums left out (one entry per part)."""
    root = Path(spool_dir) / CORRUPT_DIR
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.rglob("*") if p.is_file() and not p.name.endswith(CHECKSUM_SUFFIX)
    )


@dataclass(frozen=True, slots=True)
class SpoolCounts:
    """How many parts each area holds (for `captaflow status`)."""

    open: int
    waiting: int  # sealed, not yet uploaded
    uploaded: int
    corrupt: int


def count_parts(spool_dir: Path) -> SpoolCounts:
    return SpoolCounts(
        open=len(part_files(spool_dir, OPEN_DIR)),
        waiting=len(part_files(spool_dir, SEALED_DIR)),
        uploaded=len(part_files(spool_dir, UPLOADED_DIR)),
        corrupt=len(corrupt_files(spool_dir)),
    )


# ------------------------------------------------------------------------------- rows

# Free-form fields (model id, agent version) must still need no CSV quoting.
_PLAIN_FIELD_RE = re.compile(r"^[A-Za-z0-9_.:/+@-]{1,200}$")
_BATCH_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")


def validate_reading(reading: Reading) -> None:
    """Raise ValueError naming the first field that cannot go into a spool row as is."""
    for what, value in (
        ("session id", reading.session_id),
        ("platform", reading.platform),
        ("channel", reading.channel),
    ):
        if validate_name(value, what) != value:
            raise ValueError(f"{what} {value!r} is not in canonical (lower-case) form")
    if reading.via and validate_name(reading.via, "via") != reading.via:
        raise ValueError(f"via {reading.via!r} is not in canonical (lower-case) form")
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


def encode_row(reading: Reading) -> bytes:
    """One row of the current format, newline included (ValueError if it cannot be one)."""
    validate_reading(reading)
    return (",".join(reading.as_row()) + "\n").encode("ascii")


def upgrade_fields(fields: Sequence[str], version: int) -> list[str]:
    """A row of format `version` as a row of the current format: columns a later format
    added take their default ("")."""
    columns = FORMAT_COLUMNS[version]
    if len(fields) != len(columns):
        raise ValueError(f"expected {len(columns)} fields, got {len(fields)}")
    named = dict(zip(columns, fields, strict=True))
    return [named.get(column, "") for column in READING_COLUMNS]


def decode_row(line: str, version: int) -> Reading:
    """The reading of one row of format `version` (ValueError if it is not a valid one)."""
    reading = Reading.from_row(upgrade_fields(line.split(","), version))
    validate_reading(reading)
    return reading


@dataclass(frozen=True, slots=True)
class ParsedPart:
    """What a part file's bytes hold.

    `readings` are the complete, schema-valid rows before the first bad line; `valid_bytes`
    is where they end. `problem` is None when the rest is at most one partial last line
    (a row in flight), else a description of the corruption. `version` is the format of the
    header (None when there is no complete header).
    """

    readings: list[Reading]
    valid_bytes: int
    header_ok: bool
    problem: str | None
    version: int | None = None
    partial_tail: bool = False  # a last line without its newline follows valid_bytes


def parse_part(data: bytes) -> ParsedPart:
    """Split a part's bytes into valid rows and what follows them (pure; no I/O)."""
    newline = data.find(b"\n")
    if newline < 0:
        if any(header.startswith(data) for header in _HEADERS):
            # Empty, or the header itself was in flight: no reading was ever written.
            return ParsedPart([], 0, header_ok=False, problem=None, partial_tail=bool(data))
        return ParsedPart([], 0, header_ok=False, problem="header is not the reading columns")
    version = _HEADERS.get(data[: newline + 1])
    if version is None:
        known = ", ".join(str(v) for v in FORMAT_COLUMNS)
        return ParsedPart(
            [], 0, header_ok=False, problem=f"header is not the reading columns of format {known}"
        )
    readings: list[Reading] = []
    offset = newline + 1
    while True:
        newline = data.find(b"\n", offset)
        if newline < 0:
            # Only a line without its newline may follow: the row in flight at a crash.
            return ParsedPart(
                readings,
                offset,
                header_ok=True,
                problem=None,
                version=version,
                partial_tail=offset < len(data),
            )
        line = data[offset:newline]
        try:
            readings.append(decode_row(line.decode("ascii"), version))
        except (ValueError, UnicodeDecodeError) as exc:
            where = f"row {len(readings) + 1}"
            return ParsedPart(
                readings, offset, header_ok=True, problem=f"{where}: {exc}", version=version
            )
        offset = newline + 1


# -------------------------------------------------------------------------- checksums


def checksum_path(part: Path) -> Path:
    return part.with_name(part.name + CHECKSUM_SUFFIX)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checksum(part: Path, digest: str) -> Path:
    """Record `digest` as the checksum of `part` (the part need not be there yet).

    Written to a temporary name, flushed to disk and renamed, so a checksum file is either
    whole or absent."""
    target = checksum_path(part)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(f"{digest}  {part.name}\n".encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


_CHECKSUM_RE = re.compile(r"^([0-9a-f]{64}) [ *]")


def read_checksum(part: Path) -> str | None:
    """The recorded checksum of `part`; None when none was recorded; "" when unreadable."""
    try:
        text = checksum_path(part).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    match = _CHECKSUM_RE.match(text)
    return match.group(1) if match else ""


def checksum_problem(path: Path, data: bytes) -> str | None:
    """Why `data` does not match the checksum recorded for `path`; None when it does or when
    none was recorded."""
    recorded = read_checksum(path)
    if recorded is None:
        return None
    if recorded == "":
        return f"its checksum file {checksum_path(path).name} is unreadable or damaged"
    actual = sha256_hex(data)
    if actual != recorded:
        return f"its SHA-256 {actual[:12]}… is not the {recorded[:12]}… recorded when sealed"
    return None


def verify_part(path: Path, data: bytes) -> str | None:
    """Why the bytes of a sealed part are not fit to upload, or None when they are.

    With a recorded checksum, the bytes must match it. Without one (a part sealed by a release
    that recorded none), every row must be a valid row of a known format."""
    if read_checksum(path) is not None:
        return checksum_problem(path, data)
    parsed = parse_part(data)
    if parsed.problem is not None:
        return parsed.problem
    if parsed.partial_tail:
        return "it ends in a partial row"
    if not parsed.readings:
        return "it holds no reading"
    return None


# ------------------------------------------------------------------------- moving parts


def fsync_dir(directory: Path) -> None:
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


def move_part(path: Path, target: Path) -> None:
    """Move a part and its checksum (checksum first: a part never arrives without it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    side = checksum_path(path)
    if side.exists():
        os.replace(side, checksum_path(target))
    os.replace(path, target)
    fsync_dir(target.parent)


def set_aside(spool_dir: Path, path: Path, why: str) -> tuple[Path, str]:
    """Move a part (and its checksum) to corrupt/, never deleting it; returns where and the
    one line to tell the user."""
    spool_dir = Path(spool_dir)
    relative = path.relative_to(spool_dir)
    target = spool_dir / CORRUPT_DIR / relative.relative_to(relative.parts[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while target.exists():
        target = target.with_name(f"{path.name}.{n}")
        n += 1
    move_part(path, target)
    return target, (
        f"spool part {path} is corrupt ({why}); moved to {target} and kept, never uploaded: "
        "look at it or delete it by hand"
    )
