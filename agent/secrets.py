"""Secrets of the chat sources: from the environment, else the OS keyring; never a file.

Each source declares its secrets as `SecretSpec`s (an environment variable and a keyring entry
name, service "CaptaFlow"). Reading tries the environment first, so a CI job or a shell can
override what the keyring holds; then the keyring. `CAPTAFLOW_NO_KEYRING=1` turns the keyring
off entirely (tests, and machines whose keyring prompts or hangs).

    CAPTAFLOW_TWITCH_TOKEN          twitch_token           Twitch OAuth token
    CAPTAFLOW_STREAMERBOT_PASSWORD  streamerbot_password   Streamer.bot WebSocket password
    CAPTAFLOW_SSN_SESSION           ssn_session            Social Stream Ninja session id

A secret's value never appears in a log line, an error message or `list_secrets()`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import SettingsError

if TYPE_CHECKING:
    from agent.sources.base import SecretSpec

log = logging.getLogger(__name__)

KEYRING_SERVICE = "CaptaFlow"
NO_KEYRING_ENV = "CAPTAFLOW_NO_KEYRING"


@dataclass(frozen=True, slots=True)
class SecretState:
    """Whether one secret is set, and where; never its value."""

    name: str  # the keyring entry, e.g. "twitch_token"
    env: str  # the environment variable, e.g. "CAPTAFLOW_TWITCH_TOKEN"
    doc: str
    where: str  # "environment", "keyring" or "" (not set)


def keyring_disabled(environ: Mapping[str, str] | None = None) -> bool:
    value = (environ if environ is not None else os.environ).get(NO_KEYRING_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def known_secrets() -> tuple[SecretSpec, ...]:
    """Every secret some source declares, once each, in the sources' order."""
    from agent.sources import DESCRIPTORS  # the sources import this module: import late

    seen: dict[str, SecretSpec] = {}
    for descriptor in DESCRIPTORS:
        for spec in descriptor.secrets:
            seen.setdefault(spec.keyring, spec)
    for spec in aws_secrets():
        seen.setdefault(spec.keyring, spec)
    return tuple(seen.values())


def aws_secrets() -> tuple[SecretSpec, ...]:
    """The uploader's AWS keys, for a PC whose AWS chain (~/.aws, a profile) has none:
    `agent.credentials` reads these same keyring entries."""
    from agent.sources.base import SecretSpec

    return (
        SecretSpec("aws_access_key_id", "AWS_ACCESS_KEY_ID", "AWS access key id for uploads"),
        SecretSpec(
            "aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "AWS secret access key for uploads"
        ),
        SecretSpec(
            "aws_session_token", "AWS_SESSION_TOKEN", "AWS session token (temporary keys only)"
        ),
    )


def find_secret(name: str) -> SecretSpec:
    """A secret by its keyring entry or its environment variable (any case)."""
    wanted = name.strip().lower()
    for spec in known_secrets():
        if wanted in (spec.keyring.lower(), spec.env.lower()):
            return spec
    names = ", ".join(spec.keyring for spec in known_secrets())
    raise SettingsError(f"unknown secret {name!r}: use one of {names}")


def _keyring_get(entry: str) -> str | None:
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:  # pragma: no cover - keyring is a run-time dependency
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, entry)
    except (KeyringError, RuntimeError, OSError) as exc:
        # The text may come from D-Bus or a Windows API and is no use to a streamer: type only.
        log.info("OS keyring unavailable (%s); reading %s skipped", type(exc).__name__, entry)
        return None


def _lookup(spec: SecretSpec, environ: Mapping[str, str]) -> tuple[str | None, str]:
    from agent.logs import register_secret

    value = environ.get(spec.env, "").strip()
    if value:
        register_secret(value)  # masked in every log record from now on
        return value, "environment"
    if keyring_disabled(environ):
        return None, ""
    stored = (_keyring_get(spec.keyring) or "").strip()
    if stored:
        register_secret(stored)
    return (stored, "keyring") if stored else (None, "")


def read_secret(spec: SecretSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret's value (environment first, then keyring), or None when it is not set."""
    value, _ = _lookup(spec, os.environ if environ is None else environ)
    return value


def read_secrets(
    specs: Iterable[SecretSpec], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The set ones among `specs`, by keyring entry name (what `SourceConfig.secrets` holds)."""
    found: dict[str, str] = {}
    for spec in specs:
        value = read_secret(spec, environ)
        if value is not None:
            found[spec.keyring] = value
    return found


def store_secret(name: str, value: str) -> SecretSpec:
    """Keep a secret in the OS keyring (service "CaptaFlow"); returns whose it is."""
    spec = find_secret(name)
    value = value.strip()
    if not value:
        raise SettingsError(f"the {spec.keyring} secret is empty: nothing was stored")
    if keyring_disabled():
        raise SettingsError(
            f"the OS keyring is turned off ({NO_KEYRING_ENV} is set): set {spec.env} in the "
            "environment instead"
        )
    try:
        import keyring
        from keyring.errors import KeyringError

        keyring.set_password(KEYRING_SERVICE, spec.keyring, value)
    except (ImportError, KeyringError, RuntimeError, OSError) as exc:
        raise SettingsError(
            f"cannot store {spec.keyring} in the OS keyring ({type(exc).__name__}): set "
            f"{spec.env} in the environment instead"
        ) from None
    return spec


def list_secrets(environ: Mapping[str, str] | None = None) -> list[SecretState]:
    """Every known secret and where it is set ("environment", "keyring" or ""), no values."""
    env = os.environ if environ is None else environ
    return [
        SecretState(spec.keyring, spec.env, spec.doc, _lookup(spec, env)[1])
        for spec in known_secrets()
    ]
