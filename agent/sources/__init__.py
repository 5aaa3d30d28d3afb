"""Chat sources: one module per source, each describing itself with a `DESCRIPTOR`.

A source yields `ChatMessage`s from an async generator, reconnects by itself inside it, and
says how its link is doing through `status()` and an optional `on_status` callback. Moderation
(deleted messages, bans) goes to an optional `on_moderation` callback so the journal can keep
removed messages out of readings.

    kind          module                     what it reads
    twitch        agent.sources.twitch       Twitch chat over WebSocket (IRC)
    streamerbot   agent.sources.streamerbot  Streamer.bot's WebSocket server (Twitch, YouTube,
                                             Kick, Trovo chat events)
    ssn           agent.sources.ssn          Social Stream Ninja's WebSocket API relay
    ws            agent.sources.jsonws       any JSON-over-WebSocket feed, with a field mapping
    replay        agent.sources.replay       a recorded chat file (JSONL or raw Twitch IRC)

The settings schema (`[source]` keys), the command line's `--source` choices, the tray and the
assembly all read `DESCRIPTORS`; `open_source` turns settings into a running source. Adding a
source is one new module with a `DESCRIPTOR`, listed in `_MODULES`, plus its tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import SettingsError
from agent.sources.base import (
    ChatSource,
    ModerationCallback,
    SecretSpec,
    SettingSpec,
    SourceConfig,
    SourceDescriptor,
    StatusCallback,
)

__all__ = [
    "DESCRIPTORS",
    "SOURCE_KINDS",
    "ChatSource",
    "ModerationCallback",
    "SecretSpec",
    "SettingSpec",
    "SourceConfig",
    "SourceDescriptor",
    "StatusCallback",
    "descriptor",
    "open_source",
    "source_config",
]

# The modules are light (no third-party import beyond websockets), so loading them all for
# their descriptors costs little, and keeps one list instead of a name table kept in step.
_MODULES = ("twitch", "streamerbot", "ssn", "jsonws", "replay")

DESCRIPTORS: tuple[SourceDescriptor, ...] = tuple(
    importlib.import_module(f"agent.sources.{name}").DESCRIPTOR for name in _MODULES
)
SOURCE_KINDS: tuple[str, ...] = tuple(d.kind for d in DESCRIPTORS)


def descriptor(kind: str) -> SourceDescriptor:
    """The descriptor of a source kind, or a SettingsError naming the kinds there are."""
    wanted = (kind or "").strip().lower()
    for candidate in DESCRIPTORS:
        if candidate.kind == wanted:
            return candidate
    raise SettingsError(
        f"unknown chat source {kind!r}: use one of {', '.join(SOURCE_KINDS)} (--source)"
    )


def _option(settings: Any, spec: SettingSpec) -> Any:
    """A source setting from typed settings: `settings.options[name]`, else an attribute."""
    options = getattr(settings, "options", None)
    if isinstance(options, Mapping) and spec.name in options:
        return options[spec.name]
    value = getattr(settings, spec.name, spec.default)
    if spec.is_path and isinstance(value, Path):
        return str(value)
    return spec.default if value is None else value


def source_config(
    settings: Any,
    secrets: Mapping[str, str] | None = None,
    on_status: StatusCallback | None = None,
    on_moderation: ModerationCallback | None = None,
) -> SourceConfig:
    """A SourceConfig from the `[source]` settings (kind, channel, server_url and each of the
    descriptor's own keys, by name). Secrets: `secrets` by keyring name when given, else read
    per SecretSpec (environment, then the OS keyring) through `agent.secrets`."""
    found = descriptor(getattr(settings, "kind", ""))
    if secrets is None:
        from agent.secrets import read_secrets

        secrets = read_secrets(found.secrets)
    return SourceConfig(
        kind=found.kind,
        channel=(getattr(settings, "channel", "") or "").strip().lstrip("#").lower(),
        server_url=(getattr(settings, "server_url", "") or "").strip(),
        options={spec.name: _option(settings, spec) for spec in found.settings},
        secrets=dict(secrets),
        on_status=on_status,
        on_moderation=on_moderation,
    )


def open_source(
    settings: Any,
    secrets: Mapping[str, str] | None = None,
    on_status: StatusCallback | None = None,
    on_moderation: ModerationCallback | None = None,
) -> ChatSource:
    """The running source the `[source]` settings name (see `source_config`)."""
    config = source_config(settings, secrets, on_status, on_moderation)
    return descriptor(config.kind).build(config)
