"""The journal: dedup across resends and restarts, batches, crash resume, pruning, corruption."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.journal import SCHEMA_VERSION, Journal, JournalError, PendingBatch, session_name
from agent.vocab import ChatMessage, validate_name

T0 = 1_764_085_882.0  # 2025-11-25 15:51:22 UTC


def msg(i: int, *, author: str = "viewer", at: float | None = None, text: str = "") -> ChatMessage:
    sent = T0 + i if at is None else at
    return ChatMessage(
        platform="twitch",
        channel="xqcow",
        message_id=f"id-{i}",
        author=author,
        text=text or f"message {i}",
        sent_at=sent,
        received_at=sent + 0.2,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


def test_session_ids_are_names_and_unique(path: Path) -> None:
    with Journal.open(path) as journal:
        first, resumed = journal.begin_session("twitch", "XQCOW", now=T0)
        assert re.fullmatch(r"20251125t155122z-xqcow-[a-z0-9]{6}", first) and not resumed
        assert validate_name(first, "session") == first
        journal.end_session(first, now=T0 + 1)
        second, resumed = journal.begin_session("twitch", "xqcow", now=T0)
        assert second.startswith("20251125t155122z-xqcow-") and second != first and not resumed
        assert [s.session_id for s in journal.sessions()] == sorted([first, second])


def test_session_ids_of_two_journals_started_in_the_same_second_differ(tmp_path: Path) -> None:
    # Two agents with their own data folders but one spool and one bucket (issue 12, case 3):
    # their ids must differ, or their parts and S3 keys would collide.
    ids = set()
    for n in range(50):
        with Journal.open(tmp_path / f"j{n}.sqlite3") as journal:
            ids.add(journal.begin_session("twitch", "xqcow", now=T0)[0])
    assert len(ids) == 50
    assert session_name("x" * 100, T0, "abcdef").endswith("-abcdef")
    assert len(session_name("x" * 100, T0)) == 100


def test_a_set_aside_batch_is_no_longer_pending_and_is_listed_with_its_reason(
    path: Path,
) -> None:
    # (A long retention: the test's messages are dated in the past, and a close prunes.)
    with Journal.open(path, retention_days=1e6) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        for i in range(4):
            journal.add(msg(i), session_id=session, scorable=True)
        journal.assign(session, "b0", 0, [msg(0).message_id, msg(1).message_id])
        journal.assign(session, "b1", 1, [msg(2).message_id, msg(3).message_id])
        journal.set_aside("b0", "ValueError: window start and end\nmust be finite", now=T0 + 5)
        journal.set_aside("never-assigned", "could not be written", session_id=session, seq=7)
        assert [p.batch_id for p in journal.pending_batches(session)] == ["b1"]
    with Journal.open(path, retention_days=1e6) as journal:  # kept across a restart
        first, second = journal.set_aside_batches()
        assert (first.batch_id, first.session_id, first.seq) == ("b0", session, 0)
        assert first.reason == "ValueError: window start and end must be finite"
        assert (first.at, first.message_count) == (T0 + 5, 2)
        assert (second.batch_id, second.seq, second.message_count) == ("never-assigned", 7, 0)
        assert journal.set_aside_batches("another-session") == []


def test_a_schema_1_journal_is_migrated_and_keeps_its_batches(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE batches (batch_id TEXT PRIMARY KEY, session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('assigned', 'written')),
            created_at REAL NOT NULL);
        INSERT INTO batches VALUES ('b0', 's', 0, 'written', 1.0), ('b1', 's', 1, 'assigned', 2.0);
        PRAGMA user_version=1;
        """
    )
    conn.close()
    with Journal.open(path) as journal:
        assert [p.batch_id for p in journal.pending_batches("s")] == ["b1"]
        journal.set_aside("b1", "poison")
        assert [b.batch_id for b in journal.set_aside_batches()] == ["b1"]
        assert journal.pending_batches("s") == []


def test_duplicates_within_a_session_and_after_reconnect_resend(path: Path) -> None:
    with Journal.open(path) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        assert [journal.add(msg(i), session_id=session, scorable=True) for i in range(5)] == [
            True
        ] * 5
        # A reconnect: the server resends the last three before new ones.
        again = [journal.add(msg(i), session_id=session, scorable=True) for i in range(2, 8)]
        assert again == [False, False, False, True, True, True]
        journal.flush()
        stats = journal.stats()
        assert (stats.messages, stats.duplicates) == (8, 3)
        assert stats.bytes > 0


def test_restart_on_the_same_file_counts_nothing_twice(path: Path) -> None:
    # (A long retention: the messages are dated 2025, and a stop prunes what is past it.)
    journal = Journal.open(path, retention_days=1e6)
    session, _ = journal.begin_session("twitch", "xqcow", now=T0)
    for i in range(100):
        journal.add(msg(i), session_id=session, scorable=i % 10 != 0)
    journal.close()

    journal = Journal.open(path, retention_days=1e6)
    resumed_session, resumed = journal.begin_session("twitch", "xqcow", now=T0 + 200)
    assert (resumed_session, resumed) == (session, True)
    # Even under a brand-new session (another day), a known key stays a duplicate.
    other, _ = journal.begin_session("twitch", "other", now=T0 + 200)
    assert not any(journal.add(msg(i), session_id=other, scorable=True) for i in range(100))
    assert journal.stats().duplicates == 100
    entries = list(journal.messages(session))
    assert [e.key for e in entries] == [f"id-{i}" for i in range(100)]
    assert sum(not e.scorable for e in entries) == 10
    assert list(journal.messages(other)) == []
    journal.close()


def test_unflushed_adds_are_lost_on_kill_but_flushed_ones_are_not(path: Path) -> None:
    journal = Journal.open(path)
    session, _ = journal.begin_session("twitch", "xqcow", now=T0)
    for i in range(10):
        journal.add(msg(i), session_id=session, scorable=True)
    journal.flush()
    for i in range(10, 15):
        journal.add(msg(i), session_id=session, scorable=True)
    # kill -9: the connection goes away without a commit.
    journal._conn.close()
    with Journal.open(path) as reopened:
        assert [e.key for e in reopened.unassigned(session)] == [f"id-{i}" for i in range(10)]


def test_assign_pending_confirm_cycle(path: Path) -> None:
    with Journal.open(path) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        for i in range(6):
            journal.add(msg(i), session_id=session, scorable=i != 3)
        unassigned = journal.unassigned(session)
        assert [e.key for e in unassigned] == [f"id-{i}" for i in range(6)]
        assert [e.scorable for e in unassigned] == [True, True, True, False, True, True]
        assert journal.next_seq(session) == 0

        journal.assign(session, "b0", 0, ["id-0", "id-1", "id-2"])
        journal.assign(session, "b1", 1, ["id-3", "id-4"])
        assert [e.key for e in journal.unassigned(session)] == ["id-5"]
        assert journal.next_seq(session) == 2
        assert journal.pending_batches(session) == [
            PendingBatch("b0", 0, ("id-0", "id-1", "id-2")),
            PendingBatch("b1", 1, ("id-3", "id-4")),
        ]
        journal.confirm(["b0"])
        assert journal.pending_batches(session) == [PendingBatch("b1", 1, ("id-3", "id-4"))]
        # Assigning a key twice never moves it to a second batch.
        journal.assign(session, "b2", 2, ["id-4", "id-5"])
        assert journal.pending_batches(session)[-1] == PendingBatch("b2", 2, ("id-5",))
        assert journal.unassigned(session) == []


def test_resume_only_a_recent_crashed_session(path: Path) -> None:
    journal = Journal.open(path)
    crashed, _ = journal.begin_session("twitch", "xqcow", now=T0)
    journal.add(msg(0, at=T0 + 5 * 3600), session_id=crashed, scorable=True)
    journal.assign(crashed, "b0", 0, ["id-0"])
    journal._conn.close()  # crash: never ended

    journal = Journal.open(path)
    # Last activity was at T0 + 5 h; 6 h later still counts as the same stream.
    again, resumed = journal.begin_session("twitch", "xqcow", now=T0 + 10 * 3600)
    assert (again, resumed) == (crashed, True)
    assert journal.pending_batches(crashed) == [PendingBatch("b0", 0, ("id-0",))]
    assert journal.next_seq(crashed) == 1
    journal._conn.close()

    journal = Journal.open(path)
    # A day later it is a new stream; the old one gets closed at its last activity.
    fresh, resumed = journal.begin_session("twitch", "xqcow", now=T0 + 40 * 3600)
    assert fresh != crashed and not resumed
    info = {s.session_id: s for s in journal.sessions()}
    assert info[crashed].ended_at == pytest.approx(T0 + 5 * 3600 + 0.2)
    assert info[fresh].ended_at is None
    # An ended session is never resumed.
    journal.end_session(fresh, now=T0 + 40 * 3600 + 1)
    newest, resumed = journal.begin_session("twitch", "xqcow", now=T0 + 40 * 3600 + 2)
    assert newest not in (fresh, crashed) and not resumed
    journal.close()


def test_prune_by_age_spares_unwritten_messages(path: Path) -> None:
    day = 86400.0
    with Journal.open(path, retention_days=30, clock=lambda: T0) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        for i in range(8):
            journal.add(msg(i), session_id=session, scorable=True)
        journal.assign(session, "written", 0, ["id-0", "id-1", "id-2"])
        journal.assign(session, "pending", 1, ["id-3", "id-4"])
        journal.confirm(["written"])
        # 5..7 stay unassigned.
        assert journal.prune(T0 + 10 * day) == 0
        assert journal.prune(T0 + 31 * day) == 3
        keys = [e.key for e in journal.messages(session)]
        assert keys == ["id-3", "id-4", "id-5", "id-6", "id-7"]
        assert journal.pending_batches(session) == [PendingBatch("pending", 1, ("id-3", "id-4"))]
        # A pruned key may come back (it is older than the retention), a kept one may not.
        assert journal.add(msg(0), session_id=session, scorable=True)
        assert not journal.add(msg(3), session_id=session, scorable=True)


def test_prune_by_size_removes_oldest_written_first(path: Path) -> None:
    with Journal.open(path, retention_days=365, max_bytes=1 << 40) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        big = "x" * 2000
        for i in range(400):
            journal.add(msg(i, text=f"{i} {big}"), session_id=session, scorable=True)
        journal.assign(session, "old", 0, [f"id-{i}" for i in range(300)])
        journal.confirm(["old"])
        journal.assign(session, "open", 1, [f"id-{i}" for i in range(300, 350)])
        journal.max_bytes = 400 * 1024  # room for about 200 rows
        deleted = journal.prune(T0)
        assert 150 <= deleted <= 300
        keys = [e.key for e in journal.messages(session)]
        # Oldest first, and nothing owed a reading is touched.
        assert keys[0] == f"id-{deleted}"
        assert keys[-100:] == [f"id-{i}" for i in range(300, 400)]
        # A bound that cannot be met by pruning written rows stops without touching the rest.
        journal.max_bytes = 1024
        journal.prune(T0)
        assert [e.key for e in journal.messages(session)] == [f"id-{i}" for i in range(300, 400)]


@dataclass
class Moderation:  # the attributes of agent.sources.irc.ModerationEvent
    kind: str
    channel: str
    message_id: str | None
    author: str | None
    at: float
    platform: str = "twitch"


def test_deleted_keys_from_clearmsg_and_clearchat(path: Path) -> None:
    with Journal.open(path) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        journal.add(msg(0, author="alice"), session_id=session, scorable=True)
        journal.add(msg(1, author="Spammer"), session_id=session, scorable=True)
        journal.add(msg(2, author="bob"), session_id=session, scorable=True)
        journal.add(msg(9, author="spammer"), session_id=session, scorable=True)
        journal.record_moderation(Moderation("clearmsg", "#xqcow", "id-2", None, T0 + 3))
        journal.record_moderation(Moderation("clearchat", "#xqcow", None, "spammer", T0 + 5))
        # Another channel's ban does not touch this one.
        journal.record_moderation(Moderation("clearchat", "other", None, "alice", T0 + 5))
        assert journal.deleted_keys(session) == {"id-1", "id-2"}
        assert journal.sample_texts(session, T0, T0 + 100, 5) == ["message 0", "message 9"]


def test_sample_texts_spreads_and_skips_repeats_and_unscorable(path: Path) -> None:
    with Journal.open(path) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        for i in range(40):
            journal.add(msg(i, text=f"t{i}"), session_id=session, scorable=i % 2 == 0)
        journal.add(msg(100, at=T0 + 1.5, text="t0"), session_id=session, scorable=True)
        assert journal.sample_texts(session, T0, T0 + 40, 4) == ["t0", "t10", "t20", "t30"]
        assert journal.sample_texts(session, T0 + 10, T0 + 14, 9) == ["t10", "t12"]
        assert journal.sample_texts(session, T0, T0 + 40, 0) == []


def test_corrupt_file_is_set_aside_and_a_new_journal_started(path: Path) -> None:
    path.write_bytes(b"this is not a database, it is what a crashed disk left" * 100)
    with Journal.open(path) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        assert journal.add(msg(0), session_id=session, scorable=True)
    aside = [p for p in path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")
    with Journal.open(path) as journal:
        assert journal.stats().messages == 1


def test_a_newer_schema_is_refused_with_a_clear_message(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(JournalError, match="newer CaptaFlow"):
        Journal.open(path)
    assert path.exists()


def test_wal_mode_and_schema_version(path: Path) -> None:
    Journal.open(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()


def test_the_bound_covers_database_and_wal_and_an_old_journal_is_compacted(path: Path) -> None:
    # An old journal without incremental auto-vacuum: pruning would never shrink its file.
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE filler (x)")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    bound = 1 << 20
    peak = 0
    with Journal.open(path, retention_days=1e6, max_bytes=bound) as journal:
        assert journal._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        session, _ = journal.begin_session("twitch", "xqcow", now=T0)
        for start in range(0, 13_000, 10):
            window = [msg(i, text=f"message {i} " + "x" * 60) for i in range(start, start + 10)]
            for m in window:
                journal.add(m, session_id=session, scorable=True)
            batch = f"{start:08x}"
            journal.assign(session, batch, start // 10, [m.message_id for m in window])
            journal.confirm([batch])
            if start % 200 == 0:
                peak = max(peak, journal.stats().bytes)
        kept = journal.stats().messages
    final = sum(
        Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists()
    )
    assert peak <= bound and final <= bound, (peak, final)
    assert 0 < kept < 13_000


def test_retention_counts_from_when_this_pc_stored_the_message(path: Path) -> None:
    """A replayed recording (the demo) carries the recording's day in received_at; the prune
    at close must not delete the session it just recorded (retention counts from stored_at)."""
    a_year_ago = time.time() - 365 * 86400.0
    with Journal.open(path, retention_days=30) as journal:
        session, _ = journal.begin_session("twitch", "xqcow", now=a_year_ago)
        for i in range(4):
            journal.add(msg(i, at=a_year_ago + i), session_id=session, scorable=True)
        journal.assign(session, "b", 0, [f"id-{i}" for i in range(4)])
        journal.confirm(["b"])
    with Journal.open(path, retention_days=30) as journal:
        assert len(list(journal.messages(session))) == 4
        # A month after it was stored, it goes.
        assert journal.prune(time.time() + 31 * 86400.0) == 4
