"""JSON over WebSocket: the session shared by the Streamer.bot, Social Stream Ninja and
generic `ws` sources, and the generic source itself (a configurable field mapping).

`JsonSession` is the sans-I/O part every JSON source builds on (the socket shell is the one
`agent.sources.link.WebSocketLink`): each frame is checked where it enters
(`agent.sources.entry.load_json`: size and nesting bounds, UTF-8, no NaN/Infinity), and any
frame that fails, or whose payload a parser cannot use, is one `Skipped` event: counted in
`status().frames_skipped`, never raised. Subclasses implement `parse` (one JSON value ->
chat messages and moderation events) and may send frames of their own (join, subscribe) with
`send` and react to the time in `tick`.

Generic field mapping (`--source ws`, settings `[source.mapping]`): each of `text`, `id`,
`author`, `time`, `platform`, `channel` is a dotted path into the JSON object (`data.user.name`,
`items.0.text`); a value starting with `=` is a constant (`platform = "=youtube"`). `where` is
an optional `path=value` filter (`where = "type=chat"`): other objects are ignored. A frame
holding a JSON array is read as several objects. Without `id` a content hash is the key;
without `time` the receive time is used; a number time may be seconds or milliseconds, and a
time out of range is replaced by the receive time and counted.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.checks import Expected, dotted_path
from agent.errors import SettingsError
from agent.sources.base import (
    ChatSource,
    ModerationCallback,
    SettingSpec,
    SourceConfig,
    SourceDescriptor,
    StatusCallback,
)
from agent.sources.entry import (
    MAX_JSON_BYTES,
    MAX_NAME,
    BadFrame,
    clip,
    load_json,
    sane_time,
    usable_id,
)
from agent.sources.link import LinkedSource, Skipped, WebSocketLink
from agent.vocab import (
    PLATFORMS,
    ChatMessage,
    ModerationEvent,
    content_message_id,
    validate_name,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = MAX_JSON_BYTES  # chat events are a few KiB; a MiB is garbage or an attack

# How bridges name platforms, to ours (Streamer.bot says "YouTube", SSN "youtubeshorts").
PLATFORM_ALIASES = {"youtubeshorts": "youtube", "youtubelive": "youtube", "x": "other"}


def platform_name(value: Any) -> str:
    """A platform name from a source's wording ("Twitch", "youtubeshorts", "kick"), else
    "other"."""
    name = str(value or "").strip().lower()
    name = PLATFORM_ALIASES.get(name, name)
    return name if name in PLATFORMS else "other"


def get_path(obj: Any, path: str) -> Any:
    """`a.b.0.c` into nested dicts and lists; None where it does not lead anywhere."""
    current = obj
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif (
            isinstance(current, list)
            and part.lstrip("-").isascii()
            and part.lstrip("-").isdigit()
            and len(part) < 10
        ):
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
    if isinstance(value, float) and value != value:
        return None
    return str(value)


def safe_channel(value: str | None, fallback: str) -> str:
    """A channel name fit for paths and S3 keys, else `fallback`."""
    try:
        return validate_name(value) if value else fallback
    except ValueError:
        return fallback


@dataclass(slots=True)
class Received:
    """What a parser needs to know about the frame it reads, and where it counts."""

    at: float  # receive time (UNIX seconds)
    times_replaced: int = 0

    def time(self, value: Any) -> float:
        """A platform time checked against the receive time; replaced ones are counted."""
        seconds, replaced = sane_time(value, self.at)
        if replaced:
            self.times_replaced += 1
        return seconds


# ------------------------------------------------------------------------------ session


class JsonSession(abc.ABC):
    """A `link.Session` for JSON feeds. Subclasses implement `parse`."""

    def __init__(
        self,
        *,
        wall_clock: Callable[[], float] = time.time,
        max_bytes: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self._wall = wall_clock
        self._max_bytes = max_bytes
        self._outgoing: list[str] = []
        self._events: list[Any] = []
        self._times_replaced = 0

    @property
    def times_replaced(self) -> int:
        return self._times_replaced

    @abc.abstractmethod
    def parse(self, value: Any, received: Received) -> Iterable[ChatMessage | ModerationEvent]:
        """The chat messages and moderation events one decoded frame holds (often none)."""

    # -- link.Session

    def data_to_send(self) -> list[str]:
        out, self._outgoing = self._outgoing, []
        return out

    def events_received(self) -> list[Any]:
        out, self._events = self._events, []
        return out

    def tick(self, now: float) -> None:  # noqa: B027 (optional hook: most feeds have none)
        """Handshake deadlines, if a subclass has any; `now` is the link's clock."""

    def receive_frame(self, frame: str | bytes) -> None:
        try:
            value = load_json(frame, max_bytes=self._max_bytes)
        except BadFrame as exc:
            self._events.append(Skipped(str(exc)))
            return
        received = Received(self._wall())
        try:
            parsed = list(self.parse(value, received))
        except Exception as exc:
            # A payload shape we did not foresee: skip it, never stop reading chat.
            log.debug("unusable payload skipped", exc_info=True)
            self._events.append(Skipped(f"unusable payload ({type(exc).__name__})"))
            return
        finally:
            self._times_replaced += received.times_replaced
        self._events.extend(parsed)

    # -- for subclasses

    def send(self, frame: str) -> None:
        self._outgoing.append(frame)

    def emit(self, event: Any) -> None:
        self._events.append(event)


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


def mapping_value(value: Any, from_cli: bool = False) -> str:
    """One mapping value: a dotted path into the JSON (`data.user.name`) or `=constant`."""
    if not isinstance(value, str):
        raise Expected('a dotted path such as "data.user.name", or "=constant", in double quotes')
    value = value.strip()
    if value.startswith("="):
        if len(value) > 1 and len(value) <= 200:
            return value
        raise Expected('a constant after "=", for example "=youtube"')
    try:
        return dotted_path(value, from_cli)
    except Expected:
        raise Expected('a dotted path such as "data.user.name", or "=constant"') from None


def where_filter(value: Any, from_cli: bool = False) -> str:
    """The `where` filter: `path=value` (`type=chat`); only matching objects are read."""
    expected = 'a filter "path=value", for example "type=chat"'
    if not isinstance(value, str):
        raise Expected(expected)
    path, sep, wanted = value.strip().partition("=")
    if not sep or not wanted.strip():
        raise Expected(expected)
    try:
        dotted_path(path.strip(), from_cli)  # the one rule for a dotted path (agent.checks)
    except Expected:
        raise Expected(expected) from None
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
    obj: Any, mapping: FieldMapping, *, received_at: float, received: Received | None = None
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
    text = clip(text)
    platform = platform_name(_mapped(obj, mapping.platform))
    channel = safe_channel(scalar_text(_mapped(obj, mapping.channel)), "unknown")
    author = clip(scalar_text(_mapped(obj, mapping.author)) or "", MAX_NAME)
    check = received or Received(received_at)
    sent_at = check.time(_mapped(obj, mapping.time))
    message_id = usable_id(scalar_text(_mapped(obj, mapping.id))) or content_message_id(
        platform, channel, author, sent_at, text
    )
    return ChatMessage(platform, channel, message_id, author, text, sent_at, received_at, via="ws")


class MappedSession(JsonSession):
    def __init__(self, mapping: FieldMapping, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mapping = mapping

    def parse(self, value: Any, received: Received) -> Iterable[ChatMessage]:
        items = value if isinstance(value, list) else [value]
        for item in items:
            message = parse_mapped_object(
                item, self.mapping, received_at=received.at, received=received
            )
            if message is not None:
                yield message


class JsonWebSocketSource(LinkedSource):
    """`--source ws`: any JSON feed, read through a `FieldMapping`."""

    name = "ws"

    def __init__(
        self,
        url: str,
        *,
        mapping: FieldMapping,
        on_status: StatusCallback | None = None,
        on_moderation: ModerationCallback | None = None,
        wall_clock: Callable[[], float] = time.time,
        **link_options: Any,
    ) -> None:
        self.url = url
        self.mapping = mapping
        self.link = WebSocketLink(
            name="ws",
            title="the chat feed",
            url=url,
            new_session=lambda: MappedSession(mapping, wall_clock=wall_clock),
            on_status=on_status,
            on_moderation=on_moderation,
            refused_hint="is the feed running?",
            **link_options,
        )
        self.stats = self.link.stats


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
