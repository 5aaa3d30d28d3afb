"""Social Stream Ninja: chat from many more sites (YouTube, TikTok, Facebook, Kick, Rumble...)
through its WebSocket API relay.

Setup in Social Stream Ninja (Global settings > Mechanics), per its API documentation
(github.com/steveseguin/social_stream, api.md "Quick Start: Receiving Chat Messages"):
"Enable remote API control of extension" and "Send chat messages to API server" (the third
toggle). Its chat then goes out on channel 4 of the relay at wss://io.socialstream.ninja.

The two join styles of the relay (api.md "Connecting to the API Server") are both read:

* by URL: `server_url = "wss://io.socialstream.ninja/join/SESSION/4"` (IN channel 4; an OUT
  channel may follow). Kept for old settings, but it leaves the id in the config file;
* by message (preferred): connect to `wss://io.socialstream.ninja` (or `/api`, `/dock`: any
  path without `/join/`) and send `{"join": SESSION, "in": 4}`, with the session id from the
  secret `ssn_session` (CAPTAFLOW_SSN_SESSION or the keyring). A secret given as a whole join
  URL is accepted too. The id is never logged: status lines show `/join/***`.

Messages are flat JSON objects (README "Message structure", docs/event-reference.html):
`chatname` (display name), `chatmessage` (may hold HTML: emotes as `<img alt="...">`,
escaped entities, unless `textonly`), `type` (the site: "youtube", "youtubeshorts",
"twitch", "kick", "tiktok", ...), `userid`, `id` (an internal counter), `timestamp` (ms),
`hasDonation`, `meta.messageId` (the site's own id, when known) and `event` for stream events.
An `event` row is not chat (follows, viewer counts) except the paid messages that carry a
viewer's words: `superchat`, `supersticker`, and `donation` rows with text (older builds
sent Super Chats as `donation`). Some relays wrap the object as `{"overlayNinja": {...}}` or
`{"content": {...}}`; both are unwrapped.

Dedup key: the site's `meta.messageId` when present; else a content hash of (platform,
channel, userid/chatname + id, timestamp, text), since SSN's `id` is a per-run counter.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable, Iterable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

from agent.errors import SourceError
from agent.sources.base import (
    ChatSource,
    SecretSpec,
    SourceConfig,
    SourceDescriptor,
    StatusCallback,
)
from agent.sources.entry import MAX_NAME, MAX_TEXT, clip, usable_id
from agent.sources.jsonws import (
    JsonSession,
    Received,
    platform_name,
    safe_channel,
    scalar_text,
)
from agent.sources.link import LinkedSource, Problem, Ready, WebSocketLink
from agent.vocab import ChatMessage, content_message_id

DEFAULT_URL = "wss://io.socialstream.ninja"
CHAT_CHANNEL = 4
VIA = "ssn"
# `event` values of paid rows whose `chatmessage` is a viewer's own words.
PAID_EVENTS = frozenset({"superchat", "supersticker", "donation"})

_SPACES = re.compile(r"\s+")
_SESSION = re.compile(r"[A-Za-z0-9_.-]{1,200}")


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
        return _SPACES.sub(" ", fragment).strip()
    # HTMLParser is linear, but a bridge may send megabytes: only so much can be chat.
    fragment = fragment[: MAX_TEXT * 20]
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


def is_viewer_text(obj: dict[str, Any]) -> bool:
    """Plain chat rows, and the paid rows that carry the viewer's words."""
    event = obj.get("event")
    if not event:  # absent, false, "" or null: a chat row
        return True
    return isinstance(event, str) and event.strip().lower() in PAID_EVENTS


def parse_ssn_message(
    obj: Any, *, channel: str, received_at: float, received: Received | None = None
) -> ChatMessage | None:
    """One Social Stream Ninja payload as a ChatMessage; None for events and non-chat."""
    obj = _unwrap(obj)
    if not isinstance(obj, dict) or not is_viewer_text(obj):
        return None
    raw = scalar_text(obj.get("chatmessage"))
    if raw is None:
        return None
    text = raw.strip() if obj.get("textonly") is True else html_to_text(raw)
    if not text:
        return None
    text = clip(text)
    platform = platform_name(obj.get("type"))
    name = clip(scalar_text(obj.get("chatname")) or "", MAX_NAME)
    author = clip(scalar_text(obj.get("userid")) or name, MAX_NAME)
    check = received or Received(received_at)
    sent_at = check.time(obj.get("timestamp"))
    meta = obj.get("meta")
    native = usable_id(scalar_text(meta.get("messageId")) if isinstance(meta, dict) else None)
    raw_id = scalar_text(obj.get("id")) or scalar_text(obj.get("mid")) or ""
    message_id = native or content_message_id(
        platform, channel, f"{author}\x1f{raw_id[:100]}", sent_at, text
    )
    return ChatMessage(
        platform,
        channel,
        message_id,
        author,
        text,
        sent_at,
        received_at,
        author_name=name,
        via=VIA,
    )


def join_target(server_url: str, session: str | None) -> tuple[str, str | None, str]:
    """(URL to connect to, session id to send in a join message or None, URL for logs).

    A `/join/SESSION[/IN[/OUT]]` URL joins by itself (a missing IN channel is set to 4); any
    other URL needs the session, sent as `{"join": SESSION, "in": 4}`."""
    if session and "/join/" in session:
        server_url, session = session, None  # a whole join URL stored as the secret
    parts = urlsplit(server_url)
    base = f"{parts.scheme}://{parts.netloc}"
    segments = [s for s in parts.path.split("/") if s]
    if "join" in segments and len(segments) > segments.index("join") + 1:
        at = segments.index("join")
        rest = segments[at + 2 :] or [str(CHAT_CHANNEL)]
        path = "/".join([*segments[: at + 2], *rest])
        shown_path = "/".join([*segments[:at], "join", "***", *rest])
        return f"{base}/{path}", None, f"{base}/{shown_path}"
    if not session:
        raise SourceError(
            "Social Stream Ninja needs your session id: run `captaflow secrets set ssn_session` "
            "or set CAPTAFLOW_SSN_SESSION (it is in the dock.html link of Social Stream Ninja)"
        )
    if not _SESSION.fullmatch(session):
        raise SourceError(
            "the Social Stream Ninja session id has characters it never has: copy it again "
            "from Social Stream Ninja (letters and digits)"
        )
    return server_url, session, server_url


class SsnSession(JsonSession):
    """One relay connection: the join message (if any), then chat rows."""

    def __init__(
        self, *, channel: str, session: str | None, in_channel: int | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.channel = channel
        if session is not None:
            self.send(json.dumps({"join": session, "in": CHAT_CHANNEL}))
        # The relay sends no welcome: once joined, all there is to wait for is chat.
        self.emit(Ready("joined the Social Stream Ninja relay, waiting for chat"))
        if in_channel is not None and in_channel != CHAT_CHANNEL:
            self.emit(
                Problem(
                    f"the join URL listens on channel {in_channel}, but Social Stream Ninja "
                    f"sends chat on channel {CHAT_CHANNEL}: end the URL with /join/SESSION/4"
                )
            )

    def parse(self, value: Any, received: Received) -> Iterable[ChatMessage]:
        items = value if isinstance(value, list) else [value]
        for item in items:
            message = parse_ssn_message(
                item, channel=self.channel, received_at=received.at, received=received
            )
            if message is not None:
                yield message


def _in_channel(url: str) -> int | None:
    segments = [s for s in urlsplit(url).path.split("/") if s]
    if "join" in segments and len(segments) > segments.index("join") + 2:
        value = segments[segments.index("join") + 2]
        return int(value) if value.isascii() and value.isdigit() and len(value) < 4 else None
    return None


class SocialStreamSource(LinkedSource):
    name = "ssn"

    def __init__(
        self,
        *,
        channel: str,
        server_url: str | None = None,
        session: str | None = None,
        on_status: StatusCallback | None = None,
        wall_clock: Callable[[], float] = time.time,
        **link_options: Any,
    ) -> None:
        url, join_session, shown = join_target(server_url or DEFAULT_URL, session)
        self.url = url
        self.channel = safe_channel(channel, "socialstream")
        in_channel = _in_channel(url)
        # The relay times idle links out "every minute or so" (README, "Websocket API"): a
        # link that lasted 10 s was a good one, so its end never grows the backoff.
        link_options.setdefault("stable_after", 10.0)
        self.link = WebSocketLink(
            name="ssn",
            title="Social Stream Ninja",
            url=url,
            url_for_log=shown,
            new_session=lambda: SsnSession(
                channel=self.channel,
                session=join_session,
                in_channel=in_channel,
                wall_clock=wall_clock,
            ),
            on_status=on_status,
            refused_hint="is the relay address right?",
            **link_options,
        )
        self.stats = self.link.stats

    def url_for_log(self) -> str:
        return self.link.shown_url


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
