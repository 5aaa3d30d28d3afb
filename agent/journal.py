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

Schema (PRAGMA user_version = SCHEMA_VERSION):

    sessions(session_id PK, platform, channel, started_at, ended_at NULL)
    messages(key PK, session_id, platform, channel, author, text, sent_at, received_at,
             scorable, batch_id NULL)            -- rowid order = received order
    batches(batch_id PK, session_id, seq, state 'assigned'|'written'|'set_aside', created_at,
            reason NULL, set_aside_at NULL)
    moderation(id PK, platform, channel, kind, target_key NULL, target_user NULL, at,
               duration NULL)

Concurrency: one `Journal` is used from the asyncio thread only. The connection is opened with
`check_same_thread=False` so that the object may be created on one thread and used on the
loop's thread, never from two threads at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import CaptaFlowError
from agent.vocab import ChatMessage, ModerationEvent, validate_name

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

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
    batch_id    TEXT
);
{batches}CREATE TABLE IF NOT EXISTS moderation (
    id          INTEGER PRIMARY KEY,
    platform    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    target_key  TEXT,
    target_user TEXT,
    at          REAL NOT NULL,
    duration    REAL
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


class Journal:
    """Append-only SQLite journal of chat messages and their batches. See the module doc."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, retention_days: float, max_bytes: int
    ) -> None:
        self._conn = conn
        self.path = path
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self._in_tx = False
        self._duplicates = 0

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: Path, *, retention_days: float = 30, max_bytes: int = 1 << 30) -> Journal:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"cannot create the journal folder {path.parent}: {exc.strerror}; "
                "choose a writable --data-dir"
            ) from exc
        try:
            conn = cls._connect(path)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _looks_corrupt(exc):
                raise JournalError(
                    f"cannot open the journal {path}: {exc}; check the folder's permissions"
                ) from exc
            aside = _set_aside(path)
            log.warning("journal %s is not a readable database (%s); moved to %s", path, exc, aside)
            conn = cls._connect(path)
        return cls(conn, path, retention_days, max_bytes)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise JournalError(
                    f"the journal {path} was written by a newer CaptaFlow (schema {version}); "
                    "update CaptaFlow or use another --data-dir"
                )
            # auto_vacuum only takes effect before the first table exists.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("journal %s: WAL mode unavailable (got %s)", path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            _migrate_batches(conn)
            conn.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # A cheap read of every table catches a file that is a database only in name.
            for table in ("sessions", "messages", "batches", "moderation"):
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

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
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            resumed: str | None = None
            for session_id, last_active in rows:
                if resumed is None and now - last_active <= resume_within:
                    resumed = session_id
                else:
                    self._conn.execute(
                        "UPDATE sessions SET ended_at = ? WHERE session_id = ?",
                        (last_active, session_id),
                    )
            if resumed is None:
                candidate = session_name(channel, now)
                while self._conn.execute(
                    "SELECT 1 FROM sessions WHERE session_id = ?", (candidate,)
                ).fetchone():
                    candidate = session_name(channel, now)
                self._conn.execute(
                    "INSERT INTO sessions (session_id, platform, channel, started_at) "
                    "VALUES (?, ?, ?, ?)",
                    (candidate, platform, channel, now),
                )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return (resumed, True) if resumed is not None else (candidate, False)

    def end_session(self, session_id: str, *, now: float) -> None:
        self.flush()
        self._conn.execute(
            "UPDATE sessions SET ended_at = ? WHERE session_id = ? AND ended_at IS NULL",
            (now, session_id),
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
        Written into an open transaction that `flush()` commits."""
        if not self._in_tx:
            self._conn.execute("BEGIN")
            self._in_tx = True
        try:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO messages (key, session_id, platform, channel, author, "
                "text, sent_at, received_at, scorable) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    scoped_key(scope, msg.message_id),
                    session_id,
                    msg.platform,
                    msg.channel,
                    msg.author,
                    msg.text,
                    msg.sent_at,
                    msg.received_at,
                    int(scorable),
                ),
            )
        except sqlite3.OperationalError as exc:
            raise JournalError(
                f"cannot write the journal {self.path}: {exc}; free disk space"
            ) from exc
        if cursor.rowcount == 1:
            return True
        self._duplicates += 1
        return False

    def flush(self) -> None:
        """Commit what `add()` wrote since the last flush."""
        if self._in_tx:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise JournalError(
                    f"cannot write the journal {self.path}: {exc}; free disk space"
                ) from exc
            self._in_tx = False

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
        self.flush()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "INSERT OR IGNORE INTO batches (batch_id, session_id, seq, state, created_at) "
                "VALUES (?, ?, ?, 'assigned', ?)",
                (batch_id, session_id, seq, time.time()),
            )
            self._conn.executemany(
                "UPDATE messages SET batch_id = ? "
                "WHERE key = ? AND session_id = ? AND batch_id IS NULL",
                [(batch_id, key, session_id) for key in keys],
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

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
        self.flush()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(
                "UPDATE batches SET state = 'written' WHERE batch_id = ?",
                [(batch_id,) for batch_id in batch_ids],
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

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
        self.flush()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._conn.execute(
                "UPDATE batches SET state = 'set_aside', reason = ?, set_aside_at = ? "
                "WHERE batch_id = ?",
                (text, at, batch_id),
            )
            if cursor.rowcount == 0 and session_id is not None and seq is not None:
                self._conn.execute(
                    "INSERT INTO batches (batch_id, session_id, seq, state, created_at, reason, "
                    "set_aside_at) VALUES (?, ?, ?, 'set_aside', ?, ?, ?)",
                    (batch_id, session_id, seq, at, text, at),
                )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
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
        platform, channel, target message id or target user, time, duration."""
        kind, platform, channel, target_key, target_user, at, duration = _moderation_fields(event)
        if not self._in_tx:
            self._conn.execute("BEGIN")
            self._in_tx = True
        self._conn.execute(
            "INSERT INTO moderation (platform, channel, kind, target_key, target_user, at, "
            "duration) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (platform, channel, kind, target_key, target_user, at, duration),
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

    def prune(self, now: float) -> int:
        """Delete old messages: older than `retention_days`, then the oldest until the data
        fits in `max_bytes`. Only messages whose batch is 'written' are ever pruned: an
        unassigned message or one of a pending batch is still owed a reading. Returns the
        number of messages deleted."""
        self.flush()
        prunable = (
            "SELECT m.rowid FROM messages m JOIN batches b ON b.batch_id = m.batch_id "
            "WHERE b.state IN ('written', 'set_aside')"
        )
        deleted = 0
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cutoff = now - self.retention_days * 86400
            cursor = self._conn.execute(
                f"DELETE FROM messages WHERE rowid IN ({prunable} AND m.received_at < ?)",
                (cutoff,),
            )
            deleted += cursor.rowcount
            self._conn.execute("DELETE FROM moderation WHERE at < ?", (cutoff,))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        # Size: delete the oldest prunable rows in chunks sized from the mean row size.
        while self._db_bytes() > self.max_bytes:
            rows = self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            if rows == 0:
                break
            excess = self._db_bytes() - self.max_bytes
            chunk = max(100, int(excess / max(1, self._db_bytes() / rows)) + 1)
            cursor = self._conn.execute(
                f"DELETE FROM messages WHERE rowid IN ({prunable} ORDER BY m.rowid LIMIT ?)",
                (chunk,),
            )
            if cursor.rowcount <= 0:
                log.warning(
                    "journal %s is over its size bound but holds only messages still owed a "
                    "reading; nothing pruned",
                    self.path,
                )
                break
            deleted += cursor.rowcount
        if deleted:
            # Batches whose messages are all gone are no longer needed for anything.
            self._conn.execute(
                "DELETE FROM batches WHERE state = 'written' AND NOT EXISTS "
                "(SELECT 1 FROM messages m WHERE m.batch_id = batches.batch_id)"
            )
            self._conn.execute("PRAGMA incremental_vacuum")
        return deleted

    def close(self) -> None:
        try:
            self.flush()
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
