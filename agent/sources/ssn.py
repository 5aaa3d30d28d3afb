"""Social Stream Ninja: chat from many more sites (YouTube, TikTok, Facebook, Kick, Rumble...)
through its WebSocket API relay (socialstream.ninja/api).

Setup in Social Stream Ninja (Global settings > Mechanics): "Enable remote API control of
extension" and "Send chat messages to API server". Its chat then goes out on channel 4 of the
relay, which we join with `{"join": SESSION_ID, "in": 4}` after connecting to
`wss://io.socialstream.ninja` (or any `--server-url`, e.g. a local relay; a URL that already
has `/join/SESSION/4` needs no join message). The session id is a secret (it controls the
extension), so it comes in as the source token, never in logs.

Messages are flat JSON objects (docs "Message structure"): `chatname` (display name),
`chatmessage` (may hold HTML: emotes as `<img alt="...">`, escaped entities), `type` (the
platform, e.g. "youtube"), `id`, `userid`, `timestamp` (ms), and `event` for stream events
(follows, viewer counts), which are not chat and are skipped. Some relays wrap the object as
`{"overlayNinja": {...}}` or `{"content": {...}}`; both are unwrapped.

Dedup key: SSN's `id` is often a per-run counter, not a platform id, so the key is a content
hash of (platform, channel, userid/chatname + id, timestamp, text): a resend of the same
message hashes the same, and a restarted extension's counter never collides with old keys.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection

from agent.errors import SourceError
from agent.sources.base import ChatSource, SecretSpec, SourceConfig, SourceDescriptor
from agent.sources.jsonws import WebSocketJsonSource, platform_name, scalar_text, time_or
from agent.vocab import ChatMessage, content_message_id, validate_name

DEFAULT_URL = "wss://io.socialstream.ninja"
CHAT_CHANNEL = 4

_SPACES = re.compile(r"\s+")


class _TextOfHtml(HTMLParser):
    """Text of an HTML fragment, with images replaced by their alt text (emotes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            values = dict(attrs)
            alt = values.get("alt") or values.get("title") or ""
            if alt:
                self.parts.append(f" {alt} ")
        elif tag == "br":
            self.parts.append(" ")


def html_to_text(fragment: str) -> str:
    """Strip tags, keep emote alt texts, unescape entities, collapse whitespace."""
    if "<" not in fragment and "&" not in fragment:
        return fragment.strip()
    parser = _TextOfHtml()
    try:
        parser.feed(fragment)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # HTMLParser is lenient, but never let a payload stop the chat
        text = html.unescape(re.sub(r"<[^>]*>", " ", fragment))
    return _SPACES.sub(" ", text).strip()


def _unwrap(obj: Any) -> Any:
    for key in ("overlayNinja", "content"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return obj


def parse_ssn_message(obj: Any, *, channel: str, received_at: float) -> ChatMessage | None:
    """One Social Stream Ninja payload as a ChatMessage; None for events and non-chat."""
    obj = _unwrap(obj)
    if not isinstance(obj, dict):
        return None
    if obj.get("event"):  # follows, viewer counts, donations-as-events: not chat
        return None
    raw = scalar_text(obj.get("chatmessage"))
    if raw is None:
        return None
    text = raw if obj.get("textonly") else html_to_text(raw)
    if not text:
        return None
    platform = platform_name(obj.get("type"))
    author = scalar_text(obj.get("chatname")) or ""
    user_key = scalar_text(obj.get("userid")) or author
    sent_at = time_or(obj.get("timestamp"), received_at)
    raw_id = scalar_text(obj.get("id")) or scalar_text(obj.get("mid")) or ""
    message_id = content_message_id(platform, channel, f"{user_key}\x1f{raw_id}", sent_at, text)
    return ChatMessage(platform, channel, message_id, author, text, sent_at, received_at)


class SocialStreamSource(WebSocketJsonSource):
    name = "ssn"

    def __init__(
        self,
        *,
        channel: str,
        server_url: str | None = None,
        session: str | None = None,
        **kwargs: Any,
    ) -> None:
        url = server_url or DEFAULT_URL
        joined_by_url = "/join/" in urlsplit(url).path
        if not session and not joined_by_url:
            raise SourceError(
                "Social Stream Ninja needs your session id: set it as the source token "
                "(Global settings > Session options in Social Stream Ninja)"
            )
        super().__init__(url, **kwargs)
        self.channel = validate_name(channel or "socialstream")
        self._session = session
        self._join_by_message = not joined_by_url

    def url_for_log(self) -> str:
        # The session id may be in the URL path; it is a secret.
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}" + ("/join/***" if "/join/" in parts.path else "")

    async def on_open(self, ws: ClientConnection) -> None:
        if self._join_by_message:
            await ws.send(json.dumps({"join": self._session, "in": CHAT_CHANNEL}))

    def parse(self, value: Any, received_at: float) -> Iterable[ChatMessage]:
        items = value if isinstance(value, list) else [value]
        for item in items:
            message = parse_ssn_message(item, channel=self.channel, received_at=received_at)
            if message is not None:
                yield message


# ----------------------------------------------------------------------------- descriptor

SESSION_SECRET = SecretSpec(
    keyring="ssn_session",
    env="CAPTAFLOW_SSN_SESSION",
    doc="Social Stream Ninja session id (it controls the extension: keep it secret)",
)


def _build(config: SourceConfig) -> ChatSource:
    return SocialStreamSource(
        channel=config.channel,
        server_url=config.server_url or None,
        session=config.secrets.get(SESSION_SECRET.keyring),
        on_status=config.on_status,
    )


def _setup_problem(config: SourceConfig) -> str | None:
    if config.secrets.get(SESSION_SECRET.keyring) or "/join/" in config.server_url:
        return None
    return (
        "no Social Stream Ninja session id: run `captaflow secrets set ssn_session` or set "
        "CAPTAFLOW_SSN_SESSION (the id is in Social Stream Ninja's session settings)"
    )


DESCRIPTOR = SourceDescriptor(
    kind="ssn",
    title="Social Stream Ninja",
    summary="Social Stream Ninja's API relay: YouTube, TikTok, Kick, Facebook and more",
    default_url=DEFAULT_URL,
    settings=(),
    secrets=(SESSION_SECRET,),
    needs_channel=False,
    via="ssn",
    build=_build,
    setup_problem=_setup_problem,
)
