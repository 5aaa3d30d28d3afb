"""Streamer.bot's WebSocket server: chat from Twitch, YouTube, Kick and Trovo through the app
many streamers already run (default ws://127.0.0.1:8080/).

Protocol (docs.streamer.bot, "WebSocket Server"): on connect the server sends a `Hello`
request; when a password is set it carries `authentication.salt` and `.challenge`, and we
answer `{"request": "Authenticate", "id": ..., "authentication": base64(sha256(
base64(sha256(password + salt)) + challenge))}`. We then send `{"request": "Subscribe",
"id": ..., "events": {"Twitch": ["ChatMessage", ...], ...}}`, and events arrive as
`{"timeStamp": ISO 8601, "event": {"source": "Twitch", "type": "ChatMessage"}, "data": {...}}`.

Chat payloads read (field names from the published event schemas):

* Twitch.ChatMessage: `data.messageId`, `data.text`, `data.user.{login,name,id}`,
  `data.meta.isMe` (Streamer.bot 0.2.5+/1.0); older versions nest `data.message.{msgId,
  username, displayName, userId, message, isMe}`. Both are accepted.
* YouTube.Message: `data.eventId`, `data.message`, `data.publishedAt`, `data.user.{id,name}`.
* Kick.ChatMessage and Trovo.ChatMessage: `data.messageId`, `data.text`,
  `data.user.{login,name,id}`.

Where a field is missing we fall back to the others' names, then to a content hash for the id
and the event's `timeStamp` for the time. Moderation (Twitch ChatMessageDeleted, UserBanned,
UserTimedOut; YouTube MessageDeleted, UserBanned) is passed to `on_moderation`; those payloads
have no published schema, so they are read tolerantly (`messageId`/`targetMessageId`,
`user_login`/`user.login`) and skipped when nothing usable is found.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection

from agent.errors import SourceError
from agent.sources.base import ChatSource, SecretSpec, SourceConfig, SourceDescriptor
from agent.sources.jsonws import WebSocketJsonSource, get_path, platform_name, scalar_text, time_or
from agent.vocab import ChatMessage, ModerationEvent, content_message_id, validate_name

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8080/"

CHAT_EVENTS: dict[str, tuple[str, ...]] = {
    "Twitch": ("ChatMessage",),
    "YouTube": ("Message",),
    "Kick": ("ChatMessage",),
    "Trovo": ("ChatMessage",),
}
MODERATION_EVENTS: dict[str, tuple[str, ...]] = {
    "Twitch": ("ChatMessageDeleted", "UserBanned", "UserTimedOut"),
    "YouTube": ("MessageDeleted", "UserBanned"),
}
SUBSCRIBE_ID = "captaflow-subscribe"
AUTH_ID = "captaflow-auth"
HELLO_TIMEOUT = 3.0


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


def parse_streamerbot_event(obj: Any, *, channel: str, received_at: float) -> ChatMessage | None:
    """A Streamer.bot chat event as a ChatMessage; None for any other event or response."""
    if not isinstance(obj, dict):
        return None
    source = scalar_text(get_path(obj, "event.source")) or ""
    kind = scalar_text(get_path(obj, "event.type")) or ""
    if kind not in CHAT_EVENTS.get(source, ()):
        return None
    data = obj.get("data")
    if not isinstance(data, dict):
        return None
    nested = data.get("message")
    legacy: dict[str, Any] = nested if isinstance(nested, dict) else {}
    text = _first_text(data, "text") or scalar_text(legacy.get("message"))
    if text is None and isinstance(data.get("message"), str):
        text = data["message"]  # YouTube.Message
    if not text or not text.strip():
        return None
    platform = platform_name(source)
    author = (
        _first_text(data, "user.login", "user.name", "user.display")
        or scalar_text(legacy.get("username"))
        or scalar_text(legacy.get("displayName"))
        or ""
    )
    if platform == "twitch" or platform == "kick":
        author = author.lower()  # logins are lower-case; display names may not be
    sent_at = time_or(
        _first_text(data, "publishedAt", "sentAt") or obj.get("timeStamp"), received_at
    )
    message_id = (
        _first_text(data, "messageId", "eventId", "msgId", "id")
        or scalar_text(legacy.get("msgId"))
        or content_message_id(platform, channel, author, sent_at, text)
    )
    action = bool(get_path(data, "meta.isMe") or legacy.get("isMe") or data.get("action"))
    return ChatMessage(platform, channel, message_id, author, text, sent_at, received_at, action)


def parse_streamerbot_moderation(
    obj: Any, *, channel: str, received_at: float
) -> ModerationEvent | None:
    """A deleted message or a banned/timed-out user, if the event is one and names a target."""
    if not isinstance(obj, dict):
        return None
    source = scalar_text(get_path(obj, "event.source")) or ""
    kind = scalar_text(get_path(obj, "event.type")) or ""
    if kind not in MODERATION_EVENTS.get(source, ()):
        return None
    data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
    at = time_or(obj.get("timeStamp"), received_at)
    platform = platform_name(source)
    if kind.endswith("Deleted"):
        target = _first_text(data, "messageId", "targetMessageId", "message_id", "eventId")
        if target is None:
            return None
        return ModerationEvent(platform, channel, "clearmsg", target, None, at)
    login = _first_text(
        data, "user_login", "user.login", "target_user_login", "bannedUser.login", "user.name"
    )
    if login is None:
        return None
    return ModerationEvent(platform, channel, "clearchat", None, login.lower(), at)


class StreamerbotSource(WebSocketJsonSource):
    name = "streamerbot"

    def __init__(
        self,
        *,
        channel: str,
        server_url: str | None = None,
        password: str | None = None,
        on_moderation: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(server_url or DEFAULT_URL, **kwargs)
        self.channel = validate_name(channel or "streamerbot")
        self._password = password
        self._on_moderation = on_moderation

    async def on_open(self, ws: ClientConnection) -> None:
        hello: Any = None
        try:
            first = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
            hello = json.loads(first)
        except TimeoutError:
            pass  # servers before the Hello message start silent
        except ValueError:
            self.stats.malformed += 1
        if isinstance(hello, dict) and hello.get("request") == "Hello":
            auth = hello.get("authentication")
            if isinstance(auth, dict) and auth.get("salt") and auth.get("challenge"):
                if not self._password:
                    raise SourceError(
                        "Streamer.bot's WebSocket server asks for a password: set it as the "
                        "source token, or turn authentication off in Streamer.bot"
                    )
                await ws.send(
                    json.dumps(
                        {
                            "request": "Authenticate",
                            "id": AUTH_ID,
                            "authentication": authentication_string(
                                self._password, str(auth["salt"]), str(auth["challenge"])
                            ),
                        }
                    )
                )
        elif hello is not None:
            await self._handle_frame(first)
        await ws.send(json.dumps(subscribe_request()))

    def parse(self, value: Any, received_at: float) -> Iterable[ChatMessage]:
        if isinstance(value, dict) and value.get("id") in (AUTH_ID, SUBSCRIBE_ID):
            if str(value.get("status", "ok")).lower() != "ok":
                if value.get("id") == AUTH_ID:
                    raise SourceError(
                        "Streamer.bot refused the WebSocket password: check the source token"
                    )
                log.warning("Streamer.bot refused part of the subscription: %s", value)
            return
        message = parse_streamerbot_event(value, channel=self.channel, received_at=received_at)
        if message is not None:
            yield message
            return
        event = parse_streamerbot_moderation(value, channel=self.channel, received_at=received_at)
        if event is not None and self._on_moderation is not None:
            self._on_moderation(event)


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
