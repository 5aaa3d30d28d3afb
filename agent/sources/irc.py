"""Twitch chat over IRC, without any I/O.

Two layers, both plain objects fed with text, in the manner of python-websockets' `protocol.py`:

* `parse_line(line) -> IrcMessage`: one IRC line (IRCv3 tags, prefix, command, params). It
  accepts or raises `IrcParseError`, for any input whatsoever; nothing else escapes it.
* `TwitchChatProtocol`: one Twitch chat session. Feed it what the socket received
  (`receive_text`) and the time (`tick`); take back what to send (`data_to_send`) and what
  happened (`events_received`: `ChatMessage`, `ModerationEvent`, `Reconnect`, `LoginFailed`,
  `JoinFailed`, `Joined`, `LinkDead`, `MalformedLine`). The socket code in `twitch.py` only
  moves text and sleeps.

Session on a new link::

    -> CAP REQ :twitch.tv/tags twitch.tv/commands
    -> PASS oauth:<token>            (only with a token; never logged)
    -> NICK justinfan<digits>        (anonymous read-only login) or the account's login
    <- 001 ...                       welcome: now we may join
    -> JOIN #channel
    <- ROOMSTATE #channel / 366      -> Joined

Keepalive: after `ping_interval` s without any line from the server we send our own PING;
if nothing at all arrives within `pong_timeout` s after it, the link is dead (`LinkDead`).
With the defaults (30 s + 10 s) a dead link is noticed within 40 s plus one tick.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from agent.sources.entry import MAX_NAME, clip, sane_time, usable_id
from agent.vocab import ChatMessage, ModerationEvent, content_message_id, validate_name

PLATFORM = "twitch"
CAPABILITIES = "twitch.tv/tags twitch.tv/commands"
DEFAULT_PING_INTERVAL = 30.0
DEFAULT_PONG_TIMEOUT = 10.0
# Twitch lines are < 1 KiB with tags and at most ~8 KiB in practice; a partial line longer
# than this is garbage, not a line still arriving.
MAX_PARTIAL_LINE = 64 * 1024

# NOTICE texts and msg-ids that mean the login was refused: retrying cannot help.
LOGIN_FAILURE_TEXTS = (
    "login authentication failed",
    "login unsuccessful",
    "improperly formatted auth",
    "invalid nick",
)
LOGIN_FAILURE_MSG_IDS = frozenset({"msg_login_unsuccessful"})
# NOTICE msg-ids that mean our channel cannot be read.
JOIN_FAILURE_MSG_IDS = frozenset({"msg_channel_suspended"})


class IrcParseError(ValueError):
    """A line is not a valid IRC message. The only exception `parse_line` ever raises."""


@dataclass(frozen=True, slots=True)
class IrcMessage:
    """One parsed IRC line. `params` includes the trailing parameter, if any, as the last one."""

    command: str
    params: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    nick: str | None = None
    user: str | None = None
    host: str | None = None
    has_trailing: bool = False  # the last param was written after ' :'

    @property
    def channel(self) -> str | None:
        """The channel a line is about, without '#': the first non-trailing '#' param."""
        middle = self.params[:-1] if self.has_trailing else self.params
        for param in middle:
            if param.startswith("#"):
                return param[1:]
        return None

    @property
    def trailing(self) -> str | None:
        """The last parameter when it follows a target (a message text, a banned login)."""
        return self.params[-1] if len(self.params) >= 2 else None


# --------------------------------------------------------------------------- line parser

_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def unescape_tag_value(value: str) -> str:
    """IRCv3 tag unescaping: \\: \\s \\\\ \\r \\n; any other \\x is x; a lone \\ is dropped."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\":
            if i + 1 < n:
                nxt = value[i + 1]
                out.append(_UNESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _parse_tags(raw: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue  # ";;" or a trailing ';': nothing to keep
        key, _, value = item.partition("=")
        if not key:
            raise IrcParseError(f"tag without a name: {item[:40]!r}")
        tags[key] = unescape_tag_value(value)
    return tags


def _is_command(token: str) -> bool:
    if token.isascii() and token.isalpha():
        return True
    return len(token) == 3 and token.isascii() and token.isdigit()


def parse_line(line: str) -> IrcMessage:
    """Parse one IRC line (a trailing CR/LF is allowed) or raise `IrcParseError`.

    Grammar (RFC 1459 with IRCv3 message tags), lenient about repeated spaces:
    ``['@' tags SPACE] [':' prefix SPACE] command {SPACE param} [SPACE ':' trailing]``.
    """
    if not isinstance(line, str):
        raise IrcParseError(f"expected a str line, got {type(line).__name__}")
    line = line.rstrip("\r\n")
    if "\r" in line or "\n" in line or "\0" in line:
        raise IrcParseError("line contains CR, LF or NUL inside it")
    rest = line.lstrip(" ")
    if not rest:
        raise IrcParseError("empty line")

    tags: dict[str, str] = {}
    if rest.startswith("@"):
        raw_tags, sep, rest = rest[1:].partition(" ")
        if not sep:
            raise IrcParseError("tags but no command")
        tags = _parse_tags(raw_tags)
        rest = rest.lstrip(" ")

    nick = user = host = None
    if rest.startswith(":"):
        prefix, sep, rest = rest[1:].partition(" ")
        if not sep or not prefix:
            raise IrcParseError("prefix but no command")
        nick_user, at, host_part = prefix.partition("@")
        nick_part, bang, user_part = nick_user.partition("!")
        nick = nick_part or None
        user = user_part if bang else None
        host = host_part if at else None
        rest = rest.lstrip(" ")

    command, _, rest = rest.partition(" ")
    if not command or not _is_command(command):
        raise IrcParseError(f"not an IRC command: {command[:40]!r}")

    params: list[str] = []
    has_trailing = False
    while rest:
        rest = rest.lstrip(" ")
        if not rest:
            break
        if rest.startswith(":"):
            params.append(rest[1:])
            has_trailing = True
            break
        param, _, rest = rest.partition(" ")
        params.append(param)

    return IrcMessage(
        command=command.upper(),
        params=tuple(params),
        tags=tags,
        nick=nick,
        user=user,
        host=host,
        has_trailing=has_trailing,
    )


# --------------------------------------------------------------------------- Twitch fields

_ACTION_PREFIX = "\x01ACTION "
_ACTION_EMPTY = "\x01ACTION\x01"


def split_action(text: str) -> tuple[str, bool]:
    """Remove the CTCP `/me` wrapper (\\x01ACTION ...\\x01): (text, was it an action)."""
    if text == _ACTION_EMPTY:
        return "", True
    if text.startswith(_ACTION_PREFIX):
        body = text[len(_ACTION_PREFIX) :]
        return (body[:-1] if body.endswith("\x01") else body), True
    return text, False


@dataclass(frozen=True, slots=True)
class Emote:
    """One emote occurrence: `start`/`end` are code-point indexes into the text, end exclusive."""

    emote_id: str
    start: int
    end: int
    name: str


def parse_emotes(value: str, text: str) -> list[Emote]:
    """Parse Twitch's `emotes` tag (``id:a-b,c-d/id2:e-f``, inclusive code-point ranges).

    Twitch sometimes sends ranges that are off by one or run past the end of the text; such a
    range is kept as sent (its name is what the text holds there) when it starts inside the
    text, and skipped when it does not. Never an error. Sorted by start.
    """
    emotes: list[Emote] = []
    for group in value.split("/"):
        emote_id, sep, ranges = group.rpartition(":")
        if not sep or not emote_id:
            continue
        for span in ranges.split(","):
            first, dash, last = span.partition("-")
            if (
                not dash
                or not (first.isascii() and first.isdigit())
                or not (last.isascii() and last.isdigit())
            ):
                continue
            start, end = int(first), int(last) + 1
            if start >= end or start >= len(text):
                continue
            emotes.append(Emote(emote_id, start, end, text[start:end]))
    emotes.sort(key=lambda e: e.start)
    return emotes


def sent_time(tags: dict[str, str], fallback: float) -> float:
    """`tmi-sent-ts` (ms since the epoch) in seconds, else `fallback` (see `checked_sent_time`)."""
    return checked_sent_time(tags, fallback)[0]


def checked_sent_time(
    tags: dict[str, str], received_at: float, fallback: float | None = None
) -> tuple[float, bool]:
    """(`tmi-sent-ts` in seconds, whether it was out of range and replaced).

    The tag is milliseconds as digits; anything else, or a time before 2005 or more than a
    day ahead of `received_at` (a `tmi-sent-ts` past the year 9999), is replaced by
    `fallback` (default: `received_at`), as `agent.sources.entry` rules."""
    raw = tags.get("tmi-sent-ts", "")
    replacement = received_at if fallback is None else fallback
    if not raw:
        return replacement, False
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        return replacement, True
    seconds, replaced = sane_time(int(raw) / 1000.0, received_at)
    return (replacement, True) if replaced else (seconds, False)


def sender_login(msg: IrcMessage) -> str | None:
    """The login of whoever a line is from (or, for CLEARMSG, whose message was deleted)."""
    if msg.command in ("USERNOTICE", "CLEARMSG"):
        return msg.tags.get("login") or None
    if msg.command in ("PRIVMSG", "WHISPER", "JOIN", "PART"):
        return msg.nick
    return None


def chat_text(msg: IrcMessage) -> tuple[str | None, bool]:
    """(text, action) of a PRIVMSG or USERNOTICE; (None, False) when it carries no text.

    Only PRIVMSG has `/me` semantics; a USERNOTICE's text is kept exactly as sent.
    """
    if msg.command == "PRIVMSG":
        if len(msg.params) < 2:
            return None, False
        return split_action(msg.params[1])
    if msg.command == "USERNOTICE":
        return (msg.params[1] if len(msg.params) >= 2 else None), False
    return None, False


def chat_message(
    msg: IrcMessage, channel: str, received_at: float, fallback: float | None = None
) -> ChatMessage | None:
    """A PRIVMSG/USERNOTICE with a person's words as a ChatMessage, keyed by the one author
    rule of every Twitch path (live and replay): `author` is the sender's user id (the
    `user-id` tag, what CLEARCHAT's `target-user-id` names), else the login; `author_name` is
    the login. None for a line without words; `MalformedLine`-worthy lines raise ValueError.
    Call `checked_sent_time` yourself to count replaced times; this one only uses it."""
    text, action = chat_text(msg)
    if not text or not text.strip():
        # A USERNOTICE without a user's words (a bare sub, a raid) is not chat; an empty
        # PRIVMSG (e.g. an empty /me, or only spaces) says nothing either.
        return None
    sent_at, _ = checked_sent_time(msg.tags, received_at, fallback)
    login = clip(sender_login(msg) or msg.tags.get("display-name", "").lower(), MAX_NAME)
    author = clip(msg.tags.get("user-id") or login, MAX_NAME)
    if not author:
        raise ValueError(f"{msg.command} without a sender")
    text = clip(text)
    message_id = usable_id(msg.tags.get("id")) or content_message_id(
        PLATFORM, channel, author, sent_at, text
    )
    return ChatMessage(
        platform=PLATFORM,
        channel=channel,
        message_id=message_id,
        author=author,
        text=text,
        sent_at=sent_at,
        received_at=received_at,
        action=action,
        author_name=login,
    )


def moderation_event(
    msg: IrcMessage, channel: str, received_at: float, fallback: float | None = None
) -> ModerationEvent | None:
    """CLEARCHAT (a ban, a timeout, or the whole chat) or CLEARMSG (one message) as a
    ModerationEvent whose `author` follows `chat_message`'s rule; None for other commands."""
    at, _ = checked_sent_time(msg.tags, received_at, fallback)
    if msg.command == "CLEARCHAT":
        # The trailing parameter is the banned login; none means the whole chat was cleared.
        author = msg.tags.get("target-user-id") or (msg.trailing or None)
        return ModerationEvent(PLATFORM, channel, "clearchat", None, author, at)
    if msg.command == "CLEARMSG":
        return ModerationEvent(
            PLATFORM,
            channel,
            "clearmsg",
            usable_id(msg.tags.get("target-msg-id")),
            msg.tags.get("login") or None,
            at,
        )
    return None


# --------------------------------------------------------------------------- session events


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The server is going away (Twitch RECONNECT): connect again at once."""


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """The server refused the login; `reason` is its NOTICE text."""

    reason: str


@dataclass(frozen=True, slots=True)
class JoinFailed:
    """The channel cannot be read (e.g. suspended); `reason` is the NOTICE text."""

    channel: str
    reason: str


@dataclass(frozen=True, slots=True)
class Joined:
    channel: str


@dataclass(frozen=True, slots=True)
class LinkDead:
    """No traffic answered our keepalive PING in time."""

    reason: str


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A line we could not parse or use; kept for counting and debug logs, then dropped."""

    line: str
    error: str


SessionEvent = (
    ChatMessage | ModerationEvent | Reconnect | LoginFailed | JoinFailed | Joined | LinkDead
) | MalformedLine


def anonymous_nick(rand: random.Random | None = None) -> str:
    """Twitch's read-only anonymous login: `justinfan` plus digits, no token needed."""
    return f"justinfan{(rand or random).randint(10_000, 99_999_999)}"


class TwitchChatProtocol:
    """One Twitch chat session over one link, fed with text and the time; no I/O.

    Create one per connection; the login lines are ready in `data_to_send()` at once.
    `now` is the clock (UNIX seconds) that stamps `received_at`; `keepalive_clock` (default:
    `now`) times received traffic for the keepalive, and `tick(t)` takes times on that clock.
    """

    def __init__(
        self,
        channel: str,
        *,
        nick: str | None = None,
        token: str | None = None,
        now: Callable[[], float],
        ping_interval: float = DEFAULT_PING_INTERVAL,
        pong_timeout: float = DEFAULT_PONG_TIMEOUT,
        max_partial_line: int = MAX_PARTIAL_LINE,
        keepalive_clock: Callable[[], float] | None = None,
    ) -> None:
        self.channel = validate_name(channel, "Twitch channel")
        if token is not None and not token.strip():
            token = None
        if token is not None and nick is None:
            raise ValueError(
                "an OAuth token needs the account's login as nick; pass nick=... "
                "or drop the token to read anonymously"
            )
        self.nick = validate_name(nick, "Twitch login") if nick else anonymous_nick()
        self._token = token
        self._now = now
        # Keepalive may run on a monotonic clock while `now` stamps messages in UNIX time.
        self._keepalive_clock = keepalive_clock or now
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self._max_partial = max_partial_line
        self._partial = ""
        self._events: list[SessionEvent] = []
        self._outgoing: list[str] = []
        self._last_received = self._keepalive_clock()
        self._ping_sent_at: float | None = None
        self.dead = False
        self.joined = False
        self.stats = {"lines": 0, "malformed": 0, "ignored": 0, "messages": 0, "times_replaced": 0}

        self._outgoing.append(f"CAP REQ :{CAPABILITIES}")
        if token is not None:
            pass_token = token if token.startswith("oauth:") else f"oauth:{token}"
            self._outgoing.append(f"PASS {pass_token}")
        self._outgoing.append(f"NICK {self.nick}")

    # -- outputs

    def data_to_send(self) -> list[str]:
        """Lines to send, without CRLF, oldest first; each call hands them over once."""
        out, self._outgoing = self._outgoing, []
        return out

    def events_received(self) -> list[SessionEvent]:
        """What happened since the last call, in order."""
        out, self._events = self._events, []
        return out

    # -- inputs

    def receive_text(self, frame: str) -> None:
        """Feed one WebSocket text frame: zero or more CRLF-terminated lines.

        A frame that does not end with a line terminator leaves a partial line buffered until
        the next frame completes it (bounded by `max_partial_line`).
        """
        if frame:
            self._last_received = self._keepalive_clock()
            self._ping_sent_at = None
        data = self._partial + frame
        lines = data.split("\n")
        self._partial = lines.pop()
        if len(self._partial) > self._max_partial:
            self._malformed(self._partial[:200], "partial line longer than the limit, dropped")
            self._partial = ""
        for line in lines:
            line = line.rstrip("\r")
            if line:
                self.receive_line(line)

    def receive_line(self, line: str) -> None:
        """Feed one complete line (without its terminator)."""
        self.stats["lines"] += 1
        self._last_received = self._keepalive_clock()
        self._ping_sent_at = None
        try:
            msg = parse_line(line)
        except IrcParseError as exc:
            self._malformed(line, str(exc))
            return
        handler = self._HANDLERS.get(msg.command)
        if handler is None:
            return
        handler(self, msg)

    def tick(self, now: float) -> None:
        """Keepalive: send our PING when idle, declare the link dead when it goes unanswered."""
        if self.dead:
            return
        if self._ping_sent_at is None:
            if now - self._last_received >= self.ping_interval:
                self._outgoing.append("PING :tmi.twitch.tv")
                self._ping_sent_at = now
        elif now - self._ping_sent_at >= self.pong_timeout:
            self.dead = True
            idle = now - self._last_received
            self._events.append(
                LinkDead(f"no data from the server for {idle:.0f} s, even after a PING")
            )

    def next_tick(self) -> float:
        """When `tick` next has something to decide (the caller may sleep until then)."""
        if self._ping_sent_at is None:
            return self._last_received + self.ping_interval
        return self._ping_sent_at + self.pong_timeout

    # -- handlers

    def _malformed(self, line: str, error: str) -> None:
        self.stats["malformed"] += 1
        self._events.append(MalformedLine(line[:500], error))

    def _on_ping(self, msg: IrcMessage) -> None:
        payload = msg.params[-1] if msg.params else "tmi.twitch.tv"
        self._outgoing.append(f"PONG :{payload}")

    def _on_welcome(self, msg: IrcMessage) -> None:
        self._outgoing.append(f"JOIN #{self.channel}")

    def _on_joined(self, msg: IrcMessage) -> None:
        if msg.channel != self.channel or self.joined:
            return
        if msg.command == "JOIN" and msg.nick != self.nick:
            return
        self.joined = True
        self._events.append(Joined(self.channel))

    def _on_reconnect(self, msg: IrcMessage) -> None:
        self._events.append(Reconnect())

    def _on_notice(self, msg: IrcMessage) -> None:
        text = msg.params[-1] if len(msg.params) >= 2 else ""
        msg_id = msg.tags.get("msg-id", "")
        lowered = text.lower()
        if msg_id in LOGIN_FAILURE_MSG_IDS or any(t in lowered for t in LOGIN_FAILURE_TEXTS):
            self._events.append(LoginFailed(text or msg_id))
        elif msg_id in JOIN_FAILURE_MSG_IDS and msg.channel == self.channel:
            self._events.append(JoinFailed(self.channel, text or msg_id))

    def _on_chat(self, msg: IrcMessage) -> None:
        if msg.channel != self.channel:
            self.stats["ignored"] += 1
            return
        now = self._now()
        self._count_time(msg, now)
        try:
            message = chat_message(msg, self.channel, now)
        except ValueError as exc:
            self._malformed(str(msg.params)[:200], str(exc))
            return
        if message is None:
            return
        self.stats["messages"] += 1
        self._events.append(message)

    def _on_moderation(self, msg: IrcMessage) -> None:
        if msg.channel != self.channel:
            return
        now = self._now()
        self._count_time(msg, now)
        event = moderation_event(msg, self.channel, now)
        if event is not None:
            self._events.append(event)

    def _count_time(self, msg: IrcMessage, now: float) -> None:
        if checked_sent_time(msg.tags, now)[1]:
            self.stats["times_replaced"] += 1

    _HANDLERS: ClassVar[dict[str, Callable[[TwitchChatProtocol, IrcMessage], None]]] = {
        "PING": _on_ping,
        "001": _on_welcome,
        "JOIN": _on_joined,
        "ROOMSTATE": _on_joined,
        "366": _on_joined,
        "RECONNECT": _on_reconnect,
        "NOTICE": _on_notice,
        "PRIVMSG": _on_chat,
        "USERNOTICE": _on_chat,
        "CLEARCHAT": _on_moderation,
        "CLEARMSG": _on_moderation,
    }


def mask_secret_line(line: str) -> str:
    """A line as it may appear in a log: the PASS token replaced by stars."""
    if line[:5].upper() == "PASS ":
        return "PASS ***"
    return line
