"""A stand-in for the OS keyring (Windows Credential Manager, macOS Keychain, Secret Service)
for the processes tests start: `PYTHON_KEYRING_BACKEND=tests.keyring_backend.FileKeyring`,
with the entries kept in the JSON file named by `CAPTAFLOW_TEST_KEYRING_FILE`.

It implements keyring's public backend interface (`keyring.backend.KeyringBackend`), so the
code under test goes through the real `keyring` package exactly as on a streamer's PC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend


class FileKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]  # keyring declares it as a class property

    def _path(self) -> Path:
        return Path(os.environ["CAPTAFLOW_TEST_KEYRING_FILE"])

    def _entries(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._path().read_text(encoding="utf-8")))
        except FileNotFoundError:
            return {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._entries().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        entries = self._entries()
        entries[f"{service}/{username}"] = password
        self._path().write_text(json.dumps(entries), encoding="utf-8")

    def delete_password(self, service: str, username: str) -> None:
        entries = self._entries()
        entries.pop(f"{service}/{username}", None)
        self._path().write_text(json.dumps(entries), encoding="utf-8")
