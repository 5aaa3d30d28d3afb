"""Where CaptaFlow keeps its files on this machine.

The defaults follow each platform's conventions (platformdirs): on Windows the settings go
to `%LOCALAPPDATA%\\CaptaFlow\\CaptaFlow\\config.toml`, the data to
`%LOCALAPPDATA%\\CaptaFlow\\CaptaFlow`.
Two switches move them, so tests, portable installs and a second profile never touch the
real ones: `--data-dir` / `CAPTAFLOW_DATA_DIR` (data, and the logs inside it) and
`--config` / `CAPTAFLOW_CONFIG` (the settings file).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "CaptaFlow"
APP_AUTHOR = "CaptaFlow"
CONFIG_FILE_NAME = "config.toml"
STATUS_FILE_NAME = "status.json"
DATA_DIR_ENV = "CAPTAFLOW_DATA_DIR"
CONFIG_ENV = "CAPTAFLOW_CONFIG"
# The model bundle `packaging/build.py --model DIR` packs into the executable, under this
# name inside its files (sys._MEIPASS); CAPTAFLOW_BUNDLED_MODEL points elsewhere (tests).
BUNDLED_MODEL_NAME = "captaflow-model"
BUNDLED_MODEL_ENV = "CAPTAFLOW_BUNDLED_MODEL"
# Where `captaflow model get` downloads a bundle from by default: the project's release.
DEFAULT_BUNDLE_URL = (
    "https://github.com/captaflow/captaflow/releases/latest/download/captaflow-model.tar.gz"
)


@dataclass(frozen=True, slots=True)
class Locations:
    """The resolved places; nothing here is created until someone needs it."""

    config_file: Path
    data_dir: Path
    log_dir: Path
    # Where each choice came from, for `captaflow config --show`: "flag", "environment"
    # (CAPTAFLOW_CONFIG / CAPTAFLOW_DATA_DIR) or "default" (the platform's folders).
    config_origin: str = "default"
    data_origin: str = "default"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "model"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite3"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def status_file(self) -> Path:
        # The running agent's snapshot, which `captaflow status` in another process reads.
        return self.data_dir / STATUS_FILE_NAME

    @property
    def lock_file(self) -> Path:
        # Beside the data it protects: two agents on one data dir would fight over the spool.
        from agent.single_instance import LOCK_FILE_NAME

        return self.data_dir / LOCK_FILE_NAME


def _expand(raw: str | os.PathLike[str]) -> Path:
    return Path(os.path.expandvars(os.fspath(raw))).expanduser().absolute()


def resolve_locations(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Locations:
    """Flags win over the environment, which wins over the platform defaults."""
    environ = os.environ if env is None else env
    chosen_data = data_dir or environ.get(DATA_DIR_ENV) or None
    chosen_config = config or environ.get(CONFIG_ENV) or None

    if chosen_data:
        data = _expand(chosen_data)
        # A moved data dir takes its logs along: one folder holds everything of that profile.
        logs = data / "logs"
    else:
        data = platformdirs.user_data_path(APP_NAME, APP_AUTHOR)
        logs = platformdirs.user_log_path(APP_NAME, APP_AUTHOR)
    if chosen_config:
        config_file = _expand(chosen_config)
    else:
        config_file = platformdirs.user_config_path(APP_NAME, APP_AUTHOR) / CONFIG_FILE_NAME
    return Locations(
        config_file=config_file,
        data_dir=data,
        log_dir=logs,
        config_origin=_origin(config, environ.get(CONFIG_ENV)),
        data_origin=_origin(data_dir, environ.get(DATA_DIR_ENV)),
    )


def _origin(flag: object, environment: str | None) -> str:
    if flag:
        return "flag"
    return "environment" if environment else "default"


def location_problem(locations: Locations) -> str | None:
    """Why these places cannot be used (a file where a folder belongs, or the reverse), as one
    line saying what to do; None when they can (missing folders are created when needed)."""
    data, config = locations.data_dir, locations.config_file
    blocker = _first_existing(data)
    if blocker is not None and not blocker.is_dir():
        named = {"flag": "--data-dir", "environment": DATA_DIR_ENV}.get(locations.data_origin)
        what = "is a file" if blocker == data else f"cannot be made ({blocker} is a file)"
        todo = f"give {named} a folder" if named else f"move {blocker} away"
        return f"the data folder {data} {what}: {todo} (a missing folder is created)"
    if config.is_dir():
        named = {"flag": "--config", "environment": CONFIG_ENV}.get(locations.config_origin)
        return f"the settings file {config} is a folder: " + (
            f"give {named} a file name" if named else "move that folder away"
        )
    return None


def _first_existing(path: Path) -> Path | None:
    """`path` or its nearest ancestor that exists (None only if not even the root does)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def bundled_model_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The model packed into the executable (or named by CAPTAFLOW_BUNDLED_MODEL), if any."""
    environ = os.environ if env is None else env
    named = environ.get(BUNDLED_MODEL_ENV)
    if named:
        candidate = _expand(named)
    else:
        base = getattr(sys, "_MEIPASS", None)
        if base is None:
            return None
        candidate = Path(base) / BUNDLED_MODEL_NAME
    return candidate if (candidate / "manifest.json").is_file() else None


def default_model_dir(locations: Locations, env: Mapping[str, str] | None = None) -> Path:
    """The model used when none is set: one exported or downloaded into the data folder,
    else the one packed into the executable, else the data folder's (not there yet)."""
    own = locations.model_dir
    if (own / "manifest.json").is_file():
        return own
    return bundled_model_dir(env) or own
