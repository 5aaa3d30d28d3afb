"""The pipeline core, driven as the agent and `captaflow replay` drive it: real journal, real
spool, the real tiny int8 model; messages and instants passed in, no sockets, no sleeps."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from agent.journal import Journal
from agent.pipeline import Pipeline, PipelineRules, duplicates_note
from agent.scorer import Scorer
from agent.spool import Spool, iter_readings
from agent.vocab import DEFAULT_DISPLAYED, ChatMessage, ModerationEvent, Reading
from agent.windows import WindowPolicy, batch_id_for

T0 = 1_764_000_000.0


@pytest.fixture(scope="module")
def scorer(tiny_bundle: Path) -> Scorer:
    return Scorer.open(tiny_bundle)


def msg(
    n: int,
    *,
    platform: str = "twitch",
    channel: str = "streamer",
    author: str = "",
    at: float | None = None,
    via: str = "",
    text: str = "",
) -> ChatMessage:
    sent = T0 + n if at is None else at
    return ChatMessage(
        platform=platform,
        channel=channel,
        message_id=f"m{n}",
        author=author or f"viewer{n}",
        text=text or f"message {n} PogU",
        sent_at=sent,
        received_at=T0 + n,
        via=via,
    )


class Run:
    """One agent run over a data folder: open, feed, score, stop (or crash: just drop it)."""

    def __init__(self, folder: Path, scorer: Scorer, **rules: object) -> None:
        self.journal = Journal.open(folder / "journal.sqlite3")
        self._parts: list[BinaryIO] = []
        self.spool = Spool(folder / "spool", opener=self._open_part)
        self.spool.recover()
        self.pipeline = Pipeline(
            journal=self.journal,
            spool=self.spool,
            scorer=scorer,
            rules=PipelineRules(
                policy=WindowPolicy(max_messages=3, max_age=1e6),
                displayed=DEFAULT_DISPLAYED,
                agent_version="0.test",
                **rules,  # type: ignore[arg-type]
            ),
        )

    def _open_part(self, path: Path) -> BinaryIO:
        part = open(path, "ab", buffering=0)  # noqa: SIM115 - the spool closes it, or crash()
        self._parts.append(part)
        return part

    def feed(self, messages: list[ChatMessage]) -> None:
        for m in messages:
            self.pipeline.add(m, now=T0 + 100)
        self.pipeline.score_pending()

    def stop(self) -> None:
        self.pipeline.flush_windows()
        self.pipeline.score_pending()
        self.spool.seal_open()
        self.pipeline.end_sessions(T0 + 200)
        self.journal.close()

    def crash(self) -> None:
        # What kill -9 leaves: committed rows and an open part (the OS closes its handle).
        self.journal.close()
        for part in self._parts:
            part.close()


def readings(folder: Path) -> list[Reading]:
    """In chat order (parts of several sessions come in the order of their random names)."""
    return sorted(iter_readings(folder / "spool"), key=lambda r: (r.window_start, r.seq))


def test_each_reading_reaches_the_listeners_and_a_failing_listener_is_only_logged(
    tmp_path: Path, scorer: Scorer, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run(tmp_path, scorer)
    heard: list[Reading] = []
    windows: list[tuple[str, ...]] = []

    def broken(reading: Reading) -> None:
        raise RuntimeError("a web page went away")

    run.pipeline.on_reading.extend([broken, heard.append])
    run.pipeline.on_window.append(lambda r, texts, scores: windows.append(tuple(texts)))
    with caplog.at_level(logging.WARNING, logger="captaflow.pipeline"):
        run.feed([msg(n) for n in range(7)])
        run.stop()
    written = readings(tmp_path)
    assert [r.batch_id for r in heard] == [r.batch_id for r in written] and len(heard) == 3
    assert windows[0] == ("message 0 PogU", "message 1 PogU", "message 2 PogU")
    assert "a reading listener failed" in caplog.text


def test_a_bridge_feed_mixing_platforms_gives_each_platform_its_own_timeline(
    tmp_path: Path, scorer: Scorer
) -> None:
    feed = [msg(n, platform="youtube" if n % 2 else "twitch", via="streamerbot") for n in range(12)]
    run = Run(tmp_path, scorer, via="streamerbot")
    heard: list[Reading] = []
    run.pipeline.on_reading.append(heard.append)
    run.feed(feed)
    run.stop()
    written = readings(tmp_path)
    by_platform = {p: [r for r in written if r.platform == p] for p in ("twitch", "youtube")}
    assert [len(v) for v in by_platform.values()] == [2, 2]
    assert {r.via for r in heard} == {r.via for r in written} == {"streamerbot"}
    sessions = {p: {r.session_id for r in v} for p, v in by_platform.items()}
    assert all(len(s) == 1 for s in sessions.values()) and sessions["twitch"] != sessions["youtube"]
    # Each timeline counts its own windows from 0 and is filed in its own partition.
    assert [r.seq for r in by_platform["youtube"]] == [0, 1]
    sealed = sorted(p.relative_to(tmp_path / "spool" / "sealed").parts[0]
                    for p in (tmp_path / "spool" / "sealed").rglob("*.csv"))  # fmt: skip
    assert sealed == ["platform=twitch", "platform=youtube"]


def test_a_message_at_an_impossible_time_is_set_aside_and_the_rest_goes_on(
    tmp_path: Path, scorer: Scorer
) -> None:
    feed = [msg(n, at=math.inf if n == 4 else None) for n in range(9)]
    run = Run(tmp_path, scorer)
    run.feed(feed)
    run.stop()
    written = readings(tmp_path)
    # Windows of three, the poisoned message alone aside: [0 1 2] [3 5 6] [7 8].
    assert [r.message_count for r in written] == [3, 3, 2]
    assert run.pipeline.stats.set_aside == 1
    assert "impossible time (inf)" in run.pipeline.stats.last_set_aside
    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        [aside] = journal.set_aside_batches()
    assert aside.batch_id == batch_id_for(["m4"]) and aside.message_count == 1
    assert "impossible time" in aside.reason

    # A restart resumes nothing of it: the set-aside batch is never pending again.
    again = Run(tmp_path, scorer)
    again.feed([msg(n) for n in range(9, 12)])
    again.stop()
    assert again.pipeline.stats.set_aside == 0
    assert [r.message_count for r in readings(tmp_path)] == [3, 3, 2, 3]


def test_a_restart_never_dies_on_a_batch_an_older_agent_died_on(
    tmp_path: Path, scorer: Scorer
) -> None:
    # What a crashed older agent left: a window assigned around a message from the year
    # 3170843 (an IRC tmi-sent-ts past 9999), never written.
    crashed = Run(tmp_path, scorer)
    timeline = crashed.pipeline.open_timeline("twitch", "streamer", T0)
    for n in range(3):
        crashed.journal.add(
            msg(n, at=1e14 if n == 2 else None), session_id=timeline.session_id, scorable=True
        )
    crashed.journal.assign(
        timeline.session_id, batch_id_for(["m0", "m1", "m2"]), 0, ["m0", "m1", "m2"]
    )
    crashed.crash()

    for attempt in range(2):
        run = Run(tmp_path, scorer)
        run.feed([msg(n) for n in range(10 + 3 * attempt, 13 + 3 * attempt)])
        run.stop()
        # Set aside on the first restart, simply not there on the second.
        assert run.pipeline.stats.set_aside == (1 if attempt == 0 else 0)
    assert [r.message_count for r in readings(tmp_path)] == [3, 3]


def test_a_message_the_journal_cannot_hold_is_skipped_and_counted(
    tmp_path: Path, scorer: Scorer
) -> None:
    run = Run(tmp_path, scorer)
    run.feed([msg(0), msg(1, text="lone surrogate \ud800"), msg(2), msg(3)])
    run.stop()
    assert run.pipeline.stats.unreadable == 1 and run.pipeline.stats.messages == 3
    assert [r.message_count for r in readings(tmp_path)] == [3]


def test_a_ban_keeps_the_author_out_of_every_window_closed_after_it(
    tmp_path: Path, scorer: Scorer
) -> None:
    run = Run(tmp_path, scorer)
    troll = [msg(n, author="troll") if n in (1, 4, 7) else msg(n) for n in range(9)]
    run.feed(troll[:5])  # window [0 1 2] closed; 3 and 4 wait in the open window
    run.pipeline.moderate(ModerationEvent("twitch", "streamer", "clearchat", None, "TROLL", T0 + 4))
    run.feed(troll[5:])
    run.stop()
    # The closed window keeps the troll; the open one and all later ones leave him out.
    assert [r.message_count for r in readings(tmp_path)] == [3, 2, 2]
    assert run.pipeline.stats.deleted == 2


def test_a_demo_run_is_its_own_session_and_counts_its_messages_afresh(
    tmp_path: Path, scorer: Scorer
) -> None:
    def demo() -> list[Reading]:
        run = Run(tmp_path, scorer, own_session=True, recording_clock=True)
        run.feed([msg(n) for n in range(7)])
        run.stop()
        assert run.pipeline.stats.duplicates == 0
        return [r for r in readings(tmp_path) if r.session_id == run.pipeline.primary.session_id]  # type: ignore[union-attr]

    first, second = demo(), demo()
    assert first[0].session_id != second[0].session_id

    def shown(rs: list[Reading]) -> Iterator[tuple[object, ...]]:
        return ((r.window_start, r.window_end, r.message_count, r.scores, r.dominant) for r in rs)

    assert list(shown(first)) == list(shown(second))


def test_chat_recorded_before_is_named_with_how_to_score_it_again(
    tmp_path: Path, scorer: Scorer
) -> None:
    first = Run(tmp_path, scorer)
    first.feed([msg(n) for n in range(6)])
    first.stop()
    session = first.pipeline.primary.session_id  # type: ignore[union-attr]
    again = Run(tmp_path, scorer)
    again.feed([msg(n) for n in range(6)])
    again.stop()
    note = duplicates_note(again.pipeline.stats)
    assert note is not None and "already recorded (6 duplicates" in note
    assert f"captaflow replay --session {session}" in note
    assert duplicates_note(first.pipeline.stats) is None


def test_a_crashed_multistream_is_recovered_on_every_platform_at_start(
    tmp_path: Path, scorer: Scorer
) -> None:
    crashed = Run(tmp_path, scorer)
    crashed.feed([msg(n, platform="youtube" if n % 2 else "twitch") for n in range(8)])
    crashed.crash()  # windows of three: [0 2 4] and [1 3 5] written; 6 and 7 never windowed
    assert len(readings(tmp_path)) == 2

    restarted = Run(tmp_path, scorer)
    restarted.pipeline.resume_crashed("streamer", now=T0 + 100)
    assert sorted(restarted.pipeline.timelines) == [("twitch", "streamer"), ("youtube", "streamer")]
    restarted.stop()
    by_platform = sorted((r.platform, r.message_count) for r in readings(tmp_path))
    assert by_platform == [("twitch", 1), ("twitch", 3), ("youtube", 1), ("youtube", 3)]
    assert restarted.pipeline.stats.messages == 0  # nothing new: only what the crash left
