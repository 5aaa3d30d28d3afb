"""TwitchSource against real WebSocket servers on 127.0.0.1 that play Twitch and misbehave.

Each test scripts the server per connection, then asserts the exact set of messages the
source delivered and that it kept running (it delivers what follows the misbehaviour and
says CONNECTED). Backoff and keepalive intervals are parameters, so the tests take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.backoff import backoff
from agent.errors import SourceError
from agent.sources.irc import ModerationEvent
from agent.sources.twitch import TwitchSource
from agent.vocab import ChatMessage, SourceState, SourceStatus

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

CHANNEL = "xqcow"


def privmsg(n: int, text: str | None = None) -> str:
    return (
        f"@id=m{n};user-id=u{n};tmi-sent-ts={1568505600000 + n} "
        f":user{n}!user{n}@user{n}.tmi.twitch.tv PRIVMSG #{CHANNEL} :{text or f'message {n}'}\r\n"
    )


class Peer:
    """One client connection as the scripted server sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.received: list[str] = []

    async def read_line(self) -> str:
        frame = await self.ws.recv()
        assert isinstance(frame, str)
        for line in frame.split("\r\n"):
            if line:
                self.received.append(line)
        return frame.rstrip("\r\n")

    async def login(self) -> None:
        """Answer the client's CAP/NICK/JOIN like Twitch until the channel is joined."""
        while True:
            line = await self.read_line()
            if line.startswith("NICK "):
                nick = line[5:]
                await self.ws.send(f":tmi.twitch.tv 001 {nick} :Welcome, GLHF!\r\n")
            elif line.startswith("JOIN #"):
                await self.ws.send(f"@room-id=1 :tmi.twitch.tv ROOMSTATE #{CHANNEL}\r\n")
                return

    async def send(self, *lines: str) -> None:
        for line in lines:
            await self.ws.send(line)

    async def idle(self) -> None:
        """Keep reading (and recording) what the client sends, answer nothing."""
        with contextlib.suppress(Exception):
            while True:
                await self.read_line()


Script = Callable[[Peer], Awaitable[None]]


class FakeTwitch:
    """A WebSocket server on 127.0.0.1; connection k runs scripts[min(k, last)]."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.peers: list[Peer] = []
        self.connected_at: list[float] = []
        self.disconnected_at: list[float] = []

    async def _handler(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        index = len(self.peers)
        self.peers.append(peer)
        self.connected_at.append(time.monotonic())
        try:
            await self.scripts[min(index, len(self.scripts) - 1)](peer)
        finally:
            self.disconnected_at.append(time.monotonic())

    @contextlib.asynccontextmanager
    async def running(self):  # type: ignore[no-untyped-def]
        async with serve(self._handler, "127.0.0.1", 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            yield f"ws://127.0.0.1:{port}"


UNREACHABLE = "http://127.0.0.1:9/validate"  # the discard port: nothing listens on loopback


def fast_delays(initial: float = 0.05, maximum: float = 0.2) -> Callable[[], Iterator[float]]:
    return lambda: backoff(initial, 2.0, maximum, jitter=0.0)


def make_source(url: str, **kwargs: object) -> TwitchSource:
    options: dict[str, object] = {
        "delays": fast_delays(),
        "ping_interval": 5.0,
        "pong_timeout": 5.0,
        "tick_interval": 0.05,
    }
    options.update(kwargs)
    return TwitchSource(CHANNEL, server_url=url, nick="justinfan123", **options)  # type: ignore[arg-type]


async def collect_ids(source: TwitchSource, expected: set[str], timeout: float = 15.0) -> list[str]:
    """Message ids in delivery order, until every expected id has arrived; then the source
    must still be up (CONNECTED) before the consumer stops it."""
    seen: list[str] = []

    async def consume() -> None:
        async with contextlib.aclosing(source.messages()) as stream:
            async for message in stream:
                seen.append(message.message_id)
                if expected <= set(seen):
                    assert source.status().state is SourceState.CONNECTED, source.status()
                    return

    await asyncio.wait_for(consume(), timeout)
    return seen


def ids(*numbers: int) -> set[str]:
    return {f"m{n}" for n in numbers}


async def hold(peer: Peer) -> None:
    """Script end for the last connection: stay up, like a healthy server."""
    await peer.idle()


# --------------------------------------------------------------------------- misbehaviour


def test_drop_mid_stream_then_resume() -> None:
    async def first(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(1, 6)))
        peer.ws.transport.abort()  # no close frame: the link just dies

    async def second(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(6, 11)))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(first, second)
        statuses: list[SourceStatus] = []
        async with server.running() as url:
            source = make_source(url, on_status=statuses.append)
            seen = await collect_ids(source, ids(*range(1, 11)))
            assert set(seen) == ids(*range(1, 11)) and len(seen) == 10
            assert source.stats["links_lost"] == 1 and len(server.peers) == 2
            states = [s.state for s in statuses]
            assert SourceState.RECONNECTING in states
            retry = next(s for s in statuses if s.state is SourceState.RECONNECTING)
            assert retry.retry_in == pytest.approx(0.05) and "retrying in 1 s" in retry.detail
            await source.close()
            assert source.status().state is SourceState.STOPPED

    asyncio.run(main())


def test_history_resent_after_reconnect_is_deduplicated_by_the_journal(tmp_path: Path) -> None:
    from agent.journal import Journal

    async def first(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(1, 7)))
        await peer.ws.close(1011, "restarting")

    async def second(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(4, 11)))  # 4-6 again, then new ones
        await peer.idle()

    async def main() -> list[ChatMessage]:
        server = FakeTwitch(first, second)
        delivered: list[ChatMessage] = []
        async with server.running() as url:
            source = make_source(url)

            async def consume() -> None:
                async for message in source.messages():
                    delivered.append(message)
                    if len(delivered) == 13:
                        await source.close()

            await asyncio.wait_for(consume(), 15)
        return delivered

    delivered = asyncio.run(main())
    # The source may repeat what the server repeats; dedup is the journal's job.
    assert [m.message_id for m in delivered].count("m5") == 2
    assert {m.message_id for m in delivered} == ids(*range(1, 11))
    with Journal.open(tmp_path / "journal.sqlite") as journal:
        session, _ = journal.begin_session("twitch", CHANNEL, now=time.time())
        added = [journal.add(m, session_id=session, scorable=True) for m in delivered]
        assert sum(added) == 10 and journal.stats().duplicates == 3
    # An agent restart on the same journal sees the same messages again: all duplicates.
    with Journal.open(tmp_path / "journal.sqlite") as journal:
        session, resumed = journal.begin_session("twitch", CHANNEL, now=time.time())
        assert resumed
        assert not any(journal.add(m, session_id=session, scorable=True) for m in delivered)
        assert journal.stats().messages == 10


def test_reconnect_command_is_obeyed_at_once() -> None:
    async def first(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(1, 4)), ":tmi.twitch.tv RECONNECT\r\n")
        await peer.idle()

    async def second(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(4, 7)))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(first, second)
        async with server.running() as url:
            # A backoff of 30 s would time the test out: RECONNECT must skip it.
            source = make_source(url, delays=fast_delays(30.0, 60.0))
            seen = await collect_ids(source, ids(*range(1, 7)), timeout=10)
            assert set(seen) == ids(*range(1, 7))
            assert source.stats["reconnect_requests"] == 1 and len(server.peers) == 2
            await source.close()

    asyncio.run(main())


def test_silent_server_is_noticed_by_the_keepalive() -> None:
    async def silent(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(1, 4)))
        await peer.idle()  # reads our PING, never answers

    async def healthy(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(4, 7)))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(silent, healthy)
        async with server.running() as url:
            source = make_source(url, ping_interval=0.3, pong_timeout=0.3)
            seen = await collect_ids(source, ids(*range(1, 7)))
            assert set(seen) == ids(*range(1, 7))
            assert "PING :tmi.twitch.tv" in server.peers[0].received
            assert len(server.peers) == 2
            await source.close()

    asyncio.run(main())


def test_server_ping_gets_pong_while_the_consumer_is_slow() -> None:
    pong_seen = asyncio.Event()

    async def pinger(peer: Peer) -> None:
        await peer.login()
        await peer.send(*(privmsg(n) for n in range(1, 51)), "PING :tmi.twitch.tv\r\n")
        while "PONG :tmi.twitch.tv" not in peer.received:
            await peer.read_line()
        pong_seen.set()
        await peer.send(privmsg(51))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(pinger)
        async with server.running() as url:
            source = make_source(url)
            seen: list[str] = []
            async with contextlib.aclosing(source.messages()) as stream:
                first = await asyncio.wait_for(anext(stream), 10)
                seen.append(first.message_id)
                # The consumer stalls; the PONG must still go out.
                await asyncio.wait_for(pong_seen.wait(), 5)
                while len(seen) < 51:
                    seen.append((await asyncio.wait_for(anext(stream), 10)).message_id)
            assert set(seen) == ids(*range(1, 52))
            await source.close()

    asyncio.run(main())


def test_malformed_lines_are_skipped_without_reconnecting() -> None:
    garbage = [
        "@only-tags-no-command\r\n",
        ":prefix-only\r\n",
        "@id=x;user-id= :a!a@a PRIVMSG\r\n",
        "\x00\x01\x02 nonsense\r\n",
        "@=;;== :weird 999999 x\r\n",
        "PRIVMSG #otherchannel :not ours\r\n",
    ]

    async def script(peer: Peer) -> None:
        await peer.login()
        await peer.send(privmsg(1), *garbage, privmsg(2), "".join(garbage) + privmsg(3))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(script)
        async with server.running() as url:
            source = make_source(url)
            seen = await collect_ids(source, ids(1, 2, 3))
            assert seen == ["m1", "m2", "m3"]
            assert source.stats["malformed_lines"] >= 6
            assert len(server.peers) == 1
            await source.close()

    asyncio.run(main())


def test_invalid_utf8_text_frame_reconnects_and_binary_frame_is_decoded() -> None:
    async def first(peer: Peer) -> None:
        await peer.login()
        await peer.send(privmsg(1))
        # A binary frame with a broken byte: decoded with replacement, still delivered.
        await peer.ws.send(privmsg(2, "caf\xe9").encode("latin-1"))
        # A text frame that is not UTF-8: websockets closes the link with 1007.
        await peer.ws.send(privmsg(99, "bad \xff").encode("latin-1"), text=True)
        await peer.idle()

    async def second(peer: Peer) -> None:
        await peer.login()
        await peer.send(privmsg(3))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(first, second)
        async with server.running() as url:
            source = make_source(url)
            texts: dict[str, str] = {}

            async def consume() -> None:
                async with contextlib.aclosing(source.messages()) as stream:
                    async for message in stream:
                        texts[message.message_id] = message.text
                        if "m3" in texts:
                            return

            await asyncio.wait_for(consume(), 15)
            assert set(texts) == ids(1, 2, 3)
            assert texts["m2"] == "caf\ufffd"
            assert source.stats["invalid_utf8"] == 1 and source.stats["binary_frames"] == 1
            assert len(server.peers) == 2
            await source.close()

    asyncio.run(main())


def test_oversized_frame_closes_the_link_and_the_source_reconnects() -> None:
    async def first(peer: Peer) -> None:
        await peer.login()
        await peer.send(privmsg(1))
        await peer.send(privmsg(98, "x" * 10_000))  # over the 4 KiB limit
        await peer.send(privmsg(99))  # never arrives: the link is closed by then
        await peer.idle()

    async def second(peer: Peer) -> None:
        await peer.login()
        await peer.send(privmsg(2))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(first, second)
        async with server.running() as url:
            source = make_source(url, max_frame_bytes=4096)
            seen = await collect_ids(source, ids(1, 2))
            assert seen == ["m1", "m2"]
            assert source.stats["oversized_frames"] == 1 and len(server.peers) == 2
            await source.close()

    asyncio.run(main())


def test_anonymous_login_refused_fails_once_with_a_clear_reason() -> None:
    async def refuse(peer: Peer) -> None:
        while not any(line.startswith("NICK") for line in peer.received):
            await peer.read_line()
        await peer.send(":tmi.twitch.tv NOTICE * :Login unsuccessful\r\n")
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(refuse)
        async with server.running() as url:
            source = make_source(url)
            with pytest.raises(SourceError, match="refused the anonymous login"):
                await asyncio.wait_for(anext(source.messages()), 10)
            assert source.status().state is SourceState.FAILED
            assert "Login unsuccessful" in source.status().detail
            assert len(server.peers) == 1

    asyncio.run(main())


def test_a_refused_token_falls_back_to_reading_anonymously() -> None:
    """Twitch's answer to a bad token (https://dev.twitch.tv/docs/chat/irc/#authenticating:
    `:tmi.twitch.tv NOTICE * :Login authentication failed`) is one problem line, then the
    same channel is read anonymously."""

    async def refuse(peer: Peer) -> None:
        while not any(line.startswith("NICK") for line in peer.received):
            await peer.read_line()
        await peer.send(":tmi.twitch.tv NOTICE * :Login authentication failed\r\n")
        await peer.idle()

    async def anonymous(peer: Peer) -> None:
        await peer.login()
        await peer.send(privmsg(1))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(refuse, anonymous)
        async with server.running() as url:
            source = TwitchSource(
                CHANNEL,
                server_url=url,
                nick="mybot",
                token="secret123",
                validate_url=UNREACHABLE,
                delays=fast_delays(),
                tick_interval=0.05,
            )
            assert await collect_ids(source, ids(1)) == ["m1"]
            problem = source.status().problem
            assert "refused the token" in problem and "anonymously" in problem
            assert "secret123" not in problem
            assert "PASS oauth:secret123" in server.peers[0].received
            assert not any(line.startswith("PASS") for line in server.peers[1].received)
            assert any(line.startswith("NICK justinfan") for line in server.peers[1].received)
            await source.close()

    asyncio.run(main())


def test_token_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await peer.send(privmsg(1))
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(script)
        async with server.running() as url:
            source = TwitchSource(
                CHANNEL,
                server_url=url,
                nick="mybot",
                token="oauth:topsecret",
                validate_url=UNREACHABLE,
                delays=fast_delays(),
            )
            assert await collect_ids(source, ids(1)) == ["m1"]
            await source.close()

    with caplog.at_level("DEBUG", logger="agent.sources.twitch"):
        asyncio.run(main())
    assert "PASS ***" in caplog.text and "topsecret" not in caplog.text


def test_a_broken_server_gets_ever_longer_waits() -> None:
    async def slam(peer: Peer) -> None:
        peer.ws.transport.abort()

    async def main() -> None:
        server = FakeTwitch(slam)
        async with server.running() as url:
            statuses: list[SourceStatus] = []
            source = make_source(url, delays=fast_delays(0.01, 0.04), on_status=statuses.append)
            consumer = asyncio.create_task(collect_ids(source, ids(1)))
            while source.stats["attempts"] < 4:
                await asyncio.sleep(0.01)
            await source.close()
            await asyncio.wait_for(consumer, 5)  # close() ends the backoff sleep at once
        waits = [s.retry_in for s in statuses if s.state is SourceState.RECONNECTING]
        assert waits[:3] == [0.01, 0.02, 0.04]  # a link that drops at once is not stable
        assert all("retrying in 1 s" in s.detail for s in statuses if s.retry_in)

    asyncio.run(main())


def test_connection_refused_is_retried_with_backoff() -> None:
    async def main() -> None:
        # A port nobody listens on: every attempt fails at connect.
        async with serve(lambda ws: ws.close(), "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
        statuses: list[SourceStatus] = []
        source = make_source(
            f"ws://127.0.0.1:{port}",
            delays=fast_delays(0.01, 0.02),
            on_status=statuses.append,
        )
        consumer = asyncio.create_task(collect_ids(source, ids(1)))
        while source.stats["attempts"] < 3:
            await asyncio.sleep(0.01)
        await source.close()
        await asyncio.wait_for(consumer, 5)
        assert any(
            s.detail.startswith(f"can't reach Twitch at ws://127.0.0.1:{port}: retrying in")
            for s in statuses
        )
        assert not any("Errno" in s.detail or "0.0 s" in s.detail for s in statuses)

    asyncio.run(main())


def test_moderation_events_go_to_the_callback() -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await peer.send(
            privmsg(1),
            f"@login=user1;target-msg-id=m1 :tmi.twitch.tv CLEARMSG #{CHANNEL} :message 1\r\n"
            f"@target-user-id=u1;tmi-sent-ts=1568505601000 :tmi.twitch.tv CLEARCHAT "
            f"#{CHANNEL} :user1\r\n",
            privmsg(2),
        )
        await peer.idle()

    async def main() -> None:
        server = FakeTwitch(script)
        events: list[ModerationEvent] = []
        async with server.running() as url:
            source = make_source(url, on_moderation=events.append)
            assert await collect_ids(source, ids(1, 2)) == ["m1", "m2"]
            await source.close()
        assert [(e.kind, e.message_id, e.author) for e in events] == [
            ("clearmsg", "m1", "user1"),
            ("clearchat", None, "u1"),
        ]

    asyncio.run(main())


def test_settings_are_checked_before_connecting() -> None:
    with pytest.raises(SourceError, match="channel"):
        TwitchSource("no spaces allowed")
    with pytest.raises(SourceError, match="server URL"):
        TwitchSource(CHANNEL, server_url="http://example.com")
    assert TwitchSource("#XQCow").channel == "xqcow"
