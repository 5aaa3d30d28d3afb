"""Streamer.bot's WebSocket server: chat from Twitch, YouTube, Kick and Trovo through the app
many streamers already run (default ws://127.0.0.1:8080/).

Handshake, as Streamer.bot's documentation (https://docs.streamer.bot/api/websocket, guide
"Authentication" and the "Requests" reference) and its official client
(github.com/Streamerbot/client, packages/client/src/ws/StreamerbotClient.ts: handshake(),
authenticate(), subscribe()) describe it:

1. On connect the server sends `{"request": "Hello", "info": {...}, "timestamp", "session"}`,
   with `"authentication": {"salt", "challenge"}` when Authentication is on.
2. With a password we send `{"request": "Authenticate", "id", "authentication":
   base64(sha256(base64(sha256(password + salt)) + challenge))}` and wait for its reply
   (`{"status": "ok" | "error", "id"}`); "error" means a wrong password: the source stops.
3. Without a password we do what the official client does: ask `GetInfo`; "ok" means
   authentication is on but not enforced (Streamer.bot's default: "Enforce" off), so we go on
   unauthenticated; "error" means Enforce is on: the source stops, saying how to set one.
4. Only then `{"request": "Subscribe", "id", "events": {...}}`; an "error" reply is a visible
   status problem, not silence; a reply that leaves out some events (an older Streamer.bot
   without a platform) is a warning in the log naming them.
   A server older than 0.2.5 sends no Hello: after `HELLO_TIMEOUT` we subscribe anyway.

Events arrive as `{"timeStamp", "event": {"source", "type"}, "data"}` (guide "Receiving
Events"). Event names are those of the official client's list (events.const.ts). Payloads
read (client types twitch.types.ts/youtube.types.ts, the docs' trigger variables, and overlays
built on Streamer.bot such as ChatRD's modules):

* Twitch.ChatMessage / Announcement: `data.messageId`, `data.text`, `data.user.{id,login,
  name}`, `data.meta.isMe`; Streamer.bot before 0.2.5 nests `data.message.{msgId, userId,
  username, displayName, message, isMe}`. Both are read.
* YouTube.Message / SuperChat: `data.eventId`, `data.message`, `data.publishedAt`,
  `data.user.{id,name}`; SuperSticker: the same with `stickerAltText` when no message.
* Kick.ChatMessage, Trovo.ChatMessage: `data.messageId`, `data.text`, `data.user.{id,login,
  name}`.
* Moderation: Twitch.ChatMessageDeleted `data.targetMessageId`; Twitch.UserBanned /
  UserTimedOut `data.target_user_id`, `data.target_user_login`; YouTube.MessageDeleted
  `data.messageId`/`eventId`; YouTube.UserBanned (bans and timeouts, `banType`)
  `data.targetUser.id` or `data.user.id`; Kick.UserBanned / UserTimedOut `data.user.{id,
  login,name}`.

Author key (the one rule, see `irc.chat_message`): the platform's user id where the event
has one, else the lower-cased login, for chat and moderation alike, so a ban removes exactly
that viewer's messages. `ChatMessage.platform` is the chat's platform, `.via` "streamerbot".
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from agent.sources.base import (
    ChatSource,
    ModerationCallback,
    SecretSpec,
    SourceConfig,
    SourceDescriptor,
    StatusCallback,
)
from agent.sources.entry import MAX_NAME, clip, usable_id
from agent.sources.jsonws import (
    JsonSession,
    Received,
    get_path,
    platform_name,
    safe_channel,
    scalar_text,
)
from agent.sources.link import Fatal, LinkedSource, Problem, Ready, WebSocketLink
from agent.vocab import ChatMessage, ModerationEvent, content_message_id

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8080/"
VIA = "streamerbot"

# Viewer text on every platform Streamer.bot serves (names from the official client's list).
CHAT_EVENTS: dict[str, tuple[str, ...]] = {
    "Twitch": ("ChatMessage", "Announcement"),
    "YouTube": ("Message", "SuperChat", "SuperSticker"),
    "Kick": ("ChatMessage",),
    "Trovo": ("ChatMessage",),
}
MODERATION_EVENTS: dict[str, tuple[str, ...]] = {
    "Twitch": ("ChatMessageDeleted", "UserBanned", "UserTimedOut"),
    "YouTube": ("MessageDeleted", "UserBanned"),  # UserBanned carries timeouts (banType)
    "Kick": ("UserBanned", "UserTimedOut"),
}
SUBSCRIBE_ID = "captaflow-subscribe"
AUTH_ID = "captaflow-auth"
INFO_ID = "captaflow-info"
HELLO_TIMEOUT = 3.0
SET_PASSWORD = (
    "run `captaflow secrets set streamerbot_password` (or set CAPTAFLOW_STREAMERBOT_PASSWORD)"
)


def subscribe_request() -> dict[str, Any]:
    events: dict[str, list[str]] = {}
    for table in (CHAT_EVENTS, MODERATION_EVENTS):
        for source, types in table.items():
            events.setdefault(source, []).extend(types)
    return {"request": "Subscribe", "id": SUBSCRIBE_ID, "events": events}


def authentication_string(password: str, salt: str, challenge: str) -> str:
    """Streamer.bot's (and obs-websocket's) challenge answer."""
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest()).decode()
    return base64.b64encode(hashlib.sha256((secret + challenge).encode()).digest()).decode()


def _first_text(data: Any, *paths: str) -> str | None:
    for path in paths:
        value = scalar_text(get_path(data, path))
        if value:
            return value
    return None


def _event_kind(obj: Any) -> tuple[str, str]:
    return (
        scalar_text(get_path(obj, "event.source")) or "",
        scalar_text(get_path(obj, "event.type")) or "",
    )


def parse_streamerbot_event(
    obj: Any, *, channel: str, received_at: float, received: Received | None = None
) -> ChatMessage | None:
    """A Streamer.bot chat event as a ChatMessage; None for any other event or response."""
    if not isinstance(obj, dict):
        return None
    source, kind = _event_kind(obj)
    if kind not in CHAT_EVENTS.get(source, ()):
        return None
    data = obj.get("data")
    if not isinstance(data, dict):
        return None
    nested = data.get("message")
    legacy: dict[str, Any] = nested if isinstance(nested, dict) else {}
    text = _first_text(data, "text") or scalar_text(legacy.get("message"))
    if text is None and isinstance(nested, str):
        text = nested  # YouTube: `message` is the text itself
    if not text and kind == "SuperSticker":
        text = _first_text(data, "stickerAltText", "sticker.altText")
    if not text or not text.strip():
        return None
    text = clip(text)
    platform = platform_name(source)
    login = (
        _first_text(data, "user.login", "user.userName", "userName")
        or scalar_text(legacy.get("username"))
        or _first_text(data, "user.name", "user.display")
        or scalar_text(legacy.get("displayName"))
        or ""
    )
    if platform in ("twitch", "kick", "trovo"):
        login = login.lower()  # logins are lower-case; display names may not be
    user_id = _first_text(data, "user.id", "userId") or scalar_text(legacy.get("userId"))
    author = clip(user_id or login, MAX_NAME)
    check = received or Received(received_at)
    sent_at = check.time(_first_text(data, "publishedAt", "sentAt") or obj.get("timeStamp"))
    message_id = usable_id(
        _first_text(data, "messageId", "eventId", "msgId")
        or scalar_text(legacy.get("msgId"))
        or _first_text(data, "id")
    ) or content_message_id(platform, channel, author, sent_at, text)
    action = bool(get_path(data, "meta.isMe") or legacy.get("isMe") or data.get("action"))
    return ChatMessage(
        platform,
        channel,
        message_id,
        author,
        text,
        sent_at,
        received_at,
        action,
        author_name=clip(login, MAX_NAME),
        via=VIA,
    )


def parse_streamerbot_moderation(
    obj: Any, *, channel: str, received_at: float, received: Received | None = None
) -> ModerationEvent | None:
    """A deleted message or a banned/timed-out user, if the event is one and names a target."""
    if not isinstance(obj, dict):
        return None
    source, kind = _event_kind(obj)
    if kind not in MODERATION_EVENTS.get(source, ()):
        return None
    raw = obj.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    check = received or Received(received_at)
    at = check.time(obj.get("timeStamp"))
    platform = platform_name(source)
    if kind.endswith("Deleted"):
        target = usable_id(
            _first_text(data, "targetMessageId", "messageId", "eventId", "message_id")
        )
        if target is None:
            return None
        return ModerationEvent(platform, channel, "clearmsg", target, None, at)
    user_id = _first_text(data, "target_user_id", "targetUser.id", "user.id", "userId")
    login = _first_text(
        data, "target_user_login", "targetUser.login", "user.login", "user.name", "userName"
    )
    author = user_id or (login.lower() if login else None)
    if author is None:
        return None
    return ModerationEvent(platform, channel, "clearchat", None, clip(author, MAX_NAME), at)


# --------------------------------------------------------------------------- the session


class _Step(Enum):
    HELLO = "waiting for Hello"
    AUTHENTICATE = "waiting for the Authenticate reply"
    INFO = "waiting for the GetInfo reply"
    SUBSCRIBE = "waiting for the Subscribe reply"
    READING = "reading"


class StreamerbotSession(JsonSession):
    """One connection's handshake (see the module doc) and event parsing, without I/O."""

    def __init__(
        self,
        *,
        channel: str,
        password: str | None,
        now: float,
        wall_clock: Callable[[], float] = time.time,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        super().__init__(wall_clock=wall_clock)
        self.channel = channel
        self._password = password
        self.step = _Step.HELLO
        self._hello_deadline = now + hello_timeout
        self.version = ""

    def tick(self, now: float) -> None:
        if self.step is _Step.HELLO and now >= self._hello_deadline:
            # Servers before 0.2.5 send no Hello and know no authentication.
            self._subscribe()

    def _subscribe(self) -> None:
        self.step = _Step.SUBSCRIBE
        self.send(json.dumps(subscribe_request()))

    def _on_hello(self, hello: dict[str, Any]) -> None:
        info = hello.get("info")
        self.version = str(get_path(info, "version") or "")
        auth = hello.get("authentication")
        if not (isinstance(auth, dict) and auth.get("salt") and auth.get("challenge")):
            self._subscribe()
        elif self._password:
            self.step = _Step.AUTHENTICATE
            answer = authentication_string(
                self._password, str(auth["salt"]), str(auth["challenge"])
            )
            self.send(
                json.dumps({"request": "Authenticate", "id": AUTH_ID, "authentication": answer})
            )
        else:
            # As the official client: GetInfo tells whether authentication is enforced.
            self.step = _Step.INFO
            self.send(json.dumps({"request": "GetInfo", "id": INFO_ID}))

    def _on_reply(self, reply: dict[str, Any]) -> None:
        ok = str(reply.get("status", "")).lower() == "ok"
        error = scalar_text(reply.get("error")) or "no reason given"
        request_id = reply.get("id")
        if request_id == AUTH_ID and self.step is _Step.AUTHENTICATE:
            if not ok:
                self.emit(
                    Fatal(f"Streamer.bot refused the WebSocket password ({error}): {SET_PASSWORD}")
                )
                return
            self._subscribe()
        elif request_id == INFO_ID and self.step is _Step.INFO:
            if not ok:
                self.emit(
                    Fatal(
                        "Streamer.bot's WebSocket server requires a password (Authentication "
                        f"with Enforce on): {SET_PASSWORD}"
                    )
                )
                return
            self._subscribe()
        elif request_id == SUBSCRIBE_ID and self.step is _Step.SUBSCRIBE:
            self.step = _Step.READING
            version = f" {self.version}" if self.version else ""
            self.emit(Ready(f"reading chat events from Streamer.bot{version}"))
            if not ok:
                self.emit(
                    Problem(
                        f"Streamer.bot refused the chat subscription ({error}): update "
                        "Streamer.bot, or check its WebSocket server settings"
                    )
                )
                return
            missing = self._missing(reply.get("events"))
            if missing:
                # Not an error: an older Streamer.bot lacks some platforms' events, and a
                # streamer who does not use those platforms loses nothing.
                log.warning("%s", missing)
            self.emit(Problem(""))

    @staticmethod
    def _missing(granted: Any) -> str:
        """A problem line for events asked for but not granted ("" if all were)."""
        if not isinstance(granted, dict):
            return ""
        missing = [
            f"{source}.{kind}"
            for source, kinds in subscribe_request()["events"].items()
            for kind in kinds
            if kind not in (granted.get(source) or ())
        ]
        if not missing:
            return ""
        shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        return f"Streamer.bot did not subscribe {shown}: update Streamer.bot to read those"

    def parse(self, value: Any, received: Received) -> Iterable[ChatMessage | ModerationEvent]:
        if not isinstance(value, dict):
            return
        if value.get("request") == "Hello" and self.step is _Step.HELLO:
            self._on_hello(value)
            return
        if "status" in value and value.get("id") in (AUTH_ID, INFO_ID, SUBSCRIBE_ID):
            self._on_reply(value)
            return
        message = parse_streamerbot_event(
            value, channel=self.channel, received_at=received.at, received=received
        )
        if message is not None:
            yield message
            return
        event = parse_streamerbot_moderation(
            value, channel=self.channel, received_at=received.at, received=received
        )
        if event is not None:
            yield event


class StreamerbotSource(LinkedSource):
    name = "streamerbot"

    def __init__(
        self,
        *,
        channel: str,
        server_url: str | None = None,
        password: str | None = None,
        on_status: StatusCallback | None = None,
        on_moderation: ModerationCallback | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        hello_timeout: float = HELLO_TIMEOUT,
        **link_options: Any,
    ) -> None:
        self.channel = safe_channel(channel, "streamerbot")
        self._hello_timeout = hello_timeout
        self.url = server_url or DEFAULT_URL
        self._password = password or None
        self._wall = wall_clock
        self._clock = clock
        self.link = WebSocketLink(
            name="streamerbot",
            title="Streamer.bot",
            url=self.url,
            new_session=self._new_session,
            on_status=on_status,
            on_moderation=on_moderation,
            refused_hint="is it running with its WebSocket server on?",
            clock=clock,
            **link_options,
        )
        self.stats = self.link.stats

    def _new_session(self) -> StreamerbotSession:
        return StreamerbotSession(
            channel=self.channel,
            password=self._password,
            now=self._clock(),
            wall_clock=self._wall,
            hello_timeout=self._hello_timeout,
        )


# ----------------------------------------------------------------------------- descriptor

PASSWORD_SECRET = SecretSpec(
    keyring="streamerbot_password",
    env="CAPTAFLOW_STREAMERBOT_PASSWORD",
    doc="Streamer.bot WebSocket server password (only if its Authentication is on)",
)


def _build(config: SourceConfig) -> ChatSource:
    return StreamerbotSource(
        channel=config.channel,
        server_url=config.server_url or None,
        password=config.secrets.get(PASSWORD_SECRET.keyring),
        on_status=config.on_status,
        on_moderation=config.on_moderation,
    )


DESCRIPTOR = SourceDescriptor(
    kind="streamerbot",
    title="Streamer.bot",
    summary="Streamer.bot's WebSocket server: Twitch, YouTube, Kick and Trovo chat",
    default_url=DEFAULT_URL,
    settings=(),
    secrets=(PASSWORD_SECRET,),
    needs_channel=False,
    via="streamerbot",
    build=_build,
)
