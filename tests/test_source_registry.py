"""Sources describe themselves; secrets come from the environment or the OS keyring."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keyring
import pytest
from keyring.backend import KeyringBackend

from agent import secrets
from agent.errors import SettingsError
from agent.sources import (
    DESCRIPTORS,
    SOURCE_KINDS,
    ChatSource,
    descriptor,
    open_source,
    source_config,
)


class MemoryKeyring(KeyringBackend):
    """An in-memory OS keyring (keyring's documented backend interface)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


@pytest.fixture
def memory_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    monkeypatch.delenv(secrets.NO_KEYRING_ENV, raising=False)
    for spec in secrets.known_secrets():
        monkeypatch.delenv(spec.env, raising=False)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@dataclass
class Settings:
    kind: str
    channel: str = ""
    server_url: str = ""
    login: str = ""
    file: str = ""
    speed: Any = "max"
    mapping: dict[str, str] = field(default_factory=dict)


def test_every_kind_has_one_descriptor_with_its_settings_and_secrets() -> None:
    assert SOURCE_KINDS == ("twitch", "streamerbot", "ssn", "ws", "replay")
    assert [d.kind for d in DESCRIPTORS] == list(SOURCE_KINDS)
    assert {d.kind: d.via for d in DESCRIPTORS} == {
        "twitch": "",
        "streamerbot": "streamerbot",
        "ssn": "ssn",
        "ws": "ws",
        "replay": "",
    }
    names = {d.kind: {s.name for s in d.settings} for d in DESCRIPTORS}
    assert names["twitch"] >= {"login", "validate_url"}
    assert names["replay"] == {"file", "speed"}
    assert names["ws"] == {"mapping"}
    envs = {s.env for d in DESCRIPTORS for s in d.secrets}
    assert envs == {
        "CAPTAFLOW_TWITCH_TOKEN",
        "CAPTAFLOW_STREAMERBOT_PASSWORD",
        "CAPTAFLOW_SSN_SESSION",
    }
    with pytest.raises(SettingsError, match="use one of twitch, streamerbot"):
        descriptor("irc")


def test_settings_checks_accept_the_documented_mapping_and_name_the_bad_key() -> None:
    [mapping] = descriptor("ws").settings
    good = {"where": "type=chat", "text": "data.text", "platform": "=youtube"}
    assert mapping.check(good, False) == good
    with pytest.raises(ValueError, match="'where'"):
        mapping.check({"where": "type"}, False)
    with pytest.raises(ValueError, match="'colour'"):
        mapping.check({"colour": "x"}, False)


def test_open_source_reads_the_secret_from_the_environment(
    memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory_keyring.set_password("CaptaFlow", "ssn_session", "from-keyring")
    config = source_config(Settings("ssn"))
    assert config.secrets == {"ssn_session": "from-keyring"}
    monkeypatch.setenv("CAPTAFLOW_SSN_SESSION", "from-env")
    assert source_config(Settings("ssn")).secrets == {"ssn_session": "from-env"}
    monkeypatch.setenv(secrets.NO_KEYRING_ENV, "1")
    monkeypatch.delenv("CAPTAFLOW_SSN_SESSION")
    assert source_config(Settings("ssn")).secrets == {}
    assert "captaflow secrets set ssn_session" in (
        descriptor("ssn").setup_problem(source_config(Settings("ssn"))) or ""
    )


def test_open_source_builds_each_kind(tmp_path: Any) -> None:
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"text": "hi", "sent_at": 1700000000}\n')
    for settings in (
        Settings("twitch", channel="xqcow"),
        Settings("streamerbot"),
        Settings("ws", server_url="ws://127.0.0.1:1/", mapping={"platform": "=kick"}),
        Settings("replay", file=str(chat)),
    ):
        source = open_source(settings, secrets={})
        assert isinstance(source, ChatSource)


def test_store_and_list_never_show_a_value(
    memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets.store_secret("streamerbot_password", "hunter2")
    monkeypatch.setenv("CAPTAFLOW_TWITCH_TOKEN", "abc")
    states = {s.name: s.where for s in secrets.list_secrets()}
    assert {
        name: states[name] for name in ("twitch_token", "streamerbot_password", "ssn_session")
    } == {
        "twitch_token": "environment",
        "streamerbot_password": "keyring",
        "ssn_session": "",
    }
    assert "hunter2" not in repr(secrets.list_secrets())
    assert memory_keyring.entries[("CaptaFlow", "streamerbot_password")] == "hunter2"
    with pytest.raises(SettingsError, match="unknown secret"):
        secrets.store_secret("aws_key", "x")
    monkeypatch.setenv(secrets.NO_KEYRING_ENV, "1")
    with pytest.raises(SettingsError, match="CAPTAFLOW_SSN_SESSION"):
        secrets.store_secret("CAPTAFLOW_SSN_SESSION", "x")
