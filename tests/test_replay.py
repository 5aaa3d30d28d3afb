"""Replay of recorded chat: JSONL and the real gzip IRC capture, at max and recorded speed."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.audience import KNOWN_BOTS, is_audience
from agent.errors import SettingsError, SourceError
from agent.sources import ChatSource, open_source
from agent.sources.irc import ModerationEvent
from agent.sources.replay import ReplaySource, parse_speed, parse_time, record_jsonl
from agent.vocab import ChatMessage, SourceState, SourceStatus

CAPTURE = "xqcow-chat-2019-09-15.irc.gz"


@dataclass
class Source:
    """The `[source]` settings as the assembly hands them to `open_source`."""

    kind: str
    channel: str = ""
    server_url: str = ""
    options: dict[str, Any] = field(default_factory=dict)


async def collect(source: ChatSource) -> list[ChatMessage]:
    async def run() -> list[ChatMessage]:
        return [m async for m in source.messages()]

    return await asyncio.wait_for(run(), timeout=60)


class FakeTime:
    """A clock that only moves when the replay sleeps; records every requested delay."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay


B = 1_700_000_000.0  # 2023-11-14T22:13:20Z: recorded times must be after 2005


def test_real_irc_capture_at_max_speed(testdata: Path) -> None:
    statuses: list[SourceStatus] = []
    moderation: list[object] = []
    source = open_source(
        Source("replay", options={"file": str(testdata / CAPTURE), "speed": "max"}),
        secrets={},
        on_status=statuses.append,
        on_moderation=moderation.append,
    )
    messages = asyncio.run(collect(source))
    # 4,933 PRIVMSG plus the 5 USERNOTICEs (resubs) that carry the viewer's own words.
    assert len(messages) == 4933 + 5
    assert len({m.message_id for m in messages}) == len(messages)
    assert len(moderation) == 58  # CLEARCHAT: bans and timeouts
    assert isinstance(source, ReplaySource)
    assert source.stats.bad_lines == 0 and source.stats.lines == 5000
    assert statuses[-1].state is SourceState.FINISHED
    assert source.status().state is SourceState.FINISHED

    first = messages[0]
    # Keyed as the live Twitch source keys it: the user id, the login beside it.
    assert (first.platform, first.channel, first.author) == ("twitch", "xqcow", "48215771")
    assert first.author_name == "onche"
    assert first.message_id == "ca561310-6855-43b3-8325-3ea7418359a2"
    assert first.sent_at == pytest.approx(1568505600.501)
    assert first.text.startswith("DEVIL MAY CRY 5 gachiBASS")
    assert messages[-1].sent_at - first.sent_at == pytest.approx(7.7 * 60, abs=30)
    resub = next(m for m in messages if m.text.startswith("7 Months i love you."))
    assert resub.author_name == "keifele"
    # Bots and commands, as the README of the capture counts them.
    assert sum(m.author_name == "fossabot" for m in messages) == 16
    assert sum(m.text.startswith("!") for m in messages) == 31
    not_scored = [m for m in messages if not is_audience(m, bots=KNOWN_BOTS)]
    assert 31 <= len(not_scored) <= 31 + 16


def test_jsonl_replay_with_bad_lines_and_schema_variants(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "chat.jsonl"
    lines = [
        json.dumps(
            {
                "platform": "YouTube",
                "channel": "Chan",
                "id": "y1",
                "author": "a",
                "text": "hello",
                "sent_at": B + 100.5,
            }
        ),
        "not json at all {",
        json.dumps({"text": "no time"}),
        "",
        json.dumps(
            {"channel": "chan", "author": "b", "text": "iso", "sent_at": "2023-11-14T22:15:20Z"}
        ),
        json.dumps(
            {"message_id": "k1", "platform": "kick", "text": "ms", "sent_at": 1568505600501}
        ),
        json.dumps([1, 2, 3]),
        json.dumps(
            {"channel": "chan", "author": "c", "text": "/me", "sent_at": B + 140, "action": True}
        ),
        '{"channel": "chan", "text": "from the far future", "sent_at": 1e300}',
        '{"channel": "../../etc", "text": "odd channel", "sent_at": 1e400}',
    ]
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe broken utf-8\n")
    with caplog.at_level(logging.WARNING):
        source = ReplaySource(path, speed=None, channel="fallback")
        messages = asyncio.run(collect(source))
    assert [m.text for m in messages] == [
        "hello", "iso", "ms", "/me", "from the far future", "odd channel"
    ]  # fmt: skip
    assert [m.platform for m in messages] == ["youtube", "other", "kick", "other", "other", "other"]
    assert [m.channel for m in messages] == ["chan", "chan", "fallback", "chan", "chan", "fallback"]
    # ms -> s; a time out of range takes the last good time of the file, and is counted.
    assert [m.sent_at for m in messages] == [
        B + 100.5, B + 120.0, 1568505600.501, B + 140.0, B + 140.0, B + 140.0
    ]  # fmt: skip
    assert source.status().times_replaced == 2
    assert messages[0].message_id == "y1" and messages[2].message_id == "k1"
    assert messages[1].message_id.startswith("h:")  # no id: content hash
    assert messages[3].action
    assert source.stats.bad_lines == 4
    assert "line 2 skipped" in caplog.text and "line 11 skipped" in caplog.text


def test_recorded_speed_sleeps_the_recorded_gaps(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    times = [B + t for t in (10.0, 10.5, 12.0, 12.0, 11.0, 20.0, 1000.0)]
    path.write_text(
        "".join(
            json.dumps({"id": f"m{i}", "text": f"t{i}", "sent_at": t}) + "\n"
            for i, t in enumerate(times)
        )
    )
    fake = FakeTime(B + 1000)
    source = ReplaySource(path, speed=2.0, max_gap=60, clock=fake.clock, sleep=fake.sleep)
    messages = asyncio.run(collect(source))
    assert len(messages) == len(times)
    # Gaps halved; an out-of-order message waits for nothing; 980 s of silence -> 60 s.
    assert fake.delays == pytest.approx([0.25, 0.75, 4.0, 60.0])
    # received_at is when the replay let the message go.
    assert [m.received_at for m in messages] == pytest.approx(
        [B + t for t in (1000, 1000.25, 1001, 1001, 1001, 1005, 1065)]
    )


def test_record_then_replay_round_trip(tmp_path: Path) -> None:
    original = [
        ChatMessage("twitch", "xqcow", "id-1", "alice", "Kappa 123", B + 1.25, B + 2.0),
        ChatMessage(
            "youtube", "chan", "id-2", "bob", 'emoji 🎉 "quotes"\nnewline', B + 3, B + 4, True
        ),
        ChatMessage("kick", "chan", "id-3", "", "broken \ud800 surrogate", B + 5.0, B + 6.0),
    ]
    path = tmp_path / "rec.jsonl"
    assert record_jsonl(original[:2], path) == 2
    assert record_jsonl(original[2:], path) == 1
    replayed = asyncio.run(collect(ReplaySource(path, speed=None, clock=lambda: B + 9.0)))
    assert [
        (m.platform, m.channel, m.message_id, m.author, m.text, m.sent_at, m.action)
        for m in replayed
    ] == [
        (m.platform, m.channel, m.message_id, m.author, m.text, m.sent_at, m.action)
        for m in original
    ]


def test_gzip_jsonl_and_mixed_irc_lines(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"  # detected by content, not name
    irc = (
        "@id=abc;tmi-sent-ts=1568505600501;user-id=1 :viewer!viewer@viewer.tmi.twitch.tv "
        "PRIVMSG #chan :\x01ACTION waves\x01"
    )
    body = "\n".join(
        [
            irc,
            "PING :tmi.twitch.tv",
            ":tmi.twitch.tv CLEARCHAT #chan",
            "@target-msg-id=abc;login=viewer :tmi.twitch.tv CLEARMSG #chan :waves",
            "@bad",
            json.dumps({"id": "j", "text": "json", "sent_at": 1}),
        ]
    )
    path.write_bytes(gzip.compress(body.encode()))
    events: list[ModerationEvent] = []
    source = ReplaySource(path, speed=None, on_moderation=events.append)
    messages = asyncio.run(collect(source))
    assert [(m.author, m.text, m.action) for m in messages] == [
        ("1", "waves", True),  # user-id, as live
        ("", "json", False),
    ]
    assert [e.kind for e in events] == ["clearchat", "clearmsg"]
    assert events[1].message_id == "abc"
    assert source.stats.bad_lines == 1


def test_close_stops_a_replay_early(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"text": str(i), "sent_at": i}) + "\n" for i in range(50)))
    source = ReplaySource(path, speed=None)

    async def run() -> list[ChatMessage]:
        got = []
        async for message in source.messages():
            got.append(message)
            if len(got) == 5:
                await source.close()
        return got

    assert len(asyncio.run(run())) == 5
    assert source.status().state is SourceState.STOPPED


def test_missing_file_and_bad_settings_say_what_to_do(tmp_path: Path) -> None:
    source = ReplaySource(tmp_path / "nope.jsonl", speed=None)
    with pytest.raises(SourceError, match=r"nope\.jsonl does not exist"):
        asyncio.run(collect(source))
    with pytest.raises(SettingsError, match="--file"):
        open_source(Source("replay", options={"speed": "max"}), secrets={})
    with pytest.raises(SettingsError, match="'fast-ish'"):
        parse_speed("fast-ish")
    with pytest.raises(SettingsError, match="twitch, streamerbot, ssn, ws, replay"):
        open_source(Source("irc"), secrets={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("max", None), ("recorded", 1.0), ("10", 10.0), ("2.5x", 2.5), (3, 3.0), (None, 1.0)],
)
def test_parse_speed(value: str | float | None, expected: float | None) -> None:
    assert parse_speed(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1568505600.501, 1568505600.501),
        (1568505600501, 1568505600.501),
        ("1568505600.5", 1568505600.5),
        ("2019-09-15T00:00:00.501Z", 1568505600.501),
        ("2019-09-15T02:00:00+02:00", 1568505600.0),
        ("2019-09-15 00:00:00", 1568505600.0),
    ],
)
def test_parse_time(value: object, expected: float) -> None:
    assert parse_time(value) == pytest.approx(expected)
