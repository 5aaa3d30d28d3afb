"""Upload planning, pure: which sealed parts go where, in which order.

`plan(listing, prefix)` takes a listing of sealed/ (relative path, size, seal time) and gives
every part that follows the spool's layout its S3 key (`agent.layout.key_of`), oldest sealed
first; anything else is returned as skipped and stays out of the bucket. No file is opened and
no network is touched, so the order and the keys are tested on plain data. `list_sealed` is
the thin I/O edge that makes the listing.

Order: "oldest first" means by the part's modification time (a sealed part is never written
again, so that is the moment it was sealed), ties broken by date, session and part number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.checks import key_prefix, require
from agent.layout import CHECKSUM_SUFFIX, SEALED_DIR, key_of, parse_relative


@dataclass(frozen=True, slots=True)
class SealedEntry:
    """One file found under sealed/."""

    relative: str  # '/'-separated path under sealed/
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class UploadItem:
    """One sealed part and the key it goes to."""

    path: Path
    key: str
    size: int
    relative: str  # path under sealed/ (and later uploaded/), '/'-separated
    sealed_at: float  # modification time of the sealed part, UNIX seconds


@dataclass(frozen=True, slots=True)
class Plan:
    items: list[UploadItem]
    skipped: list[str]  # relative paths that are not parts of the layout


def validate_prefix(prefix: str) -> str:
    """The canonical key prefix (no leading or trailing '/'), or SettingsError.

    Empty is allowed (keys then start at `platform=`); the rule is `checks.key_prefix`, the
    same one the settings and Athena apply.
    """
    return str(require(key_prefix, prefix, "sync.prefix", what_to_do="fix sync.prefix or --prefix"))


def plan(spool_dir: Path, listing: Iterable[SealedEntry], prefix: str) -> Plan:
    """Every part of `listing` with its key, oldest sealed first (pure)."""
    canonical = validate_prefix(prefix)
    sealed = Path(spool_dir) / SEALED_DIR
    ranked: list[tuple[tuple[int, str, str, int, str], UploadItem]] = []
    skipped: list[str] = []
    for entry in listing:
        if CHECKSUM_SUFFIX in PurePosixPath(entry.relative).name:
            # A part's checksum (or one being written) travels with it, never on its own.
            continue
        identity = parse_relative(PurePosixPath(entry.relative))
        if identity is None:
            skipped.append(entry.relative)
            continue
        item = UploadItem(
            path=sealed.joinpath(*PurePosixPath(entry.relative).parts),
            key=key_of(canonical, identity),
            size=entry.size,
            relative=entry.relative,
            sealed_at=entry.mtime_ns / 1e9,
        )
        rank = (
            entry.mtime_ns,
            identity.dt,
            identity.name.session_id,
            identity.name.part,
            entry.relative,
        )
        ranked.append((rank, item))
    ranked.sort(key=lambda pair: pair[0])
    return Plan([item for _, item in ranked], sorted(skipped))


def list_sealed(spool_dir: Path) -> list[SealedEntry]:
    """The files under sealed/ with their sizes and seal times (OSError if unlistable)."""
    root = Path(spool_dir) / SEALED_DIR
    if not root.is_dir():
        return []
    entries = []
    for path in root.rglob("*"):
        try:
            if not path.is_file():
                continue
            stat = path.stat()
        except FileNotFoundError:  # moved or pruned while we were listing
            continue
        entries.append(
            SealedEntry(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns)
        )
    return entries
