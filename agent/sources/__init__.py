"""Chat sources: one module per source, all behind one small interface.

A source yields `ChatMessage`s from an async generator, reconnects by itself inside it, and
says how its link is doing through `status()` and an optional `on_status` callback. Moderation
(deleted messages, bans) goes to an optional `on_moderation` callback so the journal can keep
removed messages out of readings. Which source runs is configuration (`make_source`).

    kind          module                     what it reads
    twitch        agent.sources.twitch       Twitch chat over WebSocket (IRC)
    streamerbot   agent.sources.streamerbot  Streamer.bot's WebSocket server (Twitch, YouTube,
                                             Kick, Trovo chat events)
    ssn           agent.sources.ssn          Social Stream Ninja's WebSocket API
    ws            agent.sources.jsonws       any JSON-over-WebSocket feed, with a field mapping
    replay        agent.sources.replay       a recorded chat file (JSONL or raw Twitch IRC)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.errors import SettingsError
from agent.vocab import ChatMessage, SourceStatus

SOURCE_KINDS: tuple[str, ...] = ("twitch", "streamerbot", "ssn", "ws", "replay")

StatusCallback = Callable[[SourceStatus], None]
ModerationCallback = Callable[[Any], None]


@runtime_checkable
class ChatSource(Protocol):
    """What every source implements."""

    name: str

    def status(self) -> SourceStatus: ...

    def messages(self) -> AsyncIterator[ChatMessage]:
        """An async generator of messages; reconnects inside. It ends only for a finite source
        (a replay at its end) or after `close()`."""
        ...

    async def close(self) -> None: ...


def make_source(
    kind: str,
    *,
    channel: str,
    server_url: str | None,
    file: Path | None,
    speed: str | float,
    token: str | None,
    mapping: Mapping[str, str] | None,
    on_status: StatusCallback | None = None,
    on_moderation: ModerationCallback | None = None,
) -> ChatSource:
    """The source the configuration names. Imports lazily: only the chosen one is loaded.

    `server_url` overrides each WebSocket source's default address. `token` is the secret of
    the chosen source: the Twitch OAuth token, the Streamer.bot WebSocket password, or the
    Social Stream Ninja session id (anyone holding it can control the extension, so it is
    treated as a secret). `mapping` is the field mapping of the generic `ws` source;
    `file` and `speed` ("max" or a factor such as 1, 2.5) drive `replay`.
    """
    kind = (kind or "").strip().lower()
    if kind == "twitch":
        from agent.sources.twitch import TwitchSource

        return TwitchSource(
            channel=channel,
            server_url=server_url,
            token=token,
            on_status=on_status,
            on_moderation=on_moderation,
        )
    if kind == "streamerbot":
        from agent.sources.streamerbot import StreamerbotSource

        return StreamerbotSource(
            channel=channel,
            server_url=server_url,
            password=token,
            on_status=on_status,
            on_moderation=on_moderation,
        )
    if kind == "ssn":
        from agent.sources.ssn import SocialStreamSource

        return SocialStreamSource(
            channel=channel, server_url=server_url, session=token, on_status=on_status
        )
    if kind == "ws":
        from agent.sources.jsonws import JsonWebSocketSource, parse_mapping

        if not server_url:
            raise SettingsError(
                "the 'ws' source needs a server address: set --server-url ws://HOST:PORT/PATH"
            )
        return JsonWebSocketSource(
            url=server_url,
            mapping=parse_mapping(mapping or {}, channel=channel),
            on_status=on_status,
        )
    if kind == "replay":
        from agent.sources.replay import ReplaySource, parse_speed

        if file is None:
            raise SettingsError("the 'replay' source needs a chat file: set --file PATH")
        return ReplaySource(
            file,
            speed=parse_speed(speed),
            channel=channel or None,
            on_status=on_status,
            on_moderation=on_moderation,
        )
    raise SettingsError(
        f"unknown chat source {kind!r}: use one of {', '.join(SOURCE_KINDS)} (--source)"
    )
