"""What a chat source is, and how it describes itself.

Every source module declares one `SourceDescriptor` named `DESCRIPTOR`: its kind, the settings
keys it reads under `[source]`, the secrets it needs (with their environment variable and OS
keyring names), its default address, how it names the platform of each message and how it is
built. The settings schema, the command line's choices, the tray and the assembly all read the
list in `agent.sources.DESCRIPTORS`, so adding a source is one new module plus its tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.checks import Check
from agent.vocab import ChatMessage, ModerationEvent, SourceStatus

StatusCallback = Callable[[SourceStatus], None]
ModerationCallback = Callable[[ModerationEvent], None]


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


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One key under `[source]` that a source reads (for example `login` or `file`)."""

    name: str
    default: Any
    check: Check
    doc: str
    is_path: bool = False


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """A secret a source may use: read from `env`, else from the OS keyring entry `keyring`."""

    keyring: str  # entry name in the OS keyring (service "CaptaFlow"), e.g. "twitch_token"
    env: str  # environment variable, e.g. "CAPTAFLOW_TWITCH_TOKEN"
    doc: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """Everything a source is built from; made by the assembly from typed settings."""

    kind: str
    channel: str
    server_url: str  # "" = the descriptor's default_url
    options: Mapping[str, Any]  # this source's own settings, by SettingSpec.name
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)  # by SecretSpec.keyring
    on_status: StatusCallback | None = None
    on_moderation: ModerationCallback | None = None


@dataclass(frozen=True, slots=True)
class SourceDescriptor:
    kind: str  # "twitch", "streamerbot", ...
    title: str  # what a person calls it: "Streamer.bot"
    summary: str  # one line for --help, the config file and the tray
    default_url: str  # "" = none (the source needs a file or an explicit address)
    settings: tuple[SettingSpec, ...]
    secrets: tuple[SecretSpec, ...]
    needs_channel: bool
    # The bridge's name for the `via` column ("" for a source that reads one platform itself).
    via: str
    build: Callable[[SourceConfig], ChatSource]
    # Why the settings cannot work, in one line saying what to do, or None. Pure: no I/O.
    setup_problem: Callable[[SourceConfig], str | None] = lambda config: None
