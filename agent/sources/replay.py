"""Replay a recorded chat file: for demos, tests and re-scoring a stream.

Two formats, detected line by line (a file may even mix them), plain or gzip-compressed
(detected by content, not by name):

* **JSONL**, one message per line, as `record_jsonl` writes it::

      {"platform": "twitch", "channel": "xqcow", "id": "b1c2...", "author": "viewer",
       "text": "PogU", "sent_at": 1568505600.501, "action": false}

  `text` and `sent_at` are required. `sent_at` is UNIX seconds (UTC) or an ISO 8601 string
  (`2019-09-15T00:00:00.501Z`; no zone means UTC). `platform` defaults to "other",
  `channel` to the `channel` argument (else "replay"), `author` to "", `action` to false;
  `message_id` is accepted for `id`, and a line without an id gets a content hash.
* **Raw Twitch IRC**, one line as the server sent it (the `.irc` captures of Twitch chat
  libraries): PRIVMSG and USERNOTICE with text become messages, CLEARCHAT/CLEARMSG go to
  `on_moderation`, everything else (PING, JOIN, ROOMSTATE...) is skipped. Parsed with
  `agent.sources.irc`, keyed as the live Twitch source keys it (`irc.chat_message`:
  `author` the user id, `author_name` the login), so moderation and a live run agree.

Recorded values are checked as they enter (`agent.sources.entry`): a time before 2005 or more
than a day ahead of the clock is replaced by the last good time of the file and counted in
`status().times_replaced`; text is cut at 2,000 characters; a JSON line is parsed with a depth
and size bound; a channel that is not a valid name falls back to the `channel` argument.

Speed: `None` ("max") yields as fast as the consumer takes them; a factor `f` sleeps the
recorded gaps divided by `f` (1 = as recorded), measured against the first message and the
injected `clock`, so the schedule does not drift; a silence longer than `max_gap` (after
scaling) is shortened to it. A bad line (not JSON, missing fields, not IRC, invalid UTF-8) is
counted, logged with its line number, and skipped; the replay never stops on one. At the end of
the file the status becomes FINISHED and `messages()` ends.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from agent import checks
from agent.errors import SettingsError, SourceError
from agent.sources.base import ChatSource, SettingSpec, SourceConfig, SourceDescriptor
from agent.sources.entry import (
    MAX_NAME,
    BadFrame,
    clip,
    in_range,
    load_json,
    unix_seconds,
    usable_id,
)
from agent.sources.irc import (
    IrcParseError,
    ModerationEvent,
    chat_message,
    checked_sent_time,
    moderation_event,
    parse_line,
)
from agent.vocab import (
    PLATFORMS,
    ChatMessage,
    SourceState,
    SourceStatus,
    content_message_id,
    validate_name,
)

log = logging.getLogger(__name__)

MAX_WARNINGS = 20  # bad lines logged one by one; the rest only counted

# Every command a Twitch chat server sends (https://dev.twitch.tv/docs/chat/irc/).
TWITCH_COMMANDS = frozenset(
    {
        "PRIVMSG",
        "USERNOTICE",
        "CLEARCHAT",
        "CLEARMSG",
        "NOTICE",
        "ROOMSTATE",
        "USERSTATE",
        "GLOBALUSERSTATE",
        "HOSTTARGET",
        "RECONNECT",
        "WHISPER",
        "PING",
        "PONG",
        "JOIN",
        "PART",
        "CAP",
        "MODE",
        "NAMES",
    }
)

Sleep = Callable[[float], Awaitable[Any]]
Clock = Callable[[], float]


def parse_speed(value: str | float | None) -> float | None:
    """'max' -> None (no waiting); 'recorded' -> 1.0; a positive number -> that factor."""
    if value is None:
        return 1.0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("max", "maximum", "fast"):
            return None
        if text in ("recorded", "real", "realtime", ""):
            return 1.0
        try:
            factor = float(text.rstrip("x"))
        except ValueError:
            factor = math.nan
    else:
        factor = float(value)
    if not math.isfinite(factor) or factor <= 0:
        raise SettingsError(
            f"replay speed {value!r} is not valid: use 'max', 'recorded' or a factor such as 10"
        )
    return factor


class BadLine(ValueError):
    """A line of a chat file that cannot be used."""


def parse_time(value: Any) -> float:
    """UNIX seconds from a number or an ISO 8601 string (no zone = UTC)."""
    if isinstance(value, bool):
        raise BadLine(f"sent_at is not a time: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
        # Milliseconds since the epoch are common in chat exports.
        return seconds / 1000.0 if seconds > 1e11 else seconds
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_time(float(text))
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise BadLine(f"sent_at is not a time: {value!r}") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise BadLine(f"sent_at is not a time: {value!r}")


def _text_field(obj: dict[str, Any], *names: str, default: str | None = None) -> str | None:
    for name in names:
        value = obj.get(name)
        if value is not None and not isinstance(value, dict | list):
            return str(value)
    return default


@dataclass
class TimeCheck:
    """Replaced times of one replay: a recorded time out of range (`agent.sources.entry`) is
    replaced by the last good time of the file, so the recording's timeline stays whole (the
    receive time of a replay is "now", years after the stream)."""

    last_good: float | None = None
    replaced: int = 0

    def take(self, seconds: float | None, received_at: float) -> float:
        if seconds is not None and in_range(seconds, received_at):
            self.last_good = seconds
            return seconds
        self.replaced += 1
        return self.last_good if self.last_good is not None else received_at


def _platform(value: str | None) -> str:
    name = (value or "other").strip().lower()
    return name if name in PLATFORMS else "other"


def _channel(value: str | None, fallback: str) -> str:
    try:
        return validate_name(value) if value else fallback
    except ValueError:
        return fallback


def message_from_json(
    obj: Any, *, channel: str | None, received_at: float, times: TimeCheck | None = None
) -> ChatMessage:
    """One JSONL record as a ChatMessage, or `BadLine`."""
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    text = _text_field(obj, "text")
    if text is None:
        raise BadLine("no 'text'")
    if "sent_at" not in obj:
        raise BadLine("no 'sent_at'")
    raw_time = obj["sent_at"]
    seconds = unix_seconds(raw_time)
    if seconds is None and (isinstance(raw_time, bool) or not isinstance(raw_time, int | float)):
        raise BadLine(f"sent_at is not a time: {str(raw_time)[:40]!r}")
    sent_at = (times or TimeCheck()).take(seconds, received_at)
    text = clip(text)
    platform = _platform(_text_field(obj, "platform"))
    chan = _channel(_text_field(obj, "channel"), _channel(channel, "replay"))
    author = clip(_text_field(obj, "author", default="") or "", MAX_NAME)
    message_id = usable_id(_text_field(obj, "id", "message_id")) or content_message_id(
        platform, chan, author, sent_at, text
    )
    return ChatMessage(
        platform=platform,
        channel=chan,
        message_id=message_id,
        author=author,
        text=text,
        sent_at=sent_at,
        received_at=received_at,
        action=bool(obj.get("action", False)),
    )


def event_from_irc(
    line: str, *, received_at: float, times: TimeCheck | None = None
) -> ChatMessage | ModerationEvent | None:
    """One raw Twitch IRC line: a message, a moderation event, or None for other commands.

    Keyed exactly as the live Twitch source keys it (`irc.chat_message`: the user id, else the
    login), so a replayed chat and the live one name the same viewer the same way. Raises
    `BadLine` for a line that is not IRC."""
    try:
        msg = parse_line(line)
    except IrcParseError as exc:
        raise BadLine(str(exc)) from exc
    if msg.command not in TWITCH_COMMANDS and not (msg.command.isascii() and msg.command.isdigit()):
        # IRC syntax is so loose that any text starting with a word parses; a command Twitch
        # never sends means the line is not from a Twitch log at all.
        raise BadLine(f"not a Twitch IRC line (command {msg.command[:20]!r})")
    channel = msg.channel
    if channel is None or msg.command not in ("PRIVMSG", "USERNOTICE", "CLEARCHAT", "CLEARMSG"):
        return None
    check = times or TimeCheck()
    sent_at, replaced = checked_sent_time(msg.tags, received_at, check.last_good)
    if replaced:
        check.replaced += 1
    elif msg.tags.get("tmi-sent-ts"):
        check.last_good = sent_at
    fallback = sent_at if replaced else None
    if msg.command in ("PRIVMSG", "USERNOTICE"):
        try:
            return chat_message(msg, channel, received_at, fallback)
        except ValueError as exc:
            raise BadLine(str(exc)) from exc
    return moderation_event(msg, channel, received_at, fallback)


def parse_record(
    raw: bytes, *, channel: str | None, received_at: float, times: TimeCheck | None = None
) -> ChatMessage | ModerationEvent | None:
    """One line of a chat file (JSONL or IRC). None for blank lines and non-chat IRC."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise BadLine(f"invalid UTF-8 at byte {exc.start}") from exc
    if not line.strip():
        return None
    if line.lstrip().startswith(("{", "[")):
        try:
            obj = load_json(line)
        except BadFrame as exc:
            raise BadLine(str(exc)) from exc
        return message_from_json(obj, channel=channel, received_at=received_at, times=times)
    return event_from_irc(line, received_at=received_at, times=times)


def _open_lines(path: Path) -> IO[bytes]:
    try:
        with path.open("rb") as probe:
            compressed = probe.read(2) == b"\x1f\x8b"
        return cast(IO[bytes], gzip.open(path, "rb") if compressed else path.open("rb"))
    except FileNotFoundError as exc:
        raise SourceError(f"chat file {path} does not exist: check --file") from exc
    except OSError as exc:
        raise SourceError(f"cannot read chat file {path}: {exc.strerror or exc}") from exc


@dataclass
class ReplayStats:
    lines: int = 0
    messages: int = 0
    moderation: int = 0
    bad_lines: int = 0


class ReplaySource:
    """A finite `ChatSource` over a chat file. See the module doc for formats and speed."""

    name = "replay"

    def __init__(
        self,
        path: Path,
        *,
        speed: float | None = None,
        channel: str | None = None,
        max_gap: float = 300.0,
        on_status: Callable[[SourceStatus], None] | None = None,
        on_moderation: Callable[[Any], None] | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.path = Path(path)
        self.speed = speed
        self.channel = channel
        self.max_gap = max_gap
        self.stats = ReplayStats()
        self._on_status = on_status
        self._on_moderation = on_moderation
        self._clock = clock
        self._sleep = sleep
        self._status = SourceStatus(SourceState.STOPPED)
        self._closed = asyncio.Event()
        self._times = TimeCheck()

    def status(self) -> SourceStatus:
        return SourceStatus(
            self._status.state,
            self._status.detail,
            times_replaced=self._times.replaced,
            frames_skipped=self.stats.bad_lines,
        )

    def _set_status(self, state: SourceState, detail: str = "") -> None:
        self._status = SourceStatus(state, detail)
        if self._on_status is not None:
            self._on_status(self.status())

    async def close(self) -> None:
        self._closed.set()

    def _records(self) -> Iterator[ChatMessage | ModerationEvent]:
        with _open_lines(self.path) as handle:
            for number, raw in enumerate(_iter_lines(handle), start=1):
                self.stats.lines = number
                try:
                    record = parse_record(
                        raw, channel=self.channel, received_at=self._clock(), times=self._times
                    )
                except BadLine as exc:
                    self.stats.bad_lines += 1
                    if self.stats.bad_lines <= MAX_WARNINGS:
                        log.warning("%s line %d skipped: %s", self.path, number, exc)
                    continue
                if record is not None:
                    yield record

    async def messages(self) -> AsyncIterator[ChatMessage]:
        self._set_status(SourceState.CONNECTING, f"reading {self.path.name}")
        try:
            records = self._records()
            self._set_status(SourceState.CONNECTED, f"replaying {self.path.name}")
            first_sent: float | None = None
            start = 0.0
            shift = 0.0  # time taken out of long silences, in scaled seconds
            previous_due = 0.0
            for record in records:
                if self._closed.is_set():
                    self._set_status(SourceState.STOPPED, "replay stopped")
                    return
                if isinstance(record, ModerationEvent):
                    self.stats.moderation += 1
                    if self._on_moderation is not None:
                        self._on_moderation(record)
                    continue
                if self.speed is not None:
                    if first_sent is None:
                        first_sent, start = record.sent_at, self._clock()
                    due = (record.sent_at - first_sent) / self.speed - shift
                    if due - previous_due > self.max_gap:
                        shift += due - previous_due - self.max_gap
                        due = previous_due + self.max_gap
                    previous_due = max(previous_due, due)
                    delay = start + due - self._clock()
                    if delay > 0:
                        await self._sleep(delay)
                    record = _received_now(record, self._clock())
                elif self.stats.messages % 256 == 255:
                    # At full speed, let the rest of the event loop run now and then.
                    await asyncio.sleep(0)
                self.stats.messages += 1
                yield record
        finally:
            if self.stats.bad_lines > MAX_WARNINGS:
                log.warning("%s: %d bad lines skipped in all", self.path, self.stats.bad_lines)
        self._set_status(
            SourceState.FINISHED,
            f"{self.stats.messages} messages replayed, {self.stats.bad_lines} bad lines skipped",
        )


def _received_now(msg: ChatMessage, now: float) -> ChatMessage:
    if msg.received_at == now:
        return msg
    return ChatMessage(
        msg.platform,
        msg.channel,
        msg.message_id,
        msg.author,
        msg.text,
        msg.sent_at,
        now,
        msg.action,
    )


def _iter_lines(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        yield from handle
    except (OSError, EOFError) as exc:
        # A truncated gzip file: keep what was readable, say why the rest is missing.
        log.warning("chat file ends early: %s", exc)


def message_to_json(msg: ChatMessage) -> str:
    """One JSONL line (without newline) in the replay schema."""
    record: dict[str, Any] = {
        "platform": msg.platform,
        "channel": msg.channel,
        "id": msg.message_id,
        "author": msg.author,
        "text": msg.text,
        "sent_at": round(msg.sent_at, 3),
    }
    if msg.action:
        record["action"] = True
    # ASCII escapes keep any text (even a lone surrogate from a broken client) writable.
    return json.dumps(record, ensure_ascii=True)


def record_jsonl(messages: Iterable[ChatMessage], path: Path, *, append: bool = True) -> int:
    """Write messages to a JSONL replay file (appending by default); returns how many.

    Each line is flushed whole, so a recording cut short by a crash is still a valid file up
    to its last complete line (a partial last line is a bad line the replay skips)."""
    count = 0
    with Path(path).open("a" if append else "w", encoding="utf-8", newline="\n") as out:
        for msg in messages:
            out.write(message_to_json(msg) + "\n")
            count += 1
    return count


# ----------------------------------------------------------------------------- descriptor


def _build(config: SourceConfig) -> ChatSource:
    file = config.options.get("file")
    if not file:
        raise SettingsError(
            "the 'replay' source needs a chat file: set file under [source] (or --file PATH)"
        )
    return ReplaySource(
        Path(file),
        speed=parse_speed(config.options.get("speed")),
        channel=config.channel or None,
        on_status=config.on_status,
        on_moderation=config.on_moderation,
    )


def _setup_problem(config: SourceConfig) -> str | None:
    file = config.options.get("file")
    if not file:
        return 'no file set for the "replay" source: set file under [source] (or --file PATH)'
    return None


DESCRIPTOR = SourceDescriptor(
    kind="replay",
    title="Replay",
    summary="a recorded chat file (JSONL or raw Twitch IRC, plain or gzip)",
    default_url="",
    settings=(
        SettingSpec(
            "file", "", checks.text, 'For kind = "replay": the chat recording to play.', True
        ),
        SettingSpec(
            "speed",
            "recorded",
            checks.speed,
            'For kind = "replay": "recorded" (real time), "max" (as fast as possible) or a\n'
            "speed-up factor such as 4.",
        ),
    ),
    secrets=(),
    needs_channel=False,
    via="",
    build=_build,
    setup_problem=_setup_problem,
)
