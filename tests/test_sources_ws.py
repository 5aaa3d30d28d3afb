"""Streamer.bot, Social Stream Ninja and generic JSON WebSocket sources.

Pure payload parsers on realistic payloads, then one loopback server per source (a fake of
the remote app on 127.0.0.1) that sends a malformed frame, drops the link mid-stream and
resends recent history after the reconnect: every message reaches the journal exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.errors import SettingsError, SourceError
from agent.journal import Journal
from agent.sources import make_source
from agent.sources.irc import ModerationEvent
from agent.sources.jsonws import (
    FieldMapping,
    JsonWebSocketSource,
    WebSocketJsonSource,
    get_path,
    parse_mapped_object,
    parse_mapping,
)
from agent.sources.reconnect import ReconnectPolicy
from agent.sources.ssn import SocialStreamSource, html_to_text, parse_ssn_message
from agent.sources.streamerbot import (
    StreamerbotSource,
    authentication_string,
    parse_streamerbot_event,
    parse_streamerbot_moderation,
    subscribe_request,
)
from agent.vocab import ChatMessage, SourceState, SourceStatus

pytestmark = pytest.mark.network
NOW = 1_764_085_882.0

# --------------------------------------------------------------------------- payloads

TWITCH_EVENT = {
    "timeStamp": "2025-11-25T10:51:22.4588947-05:00",
    "event": {"source": "Twitch", "type": "ChatMessage"},
    "data": {
        "messageId": "5d1b6a3e-0f44-4b42-9b1a-5fbd8d3b2f1c",
        "text": "PogU that clutch",
        "user": {"login": "somefan", "name": "SomeFan", "id": "123456", "role": 1},
        "meta": {"isMe": False, "firstMessage": False},
        "emotes": [],
        "isReply": False,
        "isTest": False,
    },
}
TWITCH_LEGACY = {
    "timeStamp": "2023-04-01T12:00:00Z",
    "event": {"source": "Twitch", "type": "ChatMessage"},
    "data": {
        "message": {
            "msgId": "0b9d3a4e-aaaa-bbbb-cccc-123456789abc",
            "userId": "42",
            "username": "oldfan",
            "displayName": "OldFan",
            "channel": "streamer",
            "message": "dances",
            "isMe": True,
            "emotes": [],
        }
    },
}
YOUTUBE_EVENT = {
    "timeStamp": "2025-11-25T15:51:23Z",
    "event": {"source": "YouTube", "type": "Message"},
    "data": {
        "eventId": "LCC.CjgKDQoLX3l0Y2hhdF9pZBIn",
        "message": "this is so wholesome",
        "publishedAt": "2025-11-25T15:51:22.9+00:00",
        "user": {"id": "UCp9noRfodywhm2MX0000000", "name": "Viewer Name", "isModerator": False},
    },
}
KICK_EVENT = {
    "timeStamp": "2025-11-25T15:51:24Z",
    "event": {"source": "Kick", "type": "ChatMessage"},
    "data": {
        "isAnonymous": False,
        "user": {"id": "777", "login": "kickfan", "name": "KickFan", "role": 1},
        "messageId": "e3c1b3a4-1111-2222-3333-444455556666",
        "text": "LETS GO",
        "isReply": False,
        "isInternal": False,
        "isTest": False,
    },
}


def test_streamerbot_twitch_new_and_legacy_shapes() -> None:
    msg = parse_streamerbot_event(TWITCH_EVENT, channel="streamer", received_at=NOW)
    assert msg == ChatMessage(
        "twitch",
        "streamer",
        "5d1b6a3e-0f44-4b42-9b1a-5fbd8d3b2f1c",
        "somefan",
        "PogU that clutch",
        pytest.approx(1764085882.4588947),  # type: ignore[arg-type]
        NOW,
        False,
    )
    legacy = parse_streamerbot_event(TWITCH_LEGACY, channel="streamer", received_at=NOW)
    assert legacy is not None
    assert (legacy.message_id, legacy.author, legacy.text, legacy.action) == (
        "0b9d3a4e-aaaa-bbbb-cccc-123456789abc",
        "oldfan",
        "dances",
        True,
    )
    assert legacy.sent_at == 1680350400.0


def test_streamerbot_youtube_and_kick() -> None:
    yt = parse_streamerbot_event(YOUTUBE_EVENT, channel="streamer", received_at=NOW)
    assert yt is not None
    assert (yt.platform, yt.message_id, yt.author, yt.text) == (
        "youtube",
        "LCC.CjgKDQoLX3l0Y2hhdF9pZBIn",
        "Viewer Name",
        "this is so wholesome",
    )
    assert yt.sent_at == pytest.approx(1764085882.9)
    kick = parse_streamerbot_event(KICK_EVENT, channel="streamer", received_at=NOW)
    assert kick is not None
    assert (kick.platform, kick.author, kick.text) == ("kick", "kickfan", "LETS GO")


def test_streamerbot_ignores_other_events_and_tolerates_holes() -> None:
    for other in (
        {"event": {"source": "Obs", "type": "SceneChanged"}, "data": {"text": "x"}},
        {"event": {"source": "Twitch", "type": "Follow"}, "data": {"user_login": "a"}},
        {"request": "Hello", "info": {}},
        {"id": "captaflow-subscribe", "status": "ok"},
        [1, 2],
        "text",
        {"event": {"source": "Twitch", "type": "ChatMessage"}, "data": None},
        {"event": {"source": "Twitch", "type": "ChatMessage"}, "data": {"text": "   "}},
    ):
        assert parse_streamerbot_event(other, channel="c", received_at=NOW) is None
    bare = {"event": {"source": "Twitch", "type": "ChatMessage"}, "data": {"text": "hi"}}
    msg = parse_streamerbot_event(bare, channel="c", received_at=NOW)
    assert msg is not None and msg.message_id.startswith("h:") and msg.sent_at == NOW


def test_streamerbot_moderation_and_protocol_helpers() -> None:
    deleted = {
        "timeStamp": "2025-11-25T15:51:30Z",
        "event": {"source": "Twitch", "type": "ChatMessageDeleted"},
        "data": {"messageId": "abc", "user_login": "x"},
    }
    assert parse_streamerbot_moderation(deleted, channel="c", received_at=NOW) == ModerationEvent(
        "twitch", "c", "clearmsg", "abc", None, 1764085890.0
    )
    banned = {"event": {"source": "Twitch", "type": "UserBanned"}, "data": {"user_login": "Bad"}}
    event = parse_streamerbot_moderation(banned, channel="c", received_at=NOW)
    assert event is not None and (event.kind, event.author) == ("clearchat", "bad")
    assert parse_streamerbot_moderation(TWITCH_EVENT, channel="c", received_at=NOW) is None
    request = subscribe_request()
    assert request["request"] == "Subscribe"
    assert "ChatMessage" in request["events"]["Twitch"]
    assert request["events"]["YouTube"][0] == "Message"
    # The documented recipe, worked out once with hashlib and base64 by hand.
    assert authentication_string("pw", "salt", "challenge") == (
        "u2LyppGkAjwgvCNaKsAc4tztRWLqv1i85slC7KiH71Q="
    )


SSN_YOUTUBE = {
    "chatname": "Jane Doe",
    "chatmessage": 'so good <img src="https://yt3.ggpht.com/x" alt=":hand-pink-waving:" '
    'class="regular-emote"> &amp; &lt;3 <b>wow</b>',
    "chatimg": "https://yt3.ggpht.com/avatar",
    "type": "youtube",
    "id": 17,
    "userid": "UC123",
    "timestamp": 1764085882500,
    "hasDonation": "",
    "membership": "",
    "textonly": False,
}


def test_ssn_message_html_is_stripped_and_ids_are_stable() -> None:
    msg = parse_ssn_message(SSN_YOUTUBE, channel="streamer", received_at=NOW)
    assert msg is not None
    assert msg.text == "so good :hand-pink-waving: & <3 wow"
    assert (msg.platform, msg.author, msg.sent_at) == ("youtube", "Jane Doe", 1764085882.5)
    again = parse_ssn_message(
        {"overlayNinja": dict(SSN_YOUTUBE)}, channel="streamer", received_at=NOW + 5
    )
    assert again is not None and again.message_id == msg.message_id
    restarted = parse_ssn_message(
        {**SSN_YOUTUBE, "timestamp": 1764090000000}, channel="streamer", received_at=NOW
    )
    assert restarted is not None and restarted.message_id != msg.message_id
    tiktok = parse_ssn_message(
        {"chatname": "t", "chatmessage": "a<b", "type": "tiktok", "textonly": True},
        channel="streamer",
        received_at=NOW,
    )
    assert tiktok is not None and (tiktok.text, tiktok.platform) == ("a<b", "tiktok")
    rumble = parse_ssn_message(
        {"chatname": "r", "chatmessage": "hi", "type": "rumble"}, channel="s", received_at=NOW
    )
    assert rumble is not None and rumble.platform == "other"


def test_ssn_skips_events_and_non_chat() -> None:
    for other in (
        {"chatname": "x", "chatmessage": "followed", "event": "new_follower", "type": "twitch"},
        {"action": "getQueueSize"},
        {"chatname": "x", "chatmessage": "<img src='a.png'>", "type": "youtube"},
        ["a"],
        None,
    ):
        assert parse_ssn_message(other, channel="s", received_at=NOW) is None
    assert html_to_text("<div>a<br>b</div>") == "a b"
    assert html_to_text("a &lt;3 <i>b") == "a <3 b"
    assert html_to_text("<<<>>>&&&") == "<<<>>>&&&"  # not HTML: kept as typed


def test_generic_mapping() -> None:
    mapping = parse_mapping(
        {
            "text": "payload.body",
            "id": "payload.uuid",
            "author": "user.name",
            "time": "ts",
            "platform": "=YouTube",
            "where": "kind=chat",
        },
        channel="Streamer",
    )
    obj = {
        "kind": "chat",
        "ts": 1764085882000,
        "user": {"name": "ann"},
        "payload": {"body": "hello", "uuid": 99},
    }
    msg = parse_mapped_object(obj, mapping, received_at=NOW)
    assert msg == ChatMessage("youtube", "streamer", "99", "ann", "hello", 1764085882.0, NOW)
    assert parse_mapped_object({**obj, "kind": "join"}, mapping, received_at=NOW) is None
    assert parse_mapped_object({"kind": "chat"}, mapping, received_at=NOW) is None
    plain = parse_mapped_object({"text": "x"}, FieldMapping(), received_at=NOW)
    assert plain is not None and plain.message_id.startswith("h:") and plain.platform == "other"
    assert get_path({"a": [{"b": 1}]}, "a.0.b") == 1
    assert get_path({"a": [1]}, "a.5") is None and get_path({"a": 1}, "a.b") is None
    with pytest.raises(SettingsError, match="'txt'"):
        parse_mapping({"txt": "x"}, channel="c")
    with pytest.raises(SettingsError, match="path=value"):
        parse_mapping({"where": "novalue"}, channel="c")


def test_settings_errors_name_the_fix() -> None:
    with pytest.raises(SettingsError, match="--server-url"):
        make_source(
            "ws", channel="c", server_url=None, file=None, speed=1, token=None, mapping=None
        )
    with pytest.raises(SourceError, match="session id"):
        make_source(
            "ssn", channel="c", server_url=None, file=None, speed=1, token=None, mapping=None
        )


# --------------------------------------------------------------------------- loopback servers

Handler = Callable[[ServerConnection, int], Awaitable[None]]


def fast_policy() -> ReconnectPolicy:
    return ReconnectPolicy(
        initial=0.05, cap=0.2, max_attempts_per_minute=20, random_unit=lambda: 1.0
    )


async def run_against(
    handler: Handler,
    make: Callable[[str, Callable[[SourceStatus], None]], WebSocketJsonSource],
    want: int,
    journal: Journal,
) -> tuple[list[ChatMessage], WebSocketJsonSource, list[SourceStatus]]:
    """Serve `handler` on 127.0.0.1, read `want` messages through the source into the journal."""
    connections = 0

    async def serve_one(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await handler(ws, connections)

    statuses: list[SourceStatus] = []
    async with serve(serve_one, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        source = make(f"ws://127.0.0.1:{port}/", statuses.append)
        session, _ = journal.begin_session("twitch", "streamer", now=NOW)
        got: list[ChatMessage] = []

        async def read() -> None:
            async for message in source.messages():
                got.append(message)
                journal.add(message, session_id=session, scorable=True)
                if len(got) == want:
                    return

        try:
            await asyncio.wait_for(read(), timeout=20)
        finally:
            await source.close()
        journal.flush()
    return got, source, statuses


def drop(ws: ServerConnection) -> None:
    """A network failure, not a goodbye: the TCP connection vanishes without a close frame."""
    ws.transport.abort()


async def recv_json(ws: ServerConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def event(source: str, kind: str, mid: str, text: str) -> str:
    return json.dumps(
        {
            "timeStamp": "2025-11-25T15:51:22Z",
            "event": {"source": source, "type": kind},
            "data": {"messageId": mid, "text": text, "user": {"login": "fan", "name": "Fan"}},
        }
    )


def test_streamerbot_loopback_auth_malformed_drop_and_resend(tmp_path: Path) -> None:
    password = "hunter2"
    seen_requests: list[dict[str, Any]] = []
    moderation: list[Any] = []

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(
            json.dumps(
                {
                    "request": "Hello",
                    "info": {"version": "1.0.1"},
                    "authentication": {"salt": "c2FsdA==", "challenge": f"Y2g{n}"},
                }
            )
        )
        auth = await recv_json(ws)
        assert auth["authentication"] == authentication_string(password, "c2FsdA==", f"Y2g{n}")
        await ws.send(json.dumps({"id": auth["id"], "status": "ok"}))
        seen_requests.append(await recv_json(ws))
        await ws.send(json.dumps({"id": "captaflow-subscribe", "status": "ok", "events": {}}))
        if n == 1:
            await ws.send(event("Twitch", "ChatMessage", "m1", "one"))
            await ws.send("{this is not json")
            await ws.send(b"\xff\xfe\x00")
            await ws.send(event("YouTube", "Message", "m2", "two"))
            await ws.send(event("Twitch", "ChatMessageDeleted", "m1", ""))
            await ws.send(event("Kick", "ChatMessage", "m3", "three"))
            drop(ws)
        else:
            # After a reconnect the bot resends what it had just sent, then goes on.
            await ws.send(event("YouTube", "Message", "m2", "two"))
            await ws.send(event("Kick", "ChatMessage", "m3", "three"))
            await ws.send(event("Twitch", "ChatMessage", "m4", "four"))
            await ws.wait_closed()

    def make(url: str, on_status: Callable[[SourceStatus], None]) -> WebSocketJsonSource:
        return StreamerbotSource(
            channel="streamer",
            server_url=url,
            password=password,
            on_status=on_status,
            on_moderation=moderation.append,
            policy=fast_policy(),
        )

    with Journal.open(tmp_path / "j.sqlite3") as journal:
        got, source, statuses = asyncio.run(run_against(handler, make, 6, journal))
        assert [m.message_id for m in got] == ["m1", "m2", "m3", "m2", "m3", "m4"]
        assert [m.platform for m in got[:3]] == ["twitch", "youtube", "kick"]
        assert journal.stats().messages == 4 and journal.stats().duplicates == 2
    assert source.stats.malformed == 2 and source.stats.connects == 2
    assert source.stats.drops >= 1
    assert [m.message_id for m in moderation] == ["m1"]
    assert seen_requests[0]["request"] == "Subscribe"
    states = [s.state for s in statuses]
    assert states[:2] == [SourceState.CONNECTING, SourceState.CONNECTED]
    assert SourceState.RECONNECTING in states
    assert states[-1] is SourceState.STOPPED


def test_streamerbot_without_the_password_fails_with_a_clear_message() -> None:
    async def main() -> None:
        async def handler(ws: ServerConnection) -> None:
            await ws.send(
                json.dumps({"request": "Hello", "authentication": {"salt": "a", "challenge": "b"}})
            )
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            source = StreamerbotSource(
                channel="s", server_url=f"ws://127.0.0.1:{port}/", policy=fast_policy()
            )
            with pytest.raises(SourceError, match="asks for a password"):
                async for _ in source.messages():
                    pass
            assert source.status().state is SourceState.FAILED
            await source.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def ssn_payload(i: int, text: str) -> str:
    return json.dumps(
        {
            "chatname": f"user{i}",
            "chatmessage": text,
            "type": "youtube",
            "id": i,
            "userid": f"UC{i}",
            "timestamp": 1764085882000 + i,
        }
    )


def test_ssn_loopback_join_malformed_oversized_drop_and_resend(tmp_path: Path) -> None:
    joins: list[Any] = []

    async def handler(ws: ServerConnection, n: int) -> None:
        joins.append(await recv_json(ws))
        if n == 1:
            await ws.send(ssn_payload(1, "first <b>bold</b>"))
            await ws.send(
                json.dumps({"chatname": "x", "chatmessage": "", "event": "viewer_update"})
            )
            await ws.send("not json")
            await ws.send(ssn_payload(2, "second"))
            # Larger than the source's frame limit: the client closes (1009) and comes back.
            await ws.send(json.dumps({"chatmessage": "x" * 5000}))
            await ws.wait_closed()
        else:
            await ws.send(ssn_payload(2, "second"))
            await ws.send(ssn_payload(3, "third"))
            await ws.wait_closed()

    def make(url: str, on_status: Callable[[SourceStatus], None]) -> WebSocketJsonSource:
        return SocialStreamSource(
            channel="streamer",
            server_url=url,
            session="SeCrEt",
            on_status=on_status,
            policy=fast_policy(),
            max_size=4096,
        )

    with Journal.open(tmp_path / "j.sqlite3") as journal:
        got, source, statuses = asyncio.run(run_against(handler, make, 4, journal))
        assert [m.text for m in got] == ["first bold", "second", "second", "third"]
        assert journal.stats().messages == 3 and journal.stats().duplicates == 1
    assert joins == [{"join": "SeCrEt", "in": 4}] * 2
    assert source.stats.malformed == 1 and source.stats.connects == 2
    assert all("SeCrEt" not in s.detail for s in statuses)


def test_generic_ws_loopback_arrays_malformed_and_reconnect(tmp_path: Path) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.send(
                json.dumps(
                    [
                        {"type": "chat", "msg": "a", "uid": "1"},
                        {"type": "join", "msg": "x", "uid": "j"},
                    ]
                )
            )
            await ws.send("]]]")
            await ws.send(json.dumps({"type": "chat", "msg": "b", "uid": "2"}))
            await ws.close(1011, "server restarting")
        else:
            await ws.send(json.dumps({"type": "chat", "msg": "b", "uid": "2"}))
            await ws.send(json.dumps({"type": "chat", "msg": "c", "uid": "3"}))
            await ws.wait_closed()

    def make(url: str, on_status: Callable[[SourceStatus], None]) -> WebSocketJsonSource:
        source = make_source(
            "ws",
            channel="streamer",
            server_url=url,
            file=None,
            speed=1,
            token=None,
            mapping={"text": "msg", "id": "uid", "where": "type=chat", "platform": "=kick"},
            on_status=on_status,
        )
        assert isinstance(source, JsonWebSocketSource)
        source.policy = fast_policy()
        return source

    with Journal.open(tmp_path / "j.sqlite3") as journal:
        got, source, _ = asyncio.run(run_against(handler, make, 4, journal))
        assert [m.message_id for m in got] == ["1", "2", "2", "3"]
        assert {m.platform for m in got} == {"kick"}
        assert journal.stats().messages == 3 and journal.stats().duplicates == 1
    assert source.stats.malformed == 1 and source.stats.connects == 2
    # The reconnect waited the policy's backoff (full jitter drawn at its maximum here).
    assert source.policy.failures >= 1


def test_unreachable_server_retries_with_backoff_until_closed() -> None:
    async def main() -> list[SourceStatus]:
        statuses: list[SourceStatus] = []
        source = JsonWebSocketSource(
            "ws://127.0.0.1:9/",
            mapping=FieldMapping(),
            on_status=statuses.append,
            policy=fast_policy(),
            open_timeout=1,
        )
        reader = asyncio.ensure_future(anext(source.messages()))
        for _ in range(200):
            if sum(s.state is SourceState.RECONNECTING for s in statuses) >= 3:
                break
            await asyncio.sleep(0.02)
        await source.close()
        with pytest.raises(StopAsyncIteration):
            await reader
        return statuses

    statuses = asyncio.run(asyncio.wait_for(main(), 20))
    retries = [s.retry_in for s in statuses if s.state is SourceState.RECONNECTING]
    assert len(retries) >= 3
    assert retries[:3] == pytest.approx([0.05, 0.1, 0.2])  # 0.05·2^(n-1), capped at 0.2
    assert statuses[-1].state is SourceState.STOPPED


def test_make_source_chooses_by_kind() -> None:
    from agent.sources.twitch import TwitchSource

    common: dict[str, Any] = {"file": None, "speed": 1, "mapping": None}
    assert isinstance(
        make_source("Twitch", channel="xqcow", server_url=None, token=None, **common),
        TwitchSource,
    )
    assert isinstance(
        make_source("streamerbot", channel="xqcow", server_url=None, token=None, **common),
        StreamerbotSource,
    )
    ssn = make_source("ssn", channel="xqcow", server_url=None, token="abc", **common)
    assert isinstance(ssn, SocialStreamSource) and ssn.url == "wss://io.socialstream.ninja"
