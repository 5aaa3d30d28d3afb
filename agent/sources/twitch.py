"""Twitch chat over WebSocket: a thin asyncio shell around `irc.TwitchChatProtocol`.

All chat logic (login, PING/PONG, keepalive deadlines, parsing) lives in the sans-I/O protocol
object; all "when to connect again" logic lives in `reconnect.ReconnectPolicy`. This module
only moves text between them and a `websockets` connection, and sleeps.

Tasks per link::

    reader     ws.recv() -> protocol.receive_text() -> PONGs sent at once,
               chat messages -> bounded queue -> messages() -> the consumer
    keepalive  every tick_interval: protocol.tick() -> our PING, or "link dead" -> close

Backpressure: the queue holds up to `queue_size` messages. When a slow consumer lets it
fill, the reader waits before reading the socket again, so nothing is dropped (websockets and
TCP then hold the rest). The keepalive task keeps running meanwhile but skips its dead-link
verdict while the reader is held back: a link with unread data is not dead.

Failures and what follows:

* connect errors, dropped links, close 1009 (frame over `max_frame_bytes`), close 1007
  (invalid UTF-8 in a text frame), keepalive timeouts: reconnect after the policy's backoff;
* Twitch's RECONNECT: reconnect at once (still within the attempt budget);
* login refused or channel suspended: status FAILED and `messages()` raises `SourceError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidURI,
    WebSocketException,
)
from websockets.uri import parse_uri

from agent import checks
from agent.errors import SourceError
from agent.sources.base import ChatSource, SecretSpec, SettingSpec, SourceConfig, SourceDescriptor
from agent.sources.irc import (
    DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT,
    Joined,
    JoinFailed,
    LinkDead,
    LoginFailed,
    MalformedLine,
    ModerationEvent,
    Reconnect,
    TwitchChatProtocol,
    mask_secret_line,
)
from agent.sources.reconnect import ReconnectPolicy
from agent.vocab import ChatMessage, SourceState, SourceStatus, validate_name

log = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "wss://irc-ws.chat.twitch.tv:443"
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INVALID_DATA = 1007
_LOGGED_MALFORMED_PER_LINK = 5


@dataclass(slots=True)
class _LinkOutcome:
    """How one link ended, filled in by whichever task noticed first."""

    reason: str | None = None
    reconnect_now: bool = False
    fatal: str | None = None


class _EndOfLink:
    pass


_END = _EndOfLink()


def describe_close(exc: ConnectionClosed) -> str:
    """One line for the log and the tray saying why a link closed."""
    frame = exc.sent if exc.sent is not None else exc.rcvd
    code = frame.code if frame is not None else 1006
    if code == CLOSE_MESSAGE_TOO_BIG:
        return "the server sent a frame larger than the limit (close 1009)"
    if code == CLOSE_INVALID_DATA:
        return "the server sent invalid UTF-8 (close 1007)"
    if frame is None:
        return "the connection dropped without a close frame"
    who = "we closed" if exc.sent is not None and exc.rcvd is None else "server closed"
    detail = f": {frame.reason}" if frame.reason else ""
    return f"{who} the connection (close {code}{detail})"


class TwitchSource:
    """Live Twitch chat of one channel; reconnects by itself until `close()`.

    `server_url` None means Twitch's own server. Anonymous read-only login by default; with
    `token` (an OAuth token for the chat scope) `nick` must be that account's login.
    Iterate `messages()` once; it raises `SourceError` only when retrying cannot help
    (login refused, channel suspended).
    """

    name = "twitch"

    def __init__(
        self,
        channel: str,
        *,
        server_url: str | None = None,
        token: str | None = None,
        nick: str | None = None,
        max_frame_bytes: int = 64 * 1024,
        on_status: Callable[[SourceStatus], None] | None = None,
        on_moderation: Callable[[ModerationEvent], None] | None = None,
        policy: ReconnectPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        pong_timeout: float = DEFAULT_PONG_TIMEOUT,
        tick_interval: float = 1.0,
        open_timeout: float = 10.0,
        queue_size: int = 10_000,
    ) -> None:
        try:
            self.channel = validate_name(channel, "Twitch channel")
            self._nick = validate_name(nick, "Twitch login") if nick else None
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        self._token = token.strip() if token and token.strip() else None
        if self._token is not None and self._nick is None:
            raise SourceError(
                "a Twitch OAuth token needs the account's login as nick: set it, "
                "or remove the token to read the chat anonymously"
            )
        server_url = server_url or DEFAULT_SERVER_URL
        try:
            parse_uri(server_url)
        except InvalidURI:
            raise SourceError(
                f"server URL {server_url!r} is not a WebSocket URL: use ws://host:port or "
                f"wss://host:port (the default is {DEFAULT_SERVER_URL})"
            ) from None
        self.server_url = server_url
        self._max_frame_bytes = max_frame_bytes
        self._on_status = on_status
        self._on_moderation = on_moderation
        self._policy = policy or ReconnectPolicy()
        self._clock = clock
        self._wall_clock = wall_clock
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        self._tick_interval = tick_interval
        self._open_timeout = open_timeout
        self._queue_size = queue_size
        self._status = SourceStatus(SourceState.STOPPED)
        self._closing = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._running = False
        self._backpressured = False
        self.stats = {
            "connects": 0,
            "attempts": 0,
            "links_lost": 0,
            "reconnect_requests": 0,
            "oversized_frames": 0,
            "invalid_utf8": 0,
            "binary_frames": 0,
            "malformed_lines": 0,
            "messages": 0,
            "moderation_events": 0,
        }

    # -- ChatSource interface

    def status(self) -> SourceStatus:
        # One immutable object swapped by assignment: safe to read from the tray's thread.
        return self._status

    async def close(self) -> None:
        """Stop: end `messages()` promptly and close the link. Safe to call twice."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def messages(self) -> AsyncIterator[ChatMessage]:
        """Chat messages as they arrive, across reconnects, until `close()`."""
        if self._running:
            raise RuntimeError("TwitchSource.messages() is already being iterated")
        self._running = True
        immediate = False
        last_reason = "starting"
        try:
            while not self._closing.is_set():
                delay = self._policy.next_delay(self._clock(), immediate=immediate)
                if delay > 0:
                    self._set_status(
                        SourceState.RECONNECTING,
                        f"reconnecting in {delay:.1f} s ({last_reason})",
                        retry_in=delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), delay)
                    if self._closing.is_set():
                        break
                outcome = _LinkOutcome()
                async for message in self._run_link(outcome):
                    yield message
                if outcome.fatal is not None:
                    self._set_status(SourceState.FAILED, outcome.fatal)
                    raise SourceError(outcome.fatal)
                immediate = outcome.reconnect_now
                last_reason = outcome.reason or "link ended"
        finally:
            self._running = False
            if self._status.state is not SourceState.FAILED:
                self._set_status(SourceState.STOPPED, "stopped")

    # -- one link

    async def _run_link(self, outcome: _LinkOutcome) -> AsyncIterator[ChatMessage]:
        self.stats["attempts"] += 1
        self._set_status(SourceState.CONNECTING, f"connecting to {self.server_url}")
        try:
            ws = await connect(
                self.server_url,
                max_size=self._max_frame_bytes,
                ping_interval=None,  # our IRC-level keepalive watches the chat itself
                open_timeout=self._open_timeout,
                close_timeout=2,
                compression=None,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            outcome.reason = f"cannot connect: {_describe_error(exc)}"
            log.warning("twitch: %s", outcome.reason)
            return
        self._ws = ws
        if self._closing.is_set():
            await ws.close()
            self._ws = None
            return
        self.stats["connects"] += 1
        self._policy.on_connected(self._clock())
        self._set_status(SourceState.CONNECTED, f"connected, joining #{self.channel}")
        protocol = TwitchChatProtocol(
            self.channel,
            nick=self._nick,
            token=self._token,
            now=self._wall_clock,
            keepalive_clock=self._clock,
            ping_interval=self._ping_interval,
            pong_timeout=self._pong_timeout,
        )
        queue: asyncio.Queue[ChatMessage | _EndOfLink] = asyncio.Queue(self._queue_size)
        reader = asyncio.create_task(self._read(ws, protocol, queue, outcome))
        keeper = asyncio.create_task(self._keepalive(ws, protocol, outcome))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _EndOfLink):
                    break
                yield item
        finally:
            keeper.cancel()
            reader.cancel()
            await asyncio.gather(keeper, reader, return_exceptions=True)
            with contextlib.suppress(Exception):
                await ws.close()
            self._ws = None
            self._backpressured = False
            # No reason means the consumer stopped iterating: not a lost link.
            if not self._closing.is_set() and outcome.fatal is None and outcome.reason:
                self.stats["links_lost"] += 1
                log.warning("twitch: link to #%s ended: %s", self.channel, outcome.reason)

    async def _send_pending(self, ws: ClientConnection, protocol: TwitchChatProtocol) -> None:
        for line in protocol.data_to_send():
            if log.isEnabledFor(logging.DEBUG):
                log.debug("twitch > %s", mask_secret_line(line))
            await ws.send(line + "\r\n")

    async def _read(
        self,
        ws: ClientConnection,
        protocol: TwitchChatProtocol,
        queue: asyncio.Queue[ChatMessage | _EndOfLink],
        outcome: _LinkOutcome,
    ) -> None:
        logged_malformed = 0
        try:
            await self._send_pending(ws, protocol)
            while outcome.reason is None and outcome.fatal is None:
                frame = await ws.recv()
                if isinstance(frame, bytes):
                    # Twitch sends text frames; a binary one is decoded leniently, not fatal.
                    self.stats["binary_frames"] += 1
                    frame = frame.decode("utf-8", errors="replace")
                protocol.receive_text(frame)
                await self._send_pending(ws, protocol)  # PONG before anything slow
                for event in protocol.events_received():
                    if isinstance(event, ChatMessage):
                        self.stats["messages"] += 1
                        if queue.full():
                            self._backpressured = True
                        await queue.put(event)
                        self._backpressured = False
                    elif isinstance(event, ModerationEvent):
                        self.stats["moderation_events"] += 1
                        self._report_moderation(event)
                    elif isinstance(event, Reconnect):
                        self.stats["reconnect_requests"] += 1
                        outcome.reason = "the server asked to reconnect (RECONNECT)"
                        outcome.reconnect_now = True
                    elif isinstance(event, LoginFailed):
                        who = f"as {self._nick}" if self._nick else "anonymously"
                        outcome.fatal = (
                            f"Twitch refused the login {who}: {event.reason}; check the OAuth "
                            f"token and login, or remove the token to read anonymously"
                        )
                    elif isinstance(event, JoinFailed):
                        outcome.fatal = (
                            f"cannot read Twitch channel #{event.channel}: {event.reason}; "
                            f"check the channel name"
                        )
                    elif isinstance(event, Joined):
                        self._set_status(SourceState.CONNECTED, f"reading #{event.channel}")
                    elif isinstance(event, MalformedLine):
                        self.stats["malformed_lines"] += 1
                        logged_malformed += 1
                        level = (
                            logging.WARNING
                            if logged_malformed <= _LOGGED_MALFORMED_PER_LINK
                            else logging.DEBUG
                        )
                        log.log(level, "twitch: skipped a bad line (%s)", event.error)
                    elif isinstance(event, LinkDead):
                        pass  # the keepalive task acts on protocol.dead
        except ConnectionClosed as exc:
            code = exc.sent.code if exc.sent is not None else None
            if code == CLOSE_MESSAGE_TOO_BIG:
                self.stats["oversized_frames"] += 1
            elif code == CLOSE_INVALID_DATA:
                self.stats["invalid_utf8"] += 1
            if outcome.reason is None:
                outcome.reason = describe_close(exc)
        except (OSError, WebSocketException) as exc:
            if outcome.reason is None:
                outcome.reason = f"link error: {_describe_error(exc)}"
        if outcome.fatal is not None:
            log.error("twitch: %s", outcome.fatal)
        await queue.put(_END)

    async def _keepalive(
        self, ws: ClientConnection, protocol: TwitchChatProtocol, outcome: _LinkOutcome
    ) -> None:
        connected_at = self._clock()
        stable_reported = False
        while True:
            await asyncio.sleep(self._tick_interval)
            now = self._clock()
            if not self._backpressured:
                protocol.tick(now)
            if protocol.dead:
                if outcome.reason is None:
                    outcome.reason = (
                        f"no data from the server for {now - connected_at:.0f} s"
                        if protocol.stats["lines"] == 0
                        else "the server stopped answering (keepalive PING unanswered)"
                    )
                await ws.close()
                return
            try:
                await self._send_pending(ws, protocol)
            except ConnectionClosed:
                return  # the reader reports why
            if not stable_reported and now - connected_at >= self._policy.stable_after:
                self._policy.on_stable(now)
                stable_reported = True

    # -- reporting

    def _report_moderation(self, event: ModerationEvent) -> None:
        if self._on_moderation is None:
            return
        try:
            self._on_moderation(event)
        except Exception:  # a consumer's bug must not take the link down
            log.exception("twitch: on_moderation callback failed")

    def _set_status(
        self, state: SourceState, detail: str = "", retry_in: float | None = None
    ) -> None:
        status = SourceStatus(state, detail, retry_in)
        if status == self._status:
            return
        self._status = status
        level = logging.WARNING if state in (SourceState.FAILED,) else logging.INFO
        log.log(level, "twitch: %s%s", state.value, f": {detail}" if detail else "")
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:
                log.exception("twitch: on_status callback failed")


def _describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


# ----------------------------------------------------------------------------- descriptor

VALIDATE_URL = "https://id.twitch.tv/oauth2/validate"
TOKEN_SECRET = SecretSpec(
    keyring="twitch_token",
    env="CAPTAFLOW_TWITCH_TOKEN",
    doc="Twitch OAuth token (chat:read scope), to read chat logged in",
)


def _build(config: SourceConfig) -> ChatSource:
    return TwitchSource(
        config.channel,
        server_url=config.server_url or None,
        token=config.secrets.get(TOKEN_SECRET.keyring),
        nick=config.options.get("login") or None,
        on_status=config.on_status,
        on_moderation=config.on_moderation,
    )


def _setup_problem(config: SourceConfig) -> str | None:
    if not config.channel:
        return 'no Twitch channel set: set channel = "name" under [source] (or --channel NAME)'
    return None


DESCRIPTOR = SourceDescriptor(
    kind="twitch",
    title="Twitch",
    summary="Twitch chat, read directly (anonymously, or logged in with a token)",
    default_url=DEFAULT_SERVER_URL,
    settings=(
        SettingSpec(
            "login",
            "",
            checks.name_or_empty("login"),
            "Your Twitch login, only with a token (CAPTAFLOW_TWITCH_TOKEN or the OS keyring);\n"
            "empty = ask Twitch which account the token belongs to.",
        ),
        SettingSpec(
            "validate_url",
            VALIDATE_URL,
            checks.text,
            "Where a Twitch token is checked (login, scopes, expiry); leave as it is.",
        ),
    ),
    secrets=(TOKEN_SECRET,),
    needs_channel=True,
    via="",
    build=_build,
    setup_problem=_setup_problem,
)
