"""The one WebSocket link shell under every WebSocket source (Twitch, Streamer.bot, Social
Stream Ninja, the generic `ws` source).

What a source knows lives in a sans-I/O `Session`, one per connection (as python-websockets'
protocol objects): it is fed frames (`receive_frame`) and the time (`tick`) and hands back
frames to send (`data_to_send`) and what happened (`events_received`). This shell only moves
frames between a session and a `websockets` connection, sleeps, and reports:

    reader     ws.recv() -> session.receive_frame() -> replies sent at once,
               ChatMessage -> bounded queue -> messages() -> the consumer
               ModerationEvent -> on_moderation
    ticker     every tick_interval: session.tick(now) -> keepalive PINGs, handshake deadlines

Backpressure: the queue holds `queue_size` messages; when a slow consumer lets it fill, the
reader waits before reading the socket again (nothing is dropped; TCP holds the rest), and
the ticker skips its deadlines meanwhile, since a link with unread data is not dead.

Session events the shell acts on (all other events are passed to `on_event`):

    Ready(detail)        the handshake is done: status CONNECTED with `detail`
    Problem(text)        the link works but needs the streamer: `status().problem`
    Fatal(text)          retrying cannot help: status FAILED, `messages()` raises SourceError
    Reconnect(reason)    the server asked us to come back (Twitch RECONNECT): at once, once
    Dead(reason)         the keepalive says the link is dead: close it and retry
    Skipped(reason)      one frame could not be used: counted in `status().frames_skipped`

Which failures are retried is one rule, `retryable(exc)`. Delays come from the pure
`agent.backoff.backoff()`; a fresh generator starts after a link that stayed up for
`stable_after` seconds. Each retry is one status change and one log line, in plain words:
"can't reach Streamer.bot at ws://127.0.0.1:8080/: is it running with its WebSocket server
on? retrying in 4 s", "no internet connection: retrying in 12 s".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from agent.backoff import backoff, say_seconds
from agent.errors import SourceError
from agent.sources.base import ModerationCallback, StatusCallback
from agent.vocab import ChatMessage, ModerationEvent, SourceState, SourceStatus

log = logging.getLogger(__name__)

CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INVALID_DATA = 1007
_LOGGED_SKIPS_PER_LINK = 5


# ------------------------------------------------------------------------ session events


@dataclass(frozen=True, slots=True)
class Ready:
    detail: str


@dataclass(frozen=True, slots=True)
class Problem:
    text: str  # "" clears a problem reported before


@dataclass(frozen=True, slots=True)
class Fatal:
    text: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    reason: str


@dataclass(frozen=True, slots=True)
class Dead:
    reason: str


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str


class Session(Protocol):
    """One connection's protocol, without I/O."""

    @property
    def times_replaced(self) -> int:
        """Platform times replaced by the receive time on this link (agent.sources.entry)."""
        ...

    def data_to_send(self) -> list[str]: ...

    def receive_frame(self, frame: str | bytes) -> None: ...

    def tick(self, now: float) -> None: ...

    def events_received(self) -> list[Any]: ...


# --------------------------------------------------------------------- the retry rule


def retryable(exc: BaseException) -> bool:
    """Whether waiting and connecting again can help after `exc`. The one rule for every
    WebSocket source:

    * not retried: a malformed address (InvalidURI), and an HTTP refusal of the upgrade that
      says the request itself is wrong (4xx other than 408 Request Timeout and 429 Too Many
      Requests): a wrong path or a refused session will not change by itself;
    * retried: everything the network or the server may get over: refused or reset
      connections, name lookups that fail (offline), timeouts, TLS errors, 5xx, closed links,
      handshakes that go wrong in other ways.
    """
    if isinstance(exc, InvalidURI):
        return False
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return not (400 <= status < 500) or status in (408, 429)
    return isinstance(exc, OSError | TimeoutError | WebSocketException)


def describe_failure(exc: BaseException, title: str, url: str, hint: str = "") -> str:
    """What went wrong, as a streamer reads it (no errno, no exception class names)."""
    if isinstance(exc, socket.gaierror):
        return "no internet connection (or a wrong host name)"
    if _refused(exc):
        return f"can't reach {title} at {url}" + (f": {hint}" if hint else "")
    if isinstance(exc, TimeoutError):
        return f"{title} at {url} did not answer in time"
    if isinstance(exc, ssl.SSLError):
        return f"secure connection to {title} failed (a proxy or the system clock?)"
    if isinstance(exc, InvalidStatus):
        return f"{title} at {url} refused the connection (HTTP {exc.response.status_code})"
    if isinstance(exc, ConnectionClosed):
        return describe_close(exc, title)
    if isinstance(exc, InvalidHandshake):
        return f"{url} does not speak WebSocket: is it the right address?"
    if isinstance(exc, OSError):
        return f"lost the network link to {title}"
    return f"{title}: {str(exc)[:120] or type(exc).__name__}"


_REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED, 10061, 1225})  # POSIX, WSAECONNREFUSED, Win


def _refused(exc: BaseException) -> bool:
    """Nothing listens there. asyncio wraps the per-address failures of a host with several
    addresses (localhost: ::1 and 127.0.0.1) in one plain OSError, so the text is read too."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    if not isinstance(exc, OSError) or isinstance(exc, socket.gaierror):
        return False
    text = str(exc).lower()
    return exc.errno in _REFUSED_ERRNOS or "connect call failed" in text or "refused" in text


def describe_close(exc: ConnectionClosed, title: str) -> str:
    frame = exc.sent if exc.sent is not None else exc.rcvd
    if frame is None:
        return f"the link to {title} dropped"
    if frame.code == CLOSE_MESSAGE_TOO_BIG:
        return f"{title} sent a frame larger than the limit (close 1009)"
    if frame.code == CLOSE_INVALID_DATA:
        return f"{title} sent invalid UTF-8 (close 1007)"
    who = "we closed" if exc.sent is not None and exc.rcvd is None else f"{title} closed"
    return f"{who} the link (close {frame.code}{': ' + frame.reason if frame.reason else ''})"


# ------------------------------------------------------------------------------ the shell


@dataclass(slots=True)
class _Outcome:
    """How one link ended, filled in by whichever task noticed first."""

    reason: str | None = None
    at_once: bool = False
    fatal: str | None = None


class _EndOfLink:
    pass


_END = _EndOfLink()


def default_delays() -> Iterator[float]:
    return backoff(initial=1.0, factor=2.0, maximum=60.0, jitter=0.5)


class WebSocketLink:
    """Connects, reads, keeps alive and reconnects for one source; see the module doc.

    `new_session()` is called for each connection. `prepare()` (optional) runs before each
    connection attempt (Twitch checks its token there); `periodic()` (optional) every
    `periodic_interval` seconds while a link is up, and a reason it returns reconnects now.
    `url_for_log` is what status lines and logs show instead of the URL (a URL may hold a
    secret)."""

    def __init__(
        self,
        *,
        name: str,
        title: str,
        url: str,
        new_session: Callable[[], Session],
        on_status: StatusCallback | None = None,
        on_moderation: ModerationCallback | None = None,
        on_event: Callable[[Any], None] | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
        periodic: Callable[[], Awaitable[str | None]] | None = None,
        periodic_interval: float = 3600.0,
        refused_hint: str = "",
        url_for_log: str | None = None,
        max_size: int = 1 << 20,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        compression: str | None = "deflate",
        tick_interval: float = 1.0,
        queue_size: int = 10_000,
        stable_after: float = 60.0,
        delays: Callable[[], Iterator[float]] = default_delays,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.title = title
        self.url = url
        self.shown_url = url_for_log if url_for_log is not None else url
        self._new_session = new_session
        self._on_status = on_status
        self._on_moderation = on_moderation
        self._on_event = on_event
        self._prepare = prepare
        self._periodic = periodic
        self._periodic_interval = periodic_interval
        self._refused_hint = refused_hint
        self._max_size = max_size
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._compression = compression
        self._tick_interval = tick_interval
        self._queue_size = queue_size
        self._stable_after = stable_after
        self._delays = delays
        self._clock = clock
        self._state = SourceStatus(SourceState.STOPPED)
        self._problem = ""
        self._closing = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._running = False
        self._backpressured = False
        self._times_replaced_before = 0  # by sessions of links that ended
        self._session: Session | None = None
        self._reported_counts = (0, 0)  # (times_replaced, frames_skipped) last reported
        self.stats = {
            "attempts": 0,
            "connects": 0,
            "links_lost": 0,
            "reconnect_requests": 0,
            "oversized_frames": 0,
            "invalid_utf8": 0,
            "frames": 0,
            "frames_skipped": 0,
            "messages": 0,
            "moderation_events": 0,
        }

    # -- ChatSource parts

    def status(self) -> SourceStatus:
        # A fresh immutable object each time: safe to read from the tray's thread.
        state = self._state
        return SourceStatus(
            state.state,
            state.detail,
            state.retry_in,
            problem=self._problem,
            times_replaced=self.times_replaced,
            frames_skipped=self.stats["frames_skipped"],
        )

    @property
    def times_replaced(self) -> int:
        session = self._session
        return self._times_replaced_before + (session.times_replaced if session else 0)

    def set_problem(self, text: str) -> None:
        """A problem that needs the streamer while the link goes on ("" clears it)."""
        if text == self._problem:
            return
        self._problem = text
        if text:
            log.warning("%s: %s", self.name, text)
        self._report()

    async def close(self) -> None:
        """Stop: end `messages()` promptly and close the link. Safe to call twice."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def messages(self) -> AsyncIterator[ChatMessage]:
        """Chat messages as they arrive, across reconnects, until `close()`."""
        if self._running:
            raise RuntimeError(f"{self.name}: messages() is already being iterated")
        self._running = True
        delays = self._delays()
        retry_now = False
        try:
            while not self._closing.is_set():
                if self._prepare is not None:
                    await self._prepare()
                outcome = _Outcome()
                connected_at: float | None = None
                async for item in self._run_link(outcome):
                    if isinstance(item, float):
                        connected_at = item
                        continue
                    yield item
                if outcome.fatal is not None:
                    self._set_state(SourceState.FAILED, outcome.fatal)
                    raise SourceError(outcome.fatal)
                if self._closing.is_set():
                    break
                stable = (
                    connected_at is not None and self._clock() - connected_at >= self._stable_after
                )
                if stable:
                    delays = self._delays()
                reason = outcome.reason or f"the link to {self.title} ended"
                # A server's own request to reconnect is honoured at once, but only after a
                # stable link or once in a row: a server that asks every second waits too.
                if outcome.at_once and (stable or not retry_now):
                    retry_now = True
                    self._set_state(SourceState.RECONNECTING, f"{reason}: reconnecting now")
                    continue
                retry_now = False
                delay = next(delays)
                self._set_state(
                    SourceState.RECONNECTING,
                    f"{reason}: retrying in {say_seconds(delay)}",
                    retry_in=delay,
                    log_level=logging.WARNING,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._running = False
            if self._state.state is not SourceState.FAILED:
                self._set_state(SourceState.STOPPED, "stopped")

    # -- one link

    async def _run_link(self, outcome: _Outcome) -> AsyncIterator[ChatMessage | float]:
        self.stats["attempts"] += 1
        self._set_state(
            SourceState.CONNECTING,
            f"connecting to {self.title} at {self.shown_url}",
            log_level=logging.DEBUG,  # the retry line already said it; success says more
        )
        try:
            ws = await connect(
                self.url,
                max_size=self._max_size,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                close_timeout=2,
                compression=self._compression,
            )
        except Exception as exc:
            self._failed(exc, outcome)
            return
        self._ws = ws
        if self._closing.is_set():
            await ws.close()
            self._ws = None
            return
        self.stats["connects"] += 1
        yield self._clock()  # tells messages() when this link came up
        session = self._new_session()
        self._session = session
        self._set_state(
            SourceState.CONNECTED, f"connected to {self.title}, starting", log_level=logging.DEBUG
        )
        queue: asyncio.Queue[ChatMessage | _EndOfLink] = asyncio.Queue(self._queue_size)
        reader = asyncio.create_task(self._read(ws, session, queue, outcome))
        ticker = asyncio.create_task(self._tick(ws, session, queue, outcome))
        helpers = [ticker]
        if self._periodic is not None:
            helpers.append(asyncio.create_task(self._every(ws, outcome)))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _EndOfLink):
                    break
                yield item
        finally:
            for task in (*helpers, reader):
                task.cancel()
            await asyncio.gather(*helpers, reader, return_exceptions=True)
            with contextlib.suppress(Exception):
                await ws.close()
            self._ws = None
            self._session = None
            self._times_replaced_before += session.times_replaced
            self._backpressured = False
            if not self._closing.is_set() and outcome.fatal is None and outcome.reason:
                self.stats["links_lost"] += 1

    def _failed(self, exc: BaseException, outcome: _Outcome) -> None:
        log.debug("%s: connecting failed", self.name, exc_info=True)
        what = describe_failure(exc, self.title, self.shown_url, self._refused_hint)
        if retryable(exc):
            outcome.reason = what
        elif isinstance(exc, InvalidURI):
            outcome.fatal = f"{self.shown_url} is not a WebSocket address: use ws://HOST:PORT/PATH"
        elif isinstance(exc, InvalidStatus):
            outcome.fatal = f"{what}: check the server address (server_url)"
        else:  # a bug of ours or of a library: one line here, the traceback with --debug
            outcome.fatal = f"{self.name} source stopped: {what}; see the log with --debug"

    async def _send_pending(self, ws: ClientConnection, session: Session) -> None:
        for frame in session.data_to_send():
            await ws.send(frame)

    async def _dispatch(
        self,
        session: Session,
        queue: asyncio.Queue[ChatMessage | _EndOfLink],
        outcome: _Outcome,
    ) -> None:
        for event in session.events_received():
            if isinstance(event, ChatMessage):
                self.stats["messages"] += 1
                if queue.full():
                    self._backpressured = True
                await queue.put(event)
                self._backpressured = False
            elif isinstance(event, ModerationEvent):
                self.stats["moderation_events"] += 1
                self._moderation(event)
            elif isinstance(event, Ready):
                self._set_state(SourceState.CONNECTED, event.detail)
            elif isinstance(event, Problem):
                self.set_problem(event.text)
            elif isinstance(event, Skipped):
                self.stats["frames_skipped"] += 1
                level = logging.DEBUG
                if self.stats["frames_skipped"] <= _LOGGED_SKIPS_PER_LINK:
                    level = logging.WARNING
                log.log(level, "%s: skipped a frame (%s)", self.name, event.reason)
            elif isinstance(event, Fatal):
                outcome.fatal = outcome.fatal or event.text
            elif isinstance(event, Reconnect):
                self.stats["reconnect_requests"] += 1
                if outcome.reason is None:
                    outcome.reason = event.reason
                    outcome.at_once = True
            elif isinstance(event, Dead):
                outcome.reason = outcome.reason or event.reason
            elif self._on_event is not None:
                self._on_event(event)

    def _ended(self, outcome: _Outcome) -> bool:
        return outcome.reason is not None or outcome.fatal is not None

    async def _read(
        self,
        ws: ClientConnection,
        session: Session,
        queue: asyncio.Queue[ChatMessage | _EndOfLink],
        outcome: _Outcome,
    ) -> None:
        try:
            await self._send_pending(ws, session)
            while not self._ended(outcome):
                frame = await ws.recv()
                self.stats["frames"] += 1
                session.receive_frame(frame)
                await self._send_pending(ws, session)  # replies (PONG) before anything slow
                await self._dispatch(session, queue, outcome)
        except ConnectionClosed as exc:
            code = exc.sent.code if exc.sent is not None else None
            if code == CLOSE_MESSAGE_TOO_BIG:
                self.stats["oversized_frames"] += 1
                self.stats["frames_skipped"] += 1
            elif code == CLOSE_INVALID_DATA:
                self.stats["invalid_utf8"] += 1
                self.stats["frames_skipped"] += 1
            if outcome.reason is None:
                outcome.reason = describe_close(exc, self.title)
        except (OSError, WebSocketException) as exc:
            if outcome.reason is None:
                outcome.reason = describe_failure(exc, self.title, self.shown_url)
        except Exception as exc:  # a session bug: stop with one line, not a hung link
            log.debug("%s: session failed", self.name, exc_info=True)
            outcome.fatal = outcome.fatal or (
                f"{self.name} source stopped: {type(exc).__name__}; see the log with --debug"
            )
        await queue.put(_END)

    async def _tick(
        self,
        ws: ClientConnection,
        session: Session,
        queue: asyncio.Queue[ChatMessage | _EndOfLink],
        outcome: _Outcome,
    ) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            self._report_counts()
            if self._backpressured:
                continue
            session.tick(self._clock())
            try:
                await self._send_pending(ws, session)
            except ConnectionClosed:
                return  # the reader says why
            await self._dispatch(session, queue, outcome)
            if self._ended(outcome):
                with contextlib.suppress(Exception):
                    await ws.close()
                return

    async def _every(self, ws: ClientConnection, outcome: _Outcome) -> None:
        """The source's periodic check while a link is up (Twitch: its token, hourly); a
        reason back means "reconnect now" (the source has changed how it logs in)."""
        assert self._periodic is not None
        while True:
            await asyncio.sleep(self._periodic_interval)
            reason = await self._periodic()
            if reason and outcome.reason is None:
                outcome.reason = reason
                outcome.at_once = True
                with contextlib.suppress(Exception):
                    await ws.close()
                return

    # -- reporting

    def _moderation(self, event: ModerationEvent) -> None:
        if self._on_moderation is None:
            return
        try:
            self._on_moderation(event)
        except Exception:  # a consumer's bug must not take the link down
            log.exception("%s: on_moderation callback failed", self.name)

    def _set_state(
        self,
        state: SourceState,
        detail: str = "",
        retry_in: float | None = None,
        log_level: int = logging.INFO,
    ) -> None:
        new = SourceStatus(state, detail, retry_in)
        if new == self._state:
            return
        self._state = new
        if state is SourceState.FAILED:
            log_level = logging.ERROR
        log.log(log_level, "%s: %s", self.name, detail or state.value)
        self._report()

    def _report(self) -> None:
        if self._on_status is None:
            return
        status = self.status()
        self._reported_counts = (status.times_replaced, status.frames_skipped)
        try:
            self._on_status(status)
        except Exception:
            log.exception("%s: on_status callback failed", self.name)

    def _report_counts(self) -> None:
        """Say new counts of replaced times and skipped frames (once a tick at most: a burst
        of bad frames is one status change, not one per frame)."""
        if (self.times_replaced, self.stats["frames_skipped"]) != self._reported_counts:
            self._report()


class LinkedSource:
    """The ChatSource part every WebSocket source shares: its `link` does the work."""

    link: WebSocketLink

    def status(self) -> SourceStatus:
        return self.link.status()

    def messages(self) -> AsyncIterator[ChatMessage]:
        return self.link.messages()

    async def close(self) -> None:
        await self.link.close()
