"""The WebSocket sources against loopback fakes of their peers (tests/platform_fakes.py, each
frame cited there): Streamer.bot's handshake in each of its modes, Social Stream Ninja's two
join styles and its rows, Twitch with a token and its validation endpoint, and hostile input
(issue 12) that must cost one skipped frame or one replaced time, never the link."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backoff import backoff
from agent.errors import SourceError
from agent.journal import Journal
from agent.sources.jsonws import JsonWebSocketSource, parse_mapping
from agent.sources.ssn import SocialStreamSource
from agent.sources.streamerbot import StreamerbotSource, subscribe_request
from agent.sources.twitch import TwitchSource
from agent.vocab import ChatMessage, ModerationEvent, SourceState, SourceStatus
from tests.platform_fakes import (
    FakeSsnRelay,
    FakeStreamerbot,
    FakeTwitchIrc,
    FakeTwitchValidate,
    irc_privmsg,
    sb_kick_banned,
    sb_kick_chat,
    sb_twitch_banned,
    sb_twitch_chat,
    sb_youtube,
    ssn_row,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]


def fast() -> Callable[[], Iterator[float]]:
    return lambda: backoff(0.05, 2.0, 0.2, jitter=0.0)


async def read(source: Any, want: int, timeout: float = 15.0) -> list[ChatMessage]:
    got: list[ChatMessage] = []

    async def consume() -> None:
        async for message in source.messages():
            got.append(message)
            if len(got) >= want:
                return

    try:
        await asyncio.wait_for(consume(), timeout)
    finally:
        await source.close()
    return got


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


# ------------------------------------------------------------------------------ Streamer.bot

ALL_CHAT = [
    sb_twitch_chat("t1", "PogU what a play", "1001", "twitchfan"),
    sb_youtube("Message", "y1", "this is so wholesome", "UCviewer1", "Viewer One"),
    sb_youtube("SuperChat", "y2", "take my money, best stream ever", "UCviewer2", "Rich Fan"),
    sb_kick_chat("k1", "LETS GO", "777", "kickfan"),
]


def test_password_handshake_waits_for_authenticate_before_subscribe() -> None:
    """Authentication and Enforce on: Hello with salt/challenge, Authenticate, then Subscribe;
    chat of every platform arrives, filed under its own platform, via Streamer.bot."""
    moderation: list[ModerationEvent] = []
    with FakeStreamerbot(password="hunter2", enforce=True, events=[ALL_CHAT]) as bot:
        source = StreamerbotSource(
            channel="streamer",
            server_url=bot.url,
            password="hunter2",
            on_moderation=moderation.append,
            delays=fast(),
        )
        got = asyncio.run(read(source, 4))
    assert [r["request"] for r in bot.requests] == ["Authenticate", "Subscribe"]
    assert bot.requests[1]["events"] == subscribe_request()["events"]
    assert [(m.platform, m.message_id, m.text) for m in got] == [
        ("twitch", "t1", "PogU what a play"),
        ("youtube", "y1", "this is so wholesome"),
        ("youtube", "y2", "take my money, best stream ever"),  # a Super Chat's words
        ("kick", "k1", "LETS GO"),
    ]
    assert {m.via for m in got} == {"streamerbot"}
    assert [m.author for m in got] == ["1001", "UCviewer1", "UCviewer2", "777"]
    assert source.status().problem == ""


def test_subscription_covers_viewer_text_and_moderation_on_every_platform() -> None:
    events = subscribe_request()["events"]
    assert events["Twitch"] == [
        "ChatMessage", "Announcement", "ChatMessageDeleted", "UserBanned", "UserTimedOut"
    ]  # fmt: skip
    assert events["YouTube"] == ["Message", "SuperChat", "SuperSticker", "MessageDeleted",
                                 "UserBanned"]  # fmt: skip
    assert events["Kick"] == ["ChatMessage", "UserBanned", "UserTimedOut"]
    assert events["Trovo"] == ["ChatMessage"]


def test_authentication_on_but_not_enforced_goes_on_without_a_password() -> None:
    with FakeStreamerbot(password="set-in-streamerbot", events=[ALL_CHAT[:1]]) as bot:
        source = StreamerbotSource(channel="s", server_url=bot.url, delays=fast())
        got = asyncio.run(read(source, 1))
    assert [r["request"] for r in bot.requests] == ["GetInfo", "Subscribe"]
    assert [m.message_id for m in got] == ["t1"]


def test_enforced_authentication_without_a_password_says_how_to_set_one() -> None:
    async def main(url: str) -> StreamerbotSource:
        source = StreamerbotSource(channel="s", server_url=url, delays=fast())
        with pytest.raises(SourceError, match="captaflow secrets set streamerbot_password"):
            await asyncio.wait_for(anext(source.messages()), 15)
        return source

    with FakeStreamerbot(password="pw", enforce=True) as bot:
        source = asyncio.run(main(bot.url))
    assert source.status().state is SourceState.FAILED
    assert "Enforce on" in source.status().detail
    assert [r["request"] for r in bot.requests] == ["GetInfo"]  # no Subscribe after a refusal


def test_a_wrong_password_stops_with_one_clear_line() -> None:
    async def main(url: str) -> None:
        source = StreamerbotSource(channel="s", server_url=url, password="wrong", delays=fast())
        with pytest.raises(SourceError, match="refused the WebSocket password") as err:
            await asyncio.wait_for(anext(source.messages()), 15)
        assert "wrong" not in str(err.value)

    with FakeStreamerbot(password="right", enforce=True) as bot:
        asyncio.run(main(bot.url))
    assert [r["request"] for r in bot.requests] == ["Authenticate"]


def test_a_refused_subscription_is_a_visible_problem() -> None:
    statuses: list[SourceStatus] = []

    async def main(url: str) -> None:
        source = StreamerbotSource(
            channel="s", server_url=url, delays=fast(), on_status=statuses.append
        )
        consumer = asyncio.create_task(read(source, 1, timeout=30))
        await until(lambda: bool(source.status().problem))
        assert source.status().state is SourceState.CONNECTED
        await source.close()
        await consumer

    with FakeStreamerbot(subscribe_error="Invalid events") as bot:
        asyncio.run(main(bot.url))
    problems = [s.problem for s in statuses if s.problem]
    assert problems and "refused the chat subscription (Invalid events)" in problems[0]


def test_a_server_without_hello_is_subscribed_after_a_while() -> None:
    with FakeStreamerbot(send_hello=False, events=[ALL_CHAT[:1]]) as bot:
        source = StreamerbotSource(
            channel="s", server_url=bot.url, delays=fast(), hello_timeout=0.2, tick_interval=0.05
        )
        got = asyncio.run(read(source, 1))
    assert [r["request"] for r in bot.requests] == ["Subscribe"]
    assert got[0].message_id == "t1"


def test_bans_and_a_dropped_link_with_history_resent(tmp_path: Path) -> None:
    first = [
        sb_kick_chat("k1", "first", "777", "kickfan"),
        "{this is not json",
        b"\xff\xfe\x00",
        sb_kick_banned("777", "kickfan"),
        sb_twitch_banned("1001", "twitchfan"),
        sb_kick_chat("k2", "second", "778", "other"),
    ]
    second = [
        sb_kick_chat("k2", "second", "778", "other"),
        sb_kick_chat("k3", "third", "778", "other"),
    ]
    moderation: list[ModerationEvent] = []

    async def main(url: str, journal: Journal) -> tuple[list[ChatMessage], StreamerbotSource]:
        source = StreamerbotSource(
            channel="streamer", server_url=url, on_moderation=moderation.append, delays=fast()
        )
        session, _ = journal.begin_session("kick", "streamer", now=1.0)
        got = await read(source, 4)
        for message in got:
            journal.add(message, session_id=session, scorable=True)
        return got, source

    with (
        FakeStreamerbot(events=[first, second], hold_open=False) as bot,
        Journal.open(tmp_path / "j.sqlite3") as journal,
    ):
        got, source = asyncio.run(main(bot.url, journal))
        journal.flush()
        assert journal.stats().messages == 3 and journal.stats().duplicates == 1
    assert [m.message_id for m in got] == ["k1", "k2", "k2", "k3"]
    assert [(e.platform, e.kind, e.author) for e in moderation] == [
        ("kick", "clearchat", "777"),  # the same key as the viewer's ChatMessage.author
        ("twitch", "clearchat", "1001"),
    ]
    assert source.stats["frames_skipped"] == 2 and source.stats["connects"] == 2


def test_cant_reach_streamerbot_says_so_in_plain_words(caplog: pytest.LogCaptureFixture) -> None:
    statuses: list[SourceStatus] = []

    async def main() -> None:
        source = StreamerbotSource(
            channel="s",
            server_url="ws://127.0.0.1:9/",
            delays=lambda: backoff(0.05, 2.0, 0.1, jitter=0.0),
            on_status=statuses.append,
        )
        consumer = asyncio.create_task(read(source, 1, timeout=30))
        await until(lambda: sum(s.state is SourceState.RECONNECTING for s in statuses) >= 3)
        await source.close()
        await consumer

    with caplog.at_level(logging.INFO, logger="agent.sources"):
        asyncio.run(main())
    retries = [s for s in statuses if s.state is SourceState.RECONNECTING]
    assert retries[0].detail == (
        "can't reach Streamer.bot at ws://127.0.0.1:9/: is it running with its WebSocket "
        "server on?: retrying in 1 s"
    )
    assert [s.retry_in for s in retries[:3]] == [0.05, 0.1, 0.1]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not any("Errno" in line or "0.0 s" in line for line in lines)
    assert sum("retrying in" in line for line in lines) == len(retries)  # one line per retry


# --------------------------------------------------------------------------- Social Stream

SESSION = "AbC123xyz"
ROWS: list[Any] = [
    ssn_row(1, "hello from shorts", type_="youtubeshorts"),
    ssn_row(2, "followed", type_="twitch", event="new_follower"),  # an event: not chat
    ssn_row(3, "great stream!", type_="youtube", event="superchat", hasDonation="$5.00"),
    ssn_row(4, "thanks for the laughs", type_="tiktok", event="donation", hasDonation="5 roses"),
    ssn_row(5, "", type_="youtube", event="supersticker", hasDonation="$2.00"),  # no words
    ssn_row(6, 'so <b>good</b> <img alt=":heart:" src="x">', type_="kick",
            meta={"messageId": "kick-native-6"}),
]  # fmt: skip


def ssn_source(url: str, session: str | None, **options: Any) -> SocialStreamSource:
    return SocialStreamSource(
        channel="streamer", server_url=url, session=session, delays=fast(), **options
    )


def test_ssn_join_by_message_with_the_session_secret() -> None:
    statuses: list[SourceStatus] = []
    with FakeSsnRelay(SESSION, ROWS) as relay:
        source = ssn_source(relay.url, SESSION, on_status=statuses.append)
        got = asyncio.run(read(source, 4))
    assert relay.joins == [("message", {"join": SESSION, "in": 4})]
    assert [(m.platform, m.text, m.via) for m in got] == [
        ("youtube", "hello from shorts", "ssn"),  # youtubeshorts is YouTube
        ("youtube", "great stream!", "ssn"),  # a Super Chat's words are scored
        ("tiktok", "thanks for the laughs", "ssn"),  # a donation with a message
        ("kick", "so good :heart:", "ssn"),
    ]
    assert got[3].message_id == "kick-native-6"
    assert all(SESSION not in s.detail for s in statuses)


@pytest.mark.parametrize("path", [f"/join/{SESSION}/4", f"/join/{SESSION}", f"/join/{SESSION}/4/2"])
def test_ssn_join_by_url_still_works(path: str) -> None:
    with FakeSsnRelay(SESSION, ROWS[:1]) as relay:
        source = ssn_source(relay.url + path, None)
        got = asyncio.run(read(source, 1))
        assert SESSION not in source.url_for_log()
    kind, joined = relay.joins[0]
    assert kind == "path" and joined.startswith(f"/join/{SESSION}/4")
    assert got[0].text == "hello from shorts"


def test_ssn_session_as_a_whole_join_url_in_the_secret() -> None:
    with FakeSsnRelay(SESSION, ROWS[:1]) as relay:
        source = ssn_source("wss://io.socialstream.ninja", f"{relay.url}/join/{SESSION}/4")
        got = asyncio.run(read(source, 1))
    assert relay.joins[0] == ("path", f"/join/{SESSION}/4") and len(got) == 1


def test_ssn_without_a_session_says_how_to_set_it() -> None:
    with pytest.raises(SourceError, match="CAPTAFLOW_SSN_SESSION"):
        SocialStreamSource(channel="s", server_url=None, session=None)


# ------------------------------------------------------------------------------------ Twitch

TOKEN = "abcdefghijklmnopqrstuvwxyz0123"


def twitch(url: str, validate: str, token: str | None, nick: str | None = None) -> TwitchSource:
    return TwitchSource(
        "streamer", server_url=url, token=token, nick=nick, validate_url=validate, delays=fast()
    )


def test_twitch_logged_in_takes_the_login_scopes_and_expiry_from_validation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    info = {"login": "mybot", "scopes": ["chat:read", "chat:edit"], "expires_in": 5520838}
    with (
        FakeTwitchValidate({TOKEN: info}) as validate,
        FakeTwitchIrc("streamer", [irc_privmsg(1, "hi chat")], tokens={TOKEN: "mybot"}) as irc,
    ):
        source = twitch(irc.url, validate.url, f"oauth:{TOKEN}")
        with caplog.at_level(logging.INFO, logger="agent.sources.twitch"):
            got = asyncio.run(read(source, 1))
    assert validate.calls == [f"OAuth {TOKEN}"]
    assert f"PASS oauth:{TOKEN}" in irc.received[0] and "NICK mybot" in irc.received[0]
    assert got[0].message_id == "msg-1" and got[0].author == "1001"
    assert "token of mybot, scopes chat:read chat:edit, expires in 63 days" in caplog.text
    assert TOKEN not in caplog.text
    assert source.status().problem == ""


def test_twitch_expired_token_reads_anonymously_with_one_clear_line() -> None:
    with (
        FakeTwitchValidate({}) as validate,
        FakeTwitchIrc("streamer", [irc_privmsg(1, "still here")], tokens={}) as irc,
    ):
        source = twitch(irc.url, validate.url, TOKEN, nick="mybot")
        got = asyncio.run(read(source, 1))
    problem = source.status().problem
    assert problem.startswith("the Twitch token is expired or revoked (invalid access token)")
    assert "anonymously" in problem and "captaflow secrets set twitch_token" in problem
    assert not any(line.startswith("PASS") for line in irc.received[0])
    assert any(line.startswith("NICK justinfan") for line in irc.received[0])
    assert [m.text for m in got] == ["still here"]


def test_twitch_token_without_chat_read_reads_anonymously() -> None:
    info = {"login": "mybot", "scopes": ["user:read:email"], "expires_in": 3600}
    with (
        FakeTwitchValidate({TOKEN: info}) as validate,
        FakeTwitchIrc("streamer", [irc_privmsg(1, "x")], tokens={TOKEN: "mybot"}) as irc,
    ):
        source = twitch(irc.url, validate.url, TOKEN)
        asyncio.run(read(source, 1))
    assert "no chat:read scope" in source.status().problem
    assert not any(line.startswith("PASS") for line in irc.received[0])


# ---------------------------------------------------------- hostile input at the boundary


def test_irc_times_past_the_year_9999_are_replaced_and_counted() -> None:
    lines = [
        irc_privmsg(1, "far future", ts_ms=10**17),  # year ~3170843
        irc_privmsg(2, "before twitch", ts_ms=5),
        irc_privmsg(3, "fine"),
    ]
    with FakeTwitchIrc("streamer", lines, tokens={}) as irc:
        source = twitch(irc.url, "http://127.0.0.1:9/", None)
        got = asyncio.run(read(source, 3))
    assert [m.sent_at == m.received_at for m in got] == [True, True, False]
    assert source.status().times_replaced == 2


def test_json_numbers_nesting_and_sizes_cost_one_frame_or_one_time_never_the_link() -> None:
    deep = "[" * 200_000 + "]" * 200_000  # 400 KB of brackets, under the frame limit
    rows: list[Any] = [
        '{"type": "chat", "msg": "inf time", "t": 1e400}',
        '{"type": "chat", "msg": "huge time", "t": 1e300}',
        '{"type": "chat", "msg": "nan time", "t": NaN}',  # not JSON: a skipped frame
        deep,
        '{"type": "chat", "msg": "' + "x" * 100_000 + '", "who": "' + "n" * 5000 + '"}',
        json.dumps({"type": "chat", "msg": "last", "t": 1e3}),  # 1970: replaced
    ]
    mapping = parse_mapping(
        {"text": "msg", "time": "t", "author": "who", "where": "type=chat"}, channel="s"
    )

    class Feed(FakeSsnRelay):
        async def handle(self, ws: Any, n: int) -> None:
            for row in rows:
                await ws.send(row)
            await ws.wait_closed()

    with Feed("x", []) as feed:
        source = JsonWebSocketSource(feed.url, mapping=mapping, delays=fast())
        got = asyncio.run(read(source, 4))
    assert [m.text[:9] for m in got] == ["inf time", "huge time", "x" * 9, "last"]
    assert len(got[2].text) == 2000 and len(got[2].author) == 100
    assert all(m.sent_at == m.received_at for m in (got[0], got[1], got[3]))
    status = source.status()
    assert status.times_replaced == 3 and status.frames_skipped == 2
    assert source.stats["connects"] == 1  # one link throughout


def test_twitch_token_revoked_mid_stream_is_seen_by_the_periodic_check() -> None:
    info = {"login": "mybot", "scopes": ["chat:read"], "expires_in": 3600}
    with (
        FakeTwitchValidate({TOKEN: info}) as validate,
        FakeTwitchIrc("streamer", [irc_privmsg(1, "hello")], tokens={TOKEN: "mybot"}) as irc,
    ):
        source = TwitchSource(
            "streamer",
            server_url=irc.url,
            token=TOKEN,
            validate_url=validate.url,
            delays=fast(),
            revalidate_every=0.3,
        )

        async def main() -> list[ChatMessage]:
            consumer = asyncio.create_task(read(source, 2, timeout=20))
            await until(lambda: source.stats["messages"] >= 1)
            validate.tokens.clear()  # the streamer revoked the token on twitch.tv
            return await consumer

        got = asyncio.run(main())
    assert [m.message_id for m in got] == ["msg-1", "msg-1"]  # resent on the new link
    assert f"PASS oauth:{TOKEN}" in irc.received[0]
    assert not any(line.startswith("PASS") for line in irc.received[1])
    assert "expired or revoked" in source.status().problem


def test_ssn_relay_timing_links_out_never_grows_the_wait() -> None:
    """The relay "will timeout every minute or so" (README "Websocket API"): a link that was
    up long enough ends without growing the backoff, and the join is sent again each time."""

    class TimingOut(FakeSsnRelay):
        async def handle(self, ws: Any, n: int) -> None:
            self.joins.append(("message", json.loads(await ws.recv())))
            await ws.send(json.dumps(ssn_row(n, f"row {n}")))
            await asyncio.sleep(0.3)
            await ws.close()

    statuses: list[SourceStatus] = []
    with TimingOut(SESSION, []) as relay:
        source = ssn_source(relay.url, SESSION, on_status=statuses.append, stable_after=0.2)
        got = asyncio.run(read(source, 4))
    assert [m.text for m in got] == ["row 1", "row 2", "row 3", "row 4"]
    waits = [s.retry_in for s in statuses if s.state is SourceState.RECONNECTING]
    assert waits[:3] == [0.05, 0.05, 0.05]
    assert relay.joins == [("message", {"join": SESSION, "in": 4})] * len(relay.joins)


def test_twitch_logs_in_once_the_token_check_answers_again() -> None:
    """The validation endpoint is down at start (503): anonymous reading meanwhile, with the
    reason in the status; the periodic check then finds the token good and logs in."""
    info = {"login": "mybot", "scopes": ["chat:read"], "expires_in": 3600}
    with (
        FakeTwitchValidate({TOKEN: info}, fail_first=1) as validate,
        FakeTwitchIrc("streamer", [irc_privmsg(1, "hello")], tokens={TOKEN: "mybot"}) as irc,
    ):
        source = TwitchSource(
            "streamer",
            server_url=irc.url,
            token=TOKEN,
            validate_url=validate.url,
            delays=fast(),
            revalidate_every=0.3,
        )

        async def main() -> list[ChatMessage]:
            consumer = asyncio.create_task(read(source, 2, timeout=20))
            await until(lambda: "could not check the Twitch token" in source.status().problem)
            return await consumer

        got = asyncio.run(main())
    assert [m.message_id for m in got] == ["msg-1", "msg-1"]
    assert any(line.startswith("NICK justinfan") for line in irc.received[0])
    assert f"PASS oauth:{TOKEN}" in irc.received[1] and "NICK mybot" in irc.received[1]
    assert source.status().problem == ""
