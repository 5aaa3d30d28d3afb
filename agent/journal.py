"""The journal: every received chat message, once, on disk before anything else sees it.

It is the dedup point of the whole flow (guarantee 1): a message is keyed by its
`ChatMessage.message_id` (the platform's id, else a content hash), and a key that is already
journaled — in this session, an earlier one, or before an agent restart — is refused and
counted as a duplicate. It is also what makes a crash cheap (guarantee 4): messages are
grouped into batches (one batch = one future reading) in the journal *before* they are
scored, so after `kill -9` the runtime finds the batches that never reached a sealed spool
part (`pending_batches`) and the messages never batched at all (`unassigned`), and windows
them again with the same batch ids.

Storage is SQLite (stdlib `sqlite3`) in WAL mode with `synchronous=NORMAL`: a committed
transaction survives the process being killed; only a power cut can lose the last few. `add()`
writes into an open transaction that `flush()` commits; the runtime flushes at least every
0.5 s, so at most the last second of messages is lost on `kill -9`.

Full disk: every write is kept in memory until its transaction commits. When SQLite refuses
one (SQLITE_FULL, an I/O error), it has often rolled the whole transaction back already, so
the journal rolls back what is still open, never commits a transaction that is gone, and
holds every write since the last commit in memory, in order (`problem` says so in one line,
with what waits). Messages are still deduplicated meanwhile; `flush()` tries again every
`RETRY_SECONDS` and writes the held writes in order, in transactions of whole calls, once
there is room. Nothing raises for a full disk, so the agent keeps running; what waits is lost
only if the process dies before space returns (then the messages never journaled are gone,
as on any crash, and everything journaled is windowed again).

Bound: `max_bytes` holds for the database and its WAL together. The database uses
incremental auto-vacuum (a journal made without it is VACUUMed once), `prune` deletes what no
reading is owed for down to `data_target`, gives the pages back and truncates the WAL; the
journal runs it by itself every `UPKEEP_MESSAGES` messages or `UPKEEP_SECONDS`, so a fast
chat cannot outgrow the bound between two of the runtime's prunes. The WAL is checkpointed at
half its budget (`wal_budget`: an eighth of the bound, at most a quarter of the free space) and
cut back to the budget, and no transaction holds more than `TX_MAX_WRITES` writes.

Schema (PRAGMA user_version = SCHEMA_VERSION):

    sessions(session_id PK, platform, channel, started_at, ended_at NULL)
    messages(key PK, session_id, platform, channel, author, text, sent_at, received_at,
             scorable, batch_id NULL, stored_at NULL)   -- rowid order = received order

`stored_at` is this PC's clock when the row was written: retention counts from it, not from
`received_at`, which a replayed recording (the demo) carries from the recording's day and
which would make a prune at close delete the session it just recorded. Rows of schema 2
have none and count from `received_at` as before.
    batches(batch_id PK, session_id, seq, state 'assigned'|'written'|'set_aside', created_at,
            reason NULL, set_aside_at NULL)
    moderation(id PK, platform, channel, kind, target_key NULL, target_user NULL, at,
               duration NULL, stored_at NULL)

Concurrency: one `Journal` is used from the asyncio thread only. The connection is opened with
`check_same_thread=False` so that the object may be created on one thread and used on the
loop's thread, never from two threads at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import CaptaFlowError
from agent.vocab import ChatMessage, ModerationEvent, validate_name

log = logging.getLogger("captaflow.journal")

SCHEMA_VERSION = 3

# Version 2: a batch can be set aside (a window that could not be scored or written: a poison
# pill), with the reason; v1's CHECK constraint on `state` forbids that, so v1's table is
# rebuilt once (`_migrate_batches`).
_BATCHES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    batch_id     TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('assigned', 'written', 'set_aside')),
    created_at   REAL NOT NULL,
    reason       TEXT,
    set_aside_at REAL
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    platform   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL
);
CREATE TABLE IF NOT EXISTS messages (
    key         TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    platform    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    author      TEXT NOT NULL,
    text        TEXT NOT NULL,
    sent_at     REAL NOT NULL,
    received_at REAL NOT NULL,
    scorable    INTEGER NOT NULL,
    batch_id    TEXT,
    stored_at   REAL
);
{batches}CREATE TABLE IF NOT EXISTS moderation (
    id          INTEGER PRIMARY KEY,
    platform    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    target_key  TEXT,
    target_user TEXT,
    at          REAL NOT NULL,
    duration    REAL,
    stored_at   REAL
);
CREATE INDEX IF NOT EXISTS messages_session ON messages (session_id, batch_id);
CREATE INDEX IF NOT EXISTS messages_batch ON messages (batch_id);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_sent ON messages (session_id, sent_at);
CREATE INDEX IF NOT EXISTS batches_session ON batches (session_id, state, seq);
CREATE INDEX IF NOT EXISTS sessions_open ON sessions (platform, channel, ended_at);
CREATE INDEX IF NOT EXISTS moderation_channel ON moderation (platform, channel, at);
""".replace("{batches}", _BATCHES_TABLE.format(name="batches"))

_ENTRY_COLUMNS = (
    "key, session_id, platform, channel, author, text, sent_at, received_at, scorable, batch_id"
)


class JournalError(CaptaFlowError):
    """The journal cannot be opened or written (disk full, newer schema, permissions)."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    key: str
    session_id: str
    platform: str
    channel: str
    author: str
    text: str
    sent_at: float
    received_at: float
    scorable: bool
    batch_id: str | None

    def as_message(self) -> ChatMessage:
        """Back to the shared message type (for `captaflow replay --session`)."""
        return ChatMessage(
            platform=self.platform,
            channel=self.channel,
            message_id=self.key,
            author=self.author,
            text=self.text,
            sent_at=self.sent_at,
            received_at=self.received_at,
        )


@dataclass(frozen=True, slots=True)
class PendingBatch:
    batch_id: str
    seq: int
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetAsideBatch:
    """A window that could not be scored or written, kept with the reason (`set_aside`)."""

    batch_id: str
    session_id: str
    seq: int
    reason: str
    at: float
    message_count: int


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    platform: str
    channel: str
    started_at: float
    ended_at: float | None
    message_count: int


@dataclass(frozen=True, slots=True)
class JournalStats:
    messages: int  # rows in the journal now
    duplicates: int  # duplicates refused by this process since open()
    bytes: int  # database + WAL on disk


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    return JournalEntry(
        key=row[0],
        session_id=row[1],
        platform=row[2],
        channel=row[3],
        author=row[4],
        text=row[5],
        sent_at=row[6],
        received_at=row[7],
        scorable=bool(row[8]),
        batch_id=row[9],
    )


def scoped_key(scope: str, message_id: str) -> str:
    """The journal key of a message: its id, or within a dedup scope (a demo run's session)
    the scope and the id, so each such run counts its messages afresh."""
    return f"{scope}/{message_id}" if scope else message_id


_SUFFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SUFFIX_LENGTH = 6


def session_name(channel: str, started_at: float, suffix: str | None = None) -> str:
    """`20261125t155122z-xqcow-k3q9zt`: sortable by time, readable, valid as a path and S3 key
    part. The random suffix (36**6, about 2e9 values) keeps two agents that start on the same
    channel in the same second (two data folders, one bucket) from ever sharing a session id,
    and so a part name or an S3 key."""
    stamp = datetime.fromtimestamp(started_at, tz=UTC).strftime("%Y%m%dt%H%M%Sz")
    if suffix is None:
        suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
    head = f"{stamp}-{validate_name(channel)}"[: 100 - len(suffix) - 1]
    return validate_name(f"{head}-{suffix}", "session")


def _moderation_fields(
    event: Any,
) -> tuple[str, str, str, str | None, str | None, float, float | None]:
    """Read a moderation event (agent.sources.irc.ModerationEvent or alike) by attribute name.

    Tolerant on purpose: the journal only needs who/what was removed and when.
    """

    def first(*names: str) -> Any:
        for name in names:
            value = getattr(event, name, None)
            if value not in (None, ""):
                return value
        return None

    kind = str(first("kind", "command", "type") or "unknown").lower()
    platform = str(first("platform") or "twitch")
    channel = str(first("channel") or "")
    target_key = first("target_message_id", "message_id", "target_id")
    target_user = first("target_login", "target_user", "author", "login", "user")
    at = first("at", "sent_at", "received_at", "timestamp")
    duration = first("duration", "ban_duration")
    return (
        kind,
        platform,
        channel.lstrip("#").lower(),
        None if target_key is None else str(target_key),
        None if target_user is None else str(target_user).lower(),
        float(at) if at is not None else time.time(),
        None if duration is None else float(duration),
    )


# ----------------------------------------------------------------- the write path

# Writes of one transaction at most: a checkpoint cannot split a transaction, so this keeps
# every transaction (and so the WAL) small whatever the chat rate.
TX_MAX_WRITES = 100
# Messages deleted per transaction when pruning, for the same reason.
PRUNE_CHUNK = 100
# Writes replayed per transaction when the disk has room again.
REPLAY_CHUNK = 500
# Messages held in memory at most while the disk is full (about 30-60 MB); beyond that new
# messages are dropped and counted, rather than the agent running out of memory.
MAX_HELD_MESSAGES = 100_000
# Seconds between two attempts to write what a full disk held back.
RETRY_SECONDS = 2.0
# Upkeep (prune, incremental vacuum, WAL truncation) after this many messages or seconds.
UPKEEP_MESSAGES = 1000
UPKEEP_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class _Write:
    """One statement of a write, kept until its transaction is committed.

    `key` is the message key an insert journals (so duplicates are still refused while the
    writes wait in memory); `last` marks the end of one public call (`assign`, `confirm`...),
    whose statements are never split over two transactions on replay."""

    sql: str
    params: Any
    many: bool = False
    key: str | None = None
    last: bool = True


def wal_budget(max_bytes: int, free: int | None = None) -> int:
    """Bytes the WAL may take: an eighth of the journal's bound, 64 KB to 4 MB, and no more
    than a quarter of the free space, so on a small disk the WAL alone never fills it."""
    budget = max(64 << 10, min(4 << 20, max_bytes // 8))
    if free is not None:
        budget = min(budget, max(64 << 10, free // 4))
    return budget


def room_needed(max_bytes: int) -> int:
    """Free bytes the journal wants to start and keep up: its schema, a full WAL and a margin."""
    return 2 * wal_budget(max_bytes) + (256 << 10)


def _disk_problem(exc: sqlite3.Error) -> bool:
    """Errors that waiting can cure: a full disk, an I/O error, a lock held too long."""
    return isinstance(exc, sqlite3.OperationalError) and not _looks_corrupt(exc)


def _is_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc).lower()


def _kb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB" if n >= 1 << 20 else f"{n / 1024:.0f} KB"


def _free(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


class Journal:
    """Append-only SQLite journal of chat messages and their batches. See the module doc."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        retention_days: float,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._clock = clock  # wall clock for stored_at and the prune at close
        self.path = path
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self._in_tx = False
        self._duplicates = 0
        # Writes since the last commit: the open transaction's, or, while `_held`, every write
        # the disk refused, in order, replayed by `flush()` once there is room.
        self._writes: list[_Write] = []
        self._keys: set[str] = set()  # message keys among `_writes`
        self._held = False
        self._held_error = ""
        self._last_retry = 0.0
        self.dropped = 0  # messages dropped because too many waited in memory
        self._since_upkeep = 0
        self._last_upkeep = time.monotonic()
        self._in_upkeep = False
        self._warned_bound = -300.0  # monotonic time of the last over-bound warning
        self._futile_until = 0.0

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        retention_days: float = 30,
        max_bytes: int = 1 << 30,
        clock: Callable[[], float] = time.time,
    ) -> Journal:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"cannot create the journal folder {path.parent}: {exc.strerror}; "
                "choose a writable --data-dir"
            ) from exc
        need = room_needed(max_bytes)
        free = _free(path.parent)
        try:
            try:
                conn = cls._connect(path, max_bytes)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and not _looks_corrupt(exc):
                    raise
                aside = _set_aside(path)
                log.warning(
                    "journal %s is not a readable database (%s); moved to %s", path, exc, aside
                )
                conn = cls._connect(path, max_bytes)
        except sqlite3.OperationalError as exc:
            if _is_full(exc) or (free is not None and free < need):
                raise JournalError(
                    f"disk full: cannot open the journal {path} "
                    f"({_kb(free or 0)} free); CaptaFlow needs at least {_kb(need)} free there "
                    "to start: free some space on that drive or choose another --data-dir"
                ) from exc
            raise JournalError(
                f"cannot open the journal {path}: {exc}; check the folder's permissions"
            ) from exc
        if free is not None and free < need:
            log.warning(
                "only %s free on the drive of %s: the journal needs about %s to keep up; until "
                "there is room, messages wait in memory (free some space on that drive)",
                _kb(free),
                path.parent,
                _kb(need),
            )
        return cls(conn, path, retention_days, max_bytes, clock)

    @staticmethod
    def _connect(path: Path, max_bytes: int) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise JournalError(
                    f"the journal {path} was written by a newer CaptaFlow (schema {version}); "
                    "update CaptaFlow or use another --data-dir"
                )
            # auto_vacuum only takes effect before the first table exists (else at a VACUUM).
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("journal %s: WAL mode unavailable (got %s)", path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            # The WAL is checkpointed when it holds this many pages and cut back to this size
            # afterwards, so it stays within its share of the bound (SQLite's default lets it
            # reach 4 MB and keeps the file at its largest size for ever).
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            budget = wal_budget(max_bytes, _free(path.parent))
            conn.execute(f"PRAGMA wal_autocheckpoint={max(16, budget // 2 // page_size)}")
            conn.execute(f"PRAGMA journal_size_limit={budget}")
            _migrate_batches(conn)
            conn.executescript(_SCHEMA)
            _add_stored_at(conn)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # A cheap read of every table catches a file that is a database only in name.
            for table in ("sessions", "messages", "batches", "moderation"):
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
            _make_incremental(conn, path)
        except BaseException:
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------ the write path

    @property
    def held(self) -> int:
        """Writes a full disk keeps in memory (0 when everything is on disk)."""
        return len(self._writes) if self._held else 0

    @property
    def held_messages(self) -> int:
        return len(self._keys) if self._held else 0

    @property
    def problem(self) -> str | None:
        """One line while writes wait in memory (a full disk), else None."""
        if not self._held:
            return None
        free = _free(self.path.parent)
        room = "" if free is None else f", {_kb(free)} free"
        reason = "disk full" if "full" in self._held_error.lower() else self._held_error
        dropped = f"; {self.dropped} dropped (too many waited)" if self.dropped else ""
        return (
            f"{reason}: cannot write the journal {self.path}{room}; {self.held_messages} "
            f"message(s) and {self.held - self.held_messages} other write(s) wait in memory "
            f"and are written by themselves when space returns{dropped}: free some space on "
            "that drive"
        )

    def _write(self, write: _Write) -> int:
        """Run one statement in the open transaction: its rowcount, or -1 when the disk
        refused it (it then waits in memory with every write since the last commit)."""
        self._writes.append(write)
        if write.key is not None:
            self._keys.add(write.key)
        if self._held:
            return -1
        try:
            if not self._in_tx:
                self._conn.execute("BEGIN")
                self._in_tx = True
            if write.many:
                cursor = self._conn.executemany(write.sql, write.params)
            else:
                cursor = self._conn.execute(write.sql, write.params)
        except sqlite3.OperationalError as exc:
            if _disk_problem(exc):
                self._failed(exc)
                return -1
            self._drop_last(write)
            raise JournalError(f"cannot write the journal {self.path}: {exc}") from exc
        except BaseException:
            # A value SQLite cannot take (OverflowError, an unencodable text): only this
            # statement failed, the transaction goes on without it.
            self._drop_last(write)
            raise
        return int(cursor.rowcount)

    def _drop_last(self, write: _Write) -> None:
        if self._writes and self._writes[-1] is write:
            self._writes.pop()
        if write.key is not None:
            self._keys.discard(write.key)

    def _unit(self, writes: Sequence[_Write]) -> None:
        """Statements of one public call, then commit: all of them or (held) none yet."""
        for n, write in enumerate(writes):
            self._write(
                _Write(write.sql, write.params, write.many, write.key, n == len(writes) - 1)
            )
        self.flush()

    def _failed(self, exc: sqlite3.Error) -> None:
        """A write or commit failed: hold everything since the last commit in memory."""
        # After SQLITE_FULL, SQLite may already have rolled the transaction back; only roll
        # back what is still open, and never COMMIT a transaction that is gone.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
        self._in_tx = False
        if not _disk_problem(exc):
            self._writes.clear()
            self._keys.clear()
            raise JournalError(f"cannot write the journal {self.path}: {exc}") from exc
        first = not self._held
        self._held = True
        self._held_error = str(exc)
        self._last_retry = time.monotonic()
        # A TRUNCATE checkpoint gives the WAL's space back to the drive if anything can.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if first:
            log.error("%s", self.problem)

    def _replay(self) -> None:
        """Write what a full disk held back, in order, in transactions of whole calls."""
        while self._writes:
            end = len(self._writes)
            for n, write in enumerate(self._writes):
                if write.last and n + 1 >= REPLAY_CHUNK:
                    end = n + 1
                    break
            chunk = self._writes[:end]
            try:
                self._conn.execute("BEGIN")
                for write in chunk:
                    if write.many:
                        self._conn.executemany(write.sql, write.params)
                    else:
                        self._conn.execute(write.sql, write.params)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                if not _disk_problem(exc):
                    raise JournalError(f"cannot write the journal {self.path}: {exc}") from exc
                self._held_error = str(exc)
                return
            del self._writes[:end]
            for write in chunk:
                if write.key is not None:
                    self._keys.discard(write.key)
        self._held = False
        self._keys.clear()
        log.warning(
            "journal %s: disk space is back, every write held in memory is on disk", self.path
        )
        self._after_commit(0)

    def flush(self) -> None:
        """Commit what was written since the last flush; while the disk is full, try (every
        few seconds) to write what waits in memory. Never raises for a full disk."""
        if self._held:
            now = time.monotonic()
            if now - self._last_retry >= RETRY_SECONDS:
                self._last_retry = now
                self._replay()
            return
        if not self._in_tx:
            return
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        self._in_tx = False
        messages = len(self._keys)
        self._writes.clear()
        self._keys.clear()
        self._after_commit(messages)

    def _after_commit(self, messages: int) -> None:
        self._since_upkeep += messages
        if self._in_upkeep:
            return
        due = time.monotonic() - self._last_upkeep >= UPKEEP_SECONDS
        if self._since_upkeep >= UPKEEP_MESSAGES or due or self._over_target():
            # The size bound only: age-based pruning stays the runtime's call to `prune`.
            self.prune(self._clock(), by_age=False)

    def _over_target(self) -> bool:
        # Two cheap pragmas per commit: the bound is kept between two upkeeps too. When the
        # last prune found nothing it may delete (the scorer is behind), wait a while.
        if time.monotonic() < self._futile_until:
            return False
        try:
            return self._db_bytes() > self.data_target
        except sqlite3.Error:
            return False

    def _committed(self, key: str) -> bool:
        try:
            row = self._conn.execute("SELECT 1 FROM messages WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    # ---------------------------------------------------------------- sessions

    def begin_session(
        self, platform: str, channel: str, *, now: float, resume_within: float = 6 * 3600
    ) -> tuple[str, bool]:
        """Resume the latest crashed (never ended) session of this platform/channel if it was
        active within `resume_within` seconds, else start a new one. Stale crashed sessions are
        closed at their last activity so they never resume later."""
        platform = validate_name(platform, "platform")
        channel = validate_name(channel)
        self.flush()
        rows = self._conn.execute(
            "SELECT s.session_id, MAX(s.started_at, COALESCE(MAX(m.received_at), 0)) "
            "FROM sessions s LEFT JOIN messages m ON m.session_id = s.session_id "
            "WHERE s.platform = ? AND s.channel = ? AND s.ended_at IS NULL "
            "GROUP BY s.session_id ORDER BY s.started_at DESC",
            (platform, channel),
        ).fetchall()
        writes: list[_Write] = []
        resumed: str | None = None
        for session_id, last_active in rows:
            if resumed is None and now - last_active <= resume_within:
                resumed = session_id
            else:
                writes.append(
                    _Write(
                        "UPDATE sessions SET ended_at = ? WHERE session_id = ?",
                        (last_active, session_id),
                    )
                )
        candidate = resumed
        if candidate is None:
            candidate = session_name(channel, now)
            while self._conn.execute(
                "SELECT 1 FROM sessions WHERE session_id = ?", (candidate,)
            ).fetchone():
                candidate = session_name(channel, now)
            writes.append(
                _Write(
                    "INSERT OR IGNORE INTO sessions (session_id, platform, channel, started_at) "
                    "VALUES (?, ?, ?, ?)",
                    (candidate, platform, channel, now),
                )
            )
        if writes:
            self._unit(writes)
        return candidate, resumed is not None

    def end_session(self, session_id: str, *, now: float) -> None:
        self._unit(
            [
                _Write(
                    "UPDATE sessions SET ended_at = ? WHERE session_id = ? AND ended_at IS NULL",
                    (now, session_id),
                )
            ]
        )

    def sessions(self) -> list[SessionInfo]:
        self.flush()
        rows = self._conn.execute(
            "SELECT s.session_id, s.platform, s.channel, s.started_at, s.ended_at, "
            "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.session_id) "
            "FROM sessions s ORDER BY s.started_at, s.session_id"
        ).fetchall()
        return [SessionInfo(*row) for row in rows]

    # ---------------------------------------------------------------- messages

    def add(self, msg: ChatMessage, *, session_id: str, scorable: bool, scope: str = "") -> bool:
        """Journal one message; False if its key is already journaled (a duplicate).

        `scope` "" dedups across every session; else only within that scope (`scoped_key`).
        Written into an open transaction that `flush()` commits. On a full disk the message
        waits in memory (`problem` says so) and is still deduplicated."""
        key = scoped_key(scope, msg.message_id)
        seen = key in self._keys
        if self._held:
            if seen or self._committed(key):
                self._duplicates += 1
                return False
            if len(self._keys) >= MAX_HELD_MESSAGES:
                if not self.dropped:
                    log.error("%s", self.problem)
                self.dropped += 1
                return False
        write = _Write(
            "INSERT OR IGNORE INTO messages (key, session_id, platform, channel, author, "
            "text, sent_at, received_at, scorable, stored_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                session_id,
                msg.platform,
                msg.channel,
                msg.author,
                msg.text,
                msg.sent_at,
                msg.received_at,
                int(scorable),
                self._clock(),
            ),
            key=key,
        )
        if seen:
            self._duplicates += 1
            return False
        written = self._write(write)
        if written == 0:
            self._writes.pop()
            self._keys.discard(key)
            self._duplicates += 1
            return False
        if written < 0 and self._committed(key):
            # The disk refused it, but it was journaled before: a duplicate all the same.
            self._writes.pop()
            self._keys.discard(key)
            self._duplicates += 1
            return False
        if not self._held and len(self._writes) >= TX_MAX_WRITES:
            self.flush()
        return True

    def session_of(self, key: str) -> str | None:
        """The session a journaled key belongs to (None: not journaled)."""
        self.flush()
        row = self._conn.execute("SELECT session_id FROM messages WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def unassigned(self, session_id: str) -> list[JournalEntry]:
        """Journaled messages of the session in no batch yet, in received order."""
        self.flush()
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM messages "
            "WHERE session_id = ? AND batch_id IS NULL ORDER BY rowid",
            (session_id,),
        ).fetchall()
        return [_entry(row) for row in rows]

    def messages(self, session_id: str) -> Iterator[JournalEntry]:
        """Every journaled message of a session in received order (for `captaflow replay`)."""
        self.flush()
        cursor = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM messages WHERE session_id = ? ORDER BY rowid",
            (session_id,),
        )
        for row in cursor:
            yield _entry(row)

    def sample_texts(self, session_id: str, start: float, end: float, k: int) -> list[str]:
        """Up to `k` distinct scorable texts sent in [start, end), spread evenly over the span
        and never one a moderator removed: the examples a report shows for a moment."""
        if k <= 0:
            return []
        self.flush()
        deleted = self.deleted_keys(session_id)
        rows = self._conn.execute(
            "SELECT key, text FROM messages WHERE session_id = ? AND scorable = 1 "
            "AND sent_at >= ? AND sent_at < ? ORDER BY sent_at, rowid",
            (session_id, start, end),
        ).fetchall()
        texts: list[str] = []
        seen: set[str] = set()
        for key, text in rows:
            if key in deleted or not text.strip() or text in seen:
                continue
            seen.add(text)
            texts.append(text)
        if len(texts) <= k:
            return texts
        step = len(texts) / k
        return [texts[int(i * step)] for i in range(k)]

    # ----------------------------------------------------------------- batches

    def assign(self, session_id: str, batch_id: str, seq: int, keys: Sequence[str]) -> None:
        """In one transaction: the batch row ('assigned') and its messages' batch_id."""
        self._unit(
            [
                _Write(
                    "INSERT OR IGNORE INTO batches (batch_id, session_id, seq, state, "
                    "created_at) VALUES (?, ?, ?, 'assigned', ?)",
                    (batch_id, session_id, seq, time.time()),
                ),
                _Write(
                    "UPDATE messages SET batch_id = ? "
                    "WHERE key = ? AND session_id = ? AND batch_id IS NULL",
                    [(batch_id, key, session_id) for key in keys],
                    many=True,
                ),
            ]
        )

    def pending_batches(self, session_id: str) -> list[PendingBatch]:
        """Batches assigned but not confirmed written, by sequence number, with their keys."""
        self.flush()
        batches = self._conn.execute(
            "SELECT batch_id, seq FROM batches WHERE session_id = ? AND state = 'assigned' "
            "ORDER BY seq",
            (session_id,),
        ).fetchall()
        result = []
        for batch_id, seq in batches:
            keys = tuple(
                row[0]
                for row in self._conn.execute(
                    "SELECT key FROM messages WHERE batch_id = ? ORDER BY rowid", (batch_id,)
                )
            )
            result.append(PendingBatch(batch_id, seq, keys))
        return result

    def confirm(self, batch_ids: Iterable[str]) -> None:
        """Mark batches 'written': their reading is in the spool."""
        params = [(batch_id,) for batch_id in batch_ids]
        if not params:
            return
        self._unit(
            [
                _Write(
                    "UPDATE batches SET state = 'written' "
                    "WHERE batch_id = ? AND state = 'assigned'",
                    params,
                    many=True,
                )
            ]
        )

    def set_aside(
        self,
        batch_id: str,
        reason: str,
        *,
        session_id: str | None = None,
        seq: int | None = None,
        now: float | None = None,
    ) -> None:
        """Mark a batch that cannot be scored or written as set aside, with the reason.

        It is no longer pending, so a restart never tries it again (a poison pill stays
        harmless); its messages stay journaled (`captaflow replay` can try them again) and
        `set_aside_batches()` lists it. A batch never assigned is recorded too when
        `session_id` and `seq` are given. `reason` is kept to one line of 500 characters."""
        text = " ".join(str(reason).split())[:500] or "no reason given"
        at = time.time() if now is None else now
        writes = [
            _Write(
                "UPDATE batches SET state = 'set_aside', reason = ?, set_aside_at = ? "
                "WHERE batch_id = ?",
                (text, at, batch_id),
            )
        ]
        if session_id is not None and seq is not None:
            writes.append(
                _Write(
                    "INSERT OR IGNORE INTO batches (batch_id, session_id, seq, state, "
                    "created_at, reason, set_aside_at) VALUES (?, ?, ?, 'set_aside', ?, ?, ?)",
                    (batch_id, session_id, seq, at, text, at),
                )
            )
        self._unit(writes)
        log.warning("set aside batch %s: %s", batch_id, text)

    def set_aside_batches(self, session_id: str | None = None) -> list[SetAsideBatch]:
        """The batches set aside (all sessions, or one), oldest first."""
        self.flush()
        where = "WHERE b.state = 'set_aside'" + (" AND b.session_id = ?" if session_id else "")
        rows = self._conn.execute(
            "SELECT b.batch_id, b.session_id, b.seq, COALESCE(b.reason, ''), "
            "COALESCE(b.set_aside_at, b.created_at), "
            "(SELECT COUNT(*) FROM messages m WHERE m.batch_id = b.batch_id) "
            f"FROM batches b {where} ORDER BY COALESCE(b.set_aside_at, b.created_at), b.seq",
            (session_id,) if session_id else (),
        ).fetchall()
        return [SetAsideBatch(*row) for row in rows]

    def next_seq(self, session_id: str) -> int:
        self.flush()
        row = self._conn.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM batches WHERE session_id = ?", (session_id,)
        ).fetchone()
        return int(row[0])

    # -------------------------------------------------------------- moderation

    def record_moderation(self, event: Any) -> None:
        """Record a CLEARMSG/CLEARCHAT-like event (agent.sources.irc.ModerationEvent): kind,
        platform, channel, target message id or target user, time, duration. Committed with
        the next flush, like messages."""
        kind, platform, channel, target_key, target_user, at, duration = _moderation_fields(event)
        self._write(
            _Write(
                "INSERT INTO moderation (platform, channel, kind, target_key, target_user, at, "
                "duration, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (platform, channel, kind, target_key, target_user, at, duration, self._clock()),
            )
        )

    def moderation_events(self, platform: str, channel: str) -> list[ModerationEvent]:
        """The moderation recorded for a chat, oldest first (for `captaflow replay`)."""
        self.flush()
        rows = self._conn.execute(
            "SELECT kind, target_key, target_user, at FROM moderation "
            "WHERE platform = ? AND channel = ? ORDER BY at, id",
            (platform, channel),
        ).fetchall()
        return [ModerationEvent(platform, channel, *row) for row in rows]

    def deleted_keys(self, session_id: str) -> set[str]:
        """Keys of this session's messages a moderator removed: a deleted message by id, and
        a banned or timed-out user's messages sent before the ban (or a whole-chat clear)."""
        self.flush()
        by_id = self._conn.execute(
            "SELECT m.key FROM messages m JOIN moderation d ON d.target_key = m.key "
            "WHERE m.session_id = ?",
            (session_id,),
        ).fetchall()
        by_user = self._conn.execute(
            "SELECT m.key FROM messages m JOIN moderation d "
            "ON d.platform = m.platform AND d.channel = m.channel "
            "AND d.target_key IS NULL "
            "AND (d.target_user IS NULL OR d.target_user = lower(m.author)) "
            "AND m.sent_at <= d.at "
            "WHERE m.session_id = ?",
            (session_id,),
        ).fetchall()
        return {row[0] for row in by_id} | {row[0] for row in by_user}

    # -------------------------------------------------------------- upkeep

    def stats(self) -> JournalStats:
        self.flush()
        count = self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        return JournalStats(messages=count, duplicates=self._duplicates, bytes=self._disk_bytes())

    def _disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total

    def _db_bytes(self) -> int:
        page_count = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int((page_count - free) * page_size)

    @property
    def data_target(self) -> int:
        """Bytes of live data the journal keeps: its bound less room for the WAL and the
        free pages between two vacuums."""
        return max(self.max_bytes // 2, self.max_bytes - 3 * wal_budget(self.max_bytes))

    def prune(self, now: float, *, by_age: bool = True) -> int:
        """Keep the journal within `max_bytes` (database and WAL together).

        Deletes messages older than `retention_days` (unless `by_age` is False: the journal's
        own upkeep keeps only the size bound), then the oldest until the live data is
        back under `data_target` (with some slack, so pruning is not run for every message);
        then gives the freed pages back to the drive (incremental vacuum) and cuts the WAL back
        (TRUNCATE checkpoint). Only messages no reading is owed for are pruned: those of a
        written or set-aside batch, and those never to be scored (bots, commands). Returns the
        number of messages deleted. Does nothing while a full disk holds writes in memory."""
        self.flush()
        if self._held or self._in_upkeep:
            return 0
        self._in_upkeep = True
        try:
            return self._prune(now, by_age)
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            if not _disk_problem(exc):
                raise JournalError(f"cannot prune the journal {self.path}: {exc}") from exc
            log.debug("journal %s: upkeep skipped (%s)", self.path, exc)
            return 0
        finally:
            self._in_upkeep = False
            self._since_upkeep = 0
            self._last_upkeep = time.monotonic()

    def _prune(self, now: float, by_age: bool) -> int:
        prunable = (
            "SELECT m.rowid FROM messages m LEFT JOIN batches b ON b.batch_id = m.batch_id "
            "WHERE (b.state IN ('written', 'set_aside') OR (m.scorable = 0 AND m.batch_id IS NULL))"
        )
        deleted = 0
        if by_age:
            cutoff = now - self.retention_days * 86400
            deleted = self._delete_chunks(
                f"DELETE FROM messages WHERE rowid IN ({prunable} "
                "AND COALESCE(m.stored_at, m.received_at) < ? "
                "ORDER BY m.rowid LIMIT ?)",
                (cutoff,),
            )
            self._conn.execute(
                "DELETE FROM moderation WHERE COALESCE(stored_at, at) < ?", (cutoff,)
            )
        target = self.data_target
        if self._db_bytes() > target:
            # Down to 80% of the target, oldest first.
            low = int(target * 0.8)
            while self._db_bytes() > low:
                gone = self._delete_chunks(
                    f"DELETE FROM messages WHERE rowid IN ({prunable} ORDER BY m.rowid LIMIT ?)",
                    (),
                    rounds=1,
                )
                if gone <= 0:
                    self._futile_until = time.monotonic() + 5.0
                    # Said at most every few minutes: the scorer is behind, it passes.
                    if time.monotonic() - self._warned_bound >= 300:
                        log.warning(
                            "journal %s is over its size bound but holds only messages still "
                            "owed a reading; nothing pruned",
                            self.path,
                        )
                        self._warned_bound = time.monotonic()
                    break
                deleted += gone
        if deleted:
            # Batches whose messages are all gone are no longer needed for anything.
            self._conn.execute(
                "DELETE FROM batches WHERE state = 'written' AND NOT EXISTS "
                "(SELECT 1 FROM messages m WHERE m.batch_id = batches.batch_id)"
            )
            # The pragma frees one page per result row: step through all of them.
            self._conn.execute("PRAGMA incremental_vacuum").fetchall()
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _delete_chunks(self, sql: str, params: tuple[Any, ...], rounds: int = 1 << 30) -> int:
        """Run a `... LIMIT ?` delete in small transactions (`PRUNE_CHUNK` rows each), so
        pruning never writes a WAL bigger than its budget; up to `rounds` of them."""
        deleted = 0
        for _ in range(rounds):
            cursor = self._conn.execute(sql, (*params, PRUNE_CHUNK))
            deleted += max(0, cursor.rowcount)
            if cursor.rowcount < PRUNE_CHUNK:
                break
        return deleted

    def close(self) -> None:
        try:
            self._last_retry = 0.0  # one last try for anything a full disk held back
            self.flush()
            if self._held:
                log.error(
                    "%s; they are lost at this stop, the messages not yet in a reading are "
                    "windowed again only if they reached the journal",
                    self.problem,
                )
            else:
                # Leave the file within its bound: what was confirmed last is prunable now.
                with contextlib.suppress(JournalError):
                    self.prune(self._clock(), by_age=False)
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_incremental(conn: sqlite3.Connection, path: Path) -> None:
    """A journal made before incremental auto-vacuum needs one VACUUM to switch to it;
    without it, pruned pages stay in the file for ever."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        return
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        # VACUUM needs room for a copy of the database; the next start tries again.
        log.warning(
            "journal %s could not be compacted now (%s); tried again at the next start", path, exc
        )
        return
    log.info("journal %s compacted once to reclaim pruned space from now on", path)


def _add_stored_at(conn: sqlite3.Connection) -> None:
    """Schema 3: messages.stored_at and moderation.stored_at (see the module doc); older rows
    keep NULL."""
    for table in ("messages", "moderation"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "stored_at" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN stored_at REAL")


def _migrate_batches(conn: sqlite3.Connection) -> None:
    """Rebuild a schema-1 batches table (whose CHECK forbids 'set_aside') as schema 2's."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'batches'")
    found = row.fetchone()
    # A development build kept set-aside batches in a table of their own, marked 'written'.
    interim = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'set_aside'"
    ).fetchone()
    if found is None or ("set_aside" in found[0] and interim is None):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "set_aside" not in found[0]:
            conn.execute(_BATCHES_TABLE.format(name="batches_v2"))
            conn.execute(
                "INSERT INTO batches_v2 (batch_id, session_id, seq, state, created_at) "
                "SELECT batch_id, session_id, seq, state, created_at FROM batches"
            )
            conn.execute("DROP TABLE batches")
            conn.execute("ALTER TABLE batches_v2 RENAME TO batches")
        if interim is not None:
            conn.execute(
                "UPDATE batches SET state = 'set_aside', "
                "reason = (SELECT reason FROM set_aside a WHERE a.batch_id = batches.batch_id), "
                "set_aside_at = (SELECT at FROM set_aside a WHERE a.batch_id = batches.batch_id) "
                "WHERE batch_id IN (SELECT batch_id FROM set_aside)"
            )
            conn.execute("DROP TABLE set_aside")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _looks_corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "encrypted" in text


def _set_aside(path: Path) -> Path:
    """Move a corrupt journal (and its WAL/SHM) aside; never delete what a user may need."""
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{aside}{suffix}"))
    return aside


def sample_source(path: Path) -> Callable[[str, float, float, int], list[str]] | None:
    """Sample messages for the report's moments, read from the journal at `path` if any.

    The journal is opened per call and closed again, so a report never holds it open
    while the agent writes to it.
    """
    if not Path(path).is_file():
        return None

    def samples(session_id: str, start: float, end: float, k: int) -> list[str]:
        with Journal.open(Path(path)) as journal:
            return journal.sample_texts(session_id, start, end, k)

    return samples
