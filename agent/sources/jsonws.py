"""JSON over WebSocket: the link shared by the Streamer.bot, Social Stream Ninja and generic
`ws` sources, and the generic source itself (a configurable field mapping).

The link (`WebSocketJsonSource`) is a thin shell around pure parsing functions:

* connects, runs a source-specific handshake (`on_open`: subscribe, join, authenticate),
  then reads frames in its own task, so a slow consumer never stalls the socket's keepalive
  (websockets answers pings and sends ours in the background as long as frames are read);
  parsed messages wait in a bounded queue;
* frames are decoded as UTF-8 JSON; a frame that is not (invalid UTF-8, not JSON) is counted
  in `stats.malformed` and skipped, never raised;
* frames larger than `max_size` make websockets close the link (code 1009); that counts as a
  drop: `stats.drops` goes up and we reconnect;
* reconnects follow `agent.sources.reconnect.ReconnectPolicy` (exponential backoff with full
  jitter, reset after a stable link, a budget of attempts per minute); every state change goes
  to `on_status` and the log.

Generic field mapping (`--source ws`, settings `[source.mapping]`): each of `text`, `id`,
`author`, `time`, `platform`, `channel` is a dotted path into the JSON object (`data.user.name`,
`items.0.text`); a value starting with `=` is a constant (`platform = "=youtube"`). `where` is
an optional `path=value` filter (`where = "type=chat"`): other objects are ignored. A frame
holding a JSON array is read as several objects. Without `id` a content hash is the key;
without `time` the receive time is used; a number time may be seconds or milliseconds.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.checks import Expected
from agent.errors import SettingsError, SourceError
from agent.sources.base import ChatSource, SettingSpec, SourceConfig, SourceDescriptor
from agent.sources.reconnect import ReconnectPolicy
from agent.sources.replay import BadLine, parse_time
from agent.vocab import (
    PLATFORMS,
    ChatMessage,
    SourceState,
    SourceStatus,
    content_message_id,
    validate_name,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 1 << 20  # chat events are a few KiB; a MiB is garbage or an attack
QUEUE_LIMIT = 100_000  # messages waiting for the consumer before the reader waits too

_END = object()


@dataclass
class LinkStats:
    connects: int = 0
    drops: int = 0
    frames: int = 0
    malformed: int = 0
    messages: int = 0
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (clock, state detail)


def platform_name(value: Any) -> str:
    """A platform name from a source's wording ("Twitch", "youtube", "kick"), else "other"."""
    name = str(value or "").strip().lower()
    return name if name in PLATFORMS else "other"


def get_path(obj: Any, path: str) -> Any:
    """`a.b.0.c` into nested dicts and lists; None where it does not lead anywhere."""
    current = obj
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current


def scalar_text(value: Any) -> str | None:
    """A JSON scalar as text (None for missing, objects and arrays)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def time_or(value: Any, fallback: float) -> float:
    if value is None or value == "":
        return fallback
    try:
        return parse_time(value)
    except BadLine:
        return fallback


# ------------------------------------------------------------------------ generic mapping

MAPPING_KEYS = ("text", "id", "author", "time", "platform", "channel", "where")


@dataclass(frozen=True, slots=True)
class FieldMapping:
    text: str = "text"
    id: str | None = None
    author: str | None = None
    time: str | None = None
    platform: str = "=other"
    channel: str = "=unknown"
    where: tuple[str, str] | None = None


_DOTTED = re.compile(r"[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*")


def mapping_value(value: Any, from_cli: bool = False) -> str:
    """One mapping value: a dotted path into the JSON (`data.user.name`) or `=constant`."""
    if not isinstance(value, str):
        raise Expected('a dotted path such as "data.user.name", or "=constant", in double quotes')
    value = value.strip()
    if value.startswith("="):
        if len(value) > 1 and len(value) <= 200:
            return value
        raise Expected('a constant after "=", for example "=youtube"')
    if not _DOTTED.fullmatch(value):
        raise Expected('a dotted path such as "data.user.name", or "=constant"')
    return value


def where_filter(value: Any, from_cli: bool = False) -> str:
    """The `where` filter: `path=value` (`type=chat`); only matching objects are read."""
    expected = 'a filter "path=value", for example "type=chat"'
    if not isinstance(value, str):
        raise Expected(expected)
    path, sep, wanted = value.strip().partition("=")
    if not sep or not _DOTTED.fullmatch(path.strip()) or not wanted.strip():
        raise Expected(expected)
    return f"{path.strip()}={wanted.strip()}"


def mapping_table(value: Any, from_cli: bool = False) -> dict[str, str]:
    """The whole `[source.mapping]` table; an error names the key that is wrong."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Expected("a table [source.mapping] of keys " + ", ".join(MAPPING_KEYS))
    checked: dict[str, str] = {}
    for key, item in value.items():
        if key not in MAPPING_KEYS:
            raise Expected(f"mapping keys among {', '.join(MAPPING_KEYS)}, not {key!r}")
        try:
            checked[key] = where_filter(item) if key == "where" else mapping_value(item)
        except Expected as exc:
            raise Expected(f"for mapping key {key!r}: {exc}") from None
    return checked


def parse_mapping(mapping: Mapping[str, str], *, channel: str) -> FieldMapping:
    """Settings -> FieldMapping; unknown keys and empty paths are a SettingsError."""
    unknown = sorted(set(mapping) - set(MAPPING_KEYS))
    if unknown:
        raise SettingsError(
            f"unknown field mapping key {unknown[0]!r}: use {', '.join(MAPPING_KEYS)}"
        )
    values = {k: str(v).strip() for k, v in mapping.items()}
    for key, value in values.items():
        if not value or value == "=":
            raise SettingsError(f"field mapping {key!r} is empty: give a dotted path or =constant")
    where = None
    if "where" in values:
        path, sep, expected = values["where"].partition("=")
        if not sep or not path:
            raise SettingsError(
                f"field mapping where={values['where']!r} is not valid: use 'path=value'"
            )
        where = (path.strip(), expected.strip())
    return FieldMapping(
        text=values.get("text", "text"),
        id=values.get("id"),
        author=values.get("author"),
        time=values.get("time"),
        platform=values.get("platform", "=other"),
        channel=values.get("channel", f"={channel or 'unknown'}"),
        where=where,
    )


def _mapped(obj: Any, path: str | None) -> Any:
    if path is None:
        return None
    if path.startswith("="):
        return path[1:]
    return get_path(obj, path)


def parse_mapped_object(
    obj: Any, mapping: FieldMapping, *, received_at: float
) -> ChatMessage | None:
    """One JSON object through the field mapping; None if it is not a chat message."""
    if not isinstance(obj, dict):
        return None
    if mapping.where is not None:
        path, expected = mapping.where
        if scalar_text(get_path(obj, path)) != expected:
            return None
    text = scalar_text(_mapped(obj, mapping.text))
    if text is None or not text.strip():
        return None
    platform = platform_name(_mapped(obj, mapping.platform))
    channel_value = scalar_text(_mapped(obj, mapping.channel)) or "unknown"
    try:
        channel = validate_name(channel_value)
    except ValueError:
        channel = "unknown"
    author = scalar_text(_mapped(obj, mapping.author)) or ""
    sent_at = time_or(_mapped(obj, mapping.time), received_at)
    raw_id = scalar_text(_mapped(obj, mapping.id))
    message_id = raw_id or content_message_id(platform, channel, author, sent_at, text)
    return ChatMessage(platform, channel, message_id, author, text, sent_at, received_at)


def decode_frame(frame: str | bytes) -> Any:
    """A frame's JSON value, or raise ValueError (invalid UTF-8 or not JSON)."""
    text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
    return json.loads(text)


# ------------------------------------------------------------------------------ the link

Sleep = Callable[[float], Awaitable[Any]]


class WebSocketJsonSource(abc.ABC):
    """A ChatSource over a JSON WebSocket feed. Subclasses set `name`, implement `parse`
    (one decoded JSON value -> messages) and may override `on_open` (handshake)."""

    name = "ws"

    def __init__(
        self,
        url: str,
        *,
        on_status: Callable[[SourceStatus], None] | None = None,
        policy: ReconnectPolicy | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        open_timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.stats = LinkStats()
        self.policy = policy or ReconnectPolicy()
        self.max_size = max_size
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._clock = clock
        self._wall = wall_clock
        self._on_status = on_status
        self._status = SourceStatus(SourceState.STOPPED)
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_LIMIT)
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- hooks ---------------------------------------------------------------------------

    async def on_open(self, ws: ClientConnection) -> None:  # noqa: B027 (optional hook)
        """Handshake after connecting (subscribe, join, authenticate). Default: nothing."""

    @abc.abstractmethod
    def parse(self, value: Any, received_at: float) -> Iterable[ChatMessage]:
        """The chat messages one decoded frame holds (none for other events)."""

    # -- ChatSource ----------------------------------------------------------------------

    def status(self) -> SourceStatus:
        return self._status

    def _set_status(
        self, state: SourceState, detail: str = "", retry_in: float | None = None
    ) -> None:
        self._status = SourceStatus(state, detail, retry_in)
        self.stats.timeline.append((self._clock(), f"{state.value} {detail}".strip()))
        log.info("%s source: %s %s", self.name, state.value, detail)
        if self._on_status is not None:
            self._on_status(self._status)

    async def messages(self) -> AsyncIterator[ChatMessage]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-link")
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        self._closed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._finish()
        if self._status.state is not SourceState.FAILED:
            self._set_status(SourceState.STOPPED, "closed")

    def _finish(self) -> None:
        # The consumer must always learn that the stream ended, even with a full queue.
        while True:
            try:
                self._queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    # -- the connection loop --------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed.is_set():
                delay = self.policy.next_delay(self._clock())
                if delay > 0:
                    self._set_status(
                        SourceState.RECONNECTING, f"reconnecting in {delay:.1f} s", retry_in=delay
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), delay)
                    if self._closed.is_set():
                        return
                await self._connect_once()
        except SourceError as exc:
            self._set_status(SourceState.FAILED, str(exc))
            await self._queue.put(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never a traceback to the user; the runtime shows one line
            log.debug("%s source failed", self.name, exc_info=True)
            error = SourceError(f"{self.name} source stopped: {exc!r}; see the log with --debug")
            self._set_status(SourceState.FAILED, str(error))
            await self._queue.put(error)

    async def _connect_once(self) -> None:
        self._set_status(SourceState.CONNECTING, self.url_for_log())
        try:
            async with connect(
                self.url,
                max_size=self.max_size,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=2,
            ) as ws:
                self.stats.connects += 1
                await self.on_open(ws)
                self.policy.on_connected(self._clock())
                self._set_status(SourceState.CONNECTED, self.url_for_log())
                async for frame in ws:
                    await self._handle_frame(frame)
                self.stats.drops += 1
                log.warning("%s source: the server closed the link", self.name)
        except InvalidURI as exc:
            raise SourceError(
                f"{self.url_for_log()} is not a WebSocket address: use ws://HOST:PORT/PATH "
                "(--server-url)"
            ) from exc
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as exc:
            self.stats.drops += 1
            log.warning("%s source: link lost: %s", self.name, exc or type(exc).__name__)

    async def _handle_frame(self, frame: str | bytes) -> None:
        self.stats.frames += 1
        try:
            value = decode_frame(frame)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self.stats.malformed += 1
            log.debug("%s source: malformed frame skipped: %r", self.name, frame[:200])
            return
        received_at = self._wall()
        try:
            parsed = list(self.parse(value, received_at))
        except SourceError:
            raise
        except Exception:
            # A payload shape we did not foresee: skip it, never stop reading chat.
            self.stats.malformed += 1
            log.debug("%s source: unusable payload skipped", self.name, exc_info=True)
            return
        for message in parsed:
            self.stats.messages += 1
            await self._queue.put(message)

    def url_for_log(self) -> str:
        return self.url


class JsonWebSocketSource(WebSocketJsonSource):
    """`--source ws`: any JSON feed, read through a `FieldMapping`."""

    name = "ws"

    def __init__(self, url: str, *, mapping: FieldMapping, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.mapping = mapping

    def parse(self, value: Any, received_at: float) -> Iterable[ChatMessage]:
        items = value if isinstance(value, list) else [value]
        for item in items:
            message = parse_mapped_object(item, self.mapping, received_at=received_at)
            if message is not None:
                yield message


# ----------------------------------------------------------------------------- descriptor


def _build(config: SourceConfig) -> ChatSource:
    if not config.server_url:
        raise SettingsError(
            "the 'ws' source needs a server address: set server_url under [source] "
            "(or --server-url ws://HOST:PORT/PATH)"
        )
    return JsonWebSocketSource(
        url=config.server_url,
        mapping=parse_mapping(config.options.get("mapping") or {}, channel=config.channel),
        on_status=config.on_status,
    )


def _setup_problem(config: SourceConfig) -> str | None:
    if not config.server_url:
        return 'no server_url set for the "ws" source: set it under [source] (ws://HOST:PORT/PATH)'
    return None


MAPPING_DOC = (
    'For kind = "ws": where each field is in a JSON message, as a dotted path\n'
    '("data.user.name", "items.0.text") or a constant ("=youtube"). Keys: text, id, author,\n'
    'time, platform, channel, and where = "path=value" to read only matching messages.'
)

DESCRIPTOR = SourceDescriptor(
    kind="ws",
    title="JSON WebSocket",
    summary="any JSON-over-WebSocket chat feed, read through a field mapping",
    default_url="",
    settings=(SettingSpec("mapping", {}, mapping_table, MAPPING_DOC),),
    secrets=(),
    needs_channel=False,
    via="ws",
    build=_build,
    setup_problem=_setup_problem,
)
