"""Settings: one TOML file with comments, flags on top, secrets never inside.

`load_settings(path, overrides)` reads the file (or the defaults when it does not exist yet),
applies the command line's overrides (dotted keys such as `"window.messages"`; `None` values
are ignored so argparse namespaces can be passed through), validates every value and returns a
frozen `Settings`. Anything wrong raises `SettingsError` with one line naming the key, the value,
where it came from and what is expected:

    window.messages = -3 in C:\\Users\\me\\AppData\\Roaming\\CaptaFlow\\CaptaFlow\\config.toml:
    expected a whole number ≥ 1

The schema below is the single source of truth: defaults, checks and the comments written into
a fresh file all come from it, so the file on disk and the code cannot drift apart.

Secrets (the Twitch OAuth token, AWS keys) are read from the environment or the OS keyring
(service "CaptaFlow") by `load_secrets()`, never from the TOML: a secret-looking key in the file
is refused with a message saying where it belongs.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent import logs
from agent.checks import (
    Expected,
    aws_region,
    boolean,
    bucket_name,
    choice,
    dotted_path,
    key_prefix,
    name_or_empty,
    names_list,
    number,
    speed,
    subset,
    text,
    whole,
)
from agent.errors import SettingsError
from agent.paths import (
    CONFIG_ENV,
    DATA_DIR_ENV,
    DEFAULT_BUNDLE_URL,
    Locations,
    default_model_dir,
    location_problem,
    resolve_locations,
)
from agent.vocab import DEFAULT_DISPLAYED, LABELS

SOURCE_KINDS = ("twitch", "streamerbot", "ssn", "ws", "replay")
PREVIEWS = ("message", "batch", "summary")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Upper bounds: a value past them is a typo (an extra zero), not a wish, and some would hang
# the agent (100000 scoring threads) or fill the disk before any warning.
CPU_CORES = os.cpu_count() or 1
MAX_MB = 1_048_576  # 1 TB

KEYRING_SERVICE = "CaptaFlow"
NO_KEYRING_ENV = "CAPTAFLOW_NO_KEYRING"


# ---------------------------------------------------------------------------------------------
# The schema.


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    default: Any
    check: Callable[[Any, bool], Any]
    doc: str
    is_path: bool = False


_SCHEMA: dict[str, tuple[_Key, ...]] = {
    "source": (
        _Key(
            "kind",
            "twitch",
            choice(*SOURCE_KINDS),
            'Where chat comes from: "twitch" (read-only, no account needed), "streamerbot"\n'
            '(Streamer.bot\'s WebSocket server), "ssn" (Social Stream Ninja), "ws" (any JSON\n'
            'WebSocket, see [source.mapping]) or "replay" (a recorded chat file).',
        ),
        _Key(
            "channel",
            "",
            name_or_empty("channel"),
            'The channel to read, for example "xqcow" (without the #).',
        ),
        _Key(
            "server_url",
            "",
            text,
            "Leave empty for the usual address of the chosen kind (Twitch, Streamer.bot on\n"
            'ws://127.0.0.1:8080/, Social Stream Ninja); required for kind = "ws".',
        ),
        _Key("file", "", text, 'For kind = "replay": the chat recording to play.', is_path=True),
        _Key(
            "speed",
            "recorded",
            speed,
            'For kind = "replay": "recorded" (real time), "max" (as fast as possible) or a\n'
            "speed-up factor such as 4.",
        ),
        _Key(
            "login",
            "",
            name_or_empty("login"),
            "Your Twitch login, only if you give CaptaFlow a token (CAPTAFLOW_TWITCH_TOKEN or\n"
            "the OS keyring). Empty = read anonymously, which is enough to read chat.",
        ),
    ),
    "source.mapping": (
        _Key(
            "text",
            "text",
            dotted_path,
            'For kind = "ws": dotted paths into each JSON message, e.g. "data.message.text".\n'
            "Where the message text is ...",
        ),
        _Key("id", "id", dotted_path, "... the message id (used to drop duplicates)"),
        _Key("author", "author", dotted_path, "... the author's name"),
        _Key("time", "time", dotted_path, "... the time it was sent (UNIX seconds or ISO 8601)"),
        _Key("platform", "platform", dotted_path, "... the platform (twitch, youtube, kick ...)"),
        _Key("channel", "channel", dotted_path, "... the channel"),
    ),
    "audience": (
        _Key(
            "bots",
            [],
            names_list,
            "Extra bot accounts to leave out of the readings, on top of the built-in list\n"
            '(Nightbot, StreamElements, Moobot ...). For example ["mybot"].',
        ),
        _Key(
            "skip_commands",
            True,
            boolean,
            'Leave "!commands" out of the readings (they are still kept in the journal).',
        ),
    ),
    "model": (
        _Key(
            "dir",
            "",
            text,
            'Where the exported model lives. Empty = the "model" folder in the data folder,\n'
            "which is where `captaflow export-model` puts it.",
            is_path=True,
        ),
        _Key(
            "threads",
            1,
            whole(1, CPU_CORES, why="the CPU cores of this PC"),
            "CPU threads used for scoring. 1 keeps the game and the encoder smooth.",
        ),
        _Key(
            "translate_emotes",
            True,
            boolean,
            "Turn emotes the model never saw (PogChamp, KEKW ...) into words before scoring.",
        ),
        _Key(
            "emote_table",
            "",
            text,
            "Your own copy of the emote table (a TOML file) to edit. Empty = the built-in one.",
            is_path=True,
        ),
        _Key(
            "cache_size",
            50000,
            whole(0, 1_000_000),
            "How many recent message texts to remember scores for (chat repeats itself).",
        ),
        _Key(
            "bundle_url",
            DEFAULT_BUNDLE_URL,
            text,
            "Where `captaflow model get` (and the tray's first run) downloads the model bundle\n"
            "from when there is none yet: a zip or tar of an exported bundle.",
        ),
        _Key(
            "bundle_sha256",
            "",
            text,
            "The sha256 that download must have. Empty = the one published beside it (URL.sha256).",
        ),
    ),
    "window": (
        _Key("messages", 10, whole(1, 10_000), "A reading is made every this many messages ..."),
        _Key(
            "seconds",
            0.0,
            number(0, maximum=3600),
            "... or every this many seconds, whichever comes first (0 = count messages only).",
        ),
        _Key(
            "max_age_seconds",
            30.0,
            number(0, inclusive=False, maximum=3600),
            "A window still open after this long is closed anyway, so a quiet chat still\n"
            "produces readings.",
        ),
        _Key(
            "max_lag_seconds",
            5.0,
            number(0, inclusive=False, maximum=600),
            "When chat is busier than the CPU can score, windows are sampled so readings never\n"
            "fall further behind than this.",
        ),
    ),
    "display": (
        _Key(
            "emotions",
            list(DEFAULT_DISPLAYED),
            subset(LABELS),
            "Emotions shown in previews, the tray and charts, and among which the dominant one\n"
            "is picked. All 11 are always saved: " + ", ".join(LABELS) + ".",
        ),
        _Key(
            "previews",
            list(PREVIEWS),
            subset(PREVIEWS),
            "What `captaflow run` prints: each message, each reading (batch), a summary.",
        ),
    ),
    "spool": (
        _Key(
            "dir",
            "",
            text,
            'Where readings wait as CSV files. Empty = the "spool" folder in the data folder.',
            is_path=True,
        ),
        _Key(
            "part_max_rows",
            5000,
            whole(1, 1_000_000),
            "A CSV part is sealed after this many readings ...",
        ),
        _Key(
            "part_max_seconds",
            300.0,
            number(0, inclusive=False, maximum=86_400),
            "... or this many seconds.",
        ),
        _Key(
            "max_disk_mb",
            2048,
            whole(1, MAX_MB),
            "Disk space the waiting parts may use while offline.",
        ),
        _Key(
            "warn_fraction",
            0.8,
            number(0, inclusive=False, maximum=1.0),
            "Warn when the waiting parts reach this fraction of max_disk_mb.",
        ),
    ),
    "sync": (
        _Key("enabled", True, boolean, "Upload sealed parts to S3 when online."),
        _Key(
            "bucket",
            "",
            bucket_name,
            "The S3 bucket. Empty = keep everything on this PC. AWS keys are never written\n"
            "here: CaptaFlow uses the standard AWS credentials (environment, ~/.aws, a profile)\n"
            "or the OS keyring.",
        ),
        _Key("prefix", "captaflow", key_prefix, "Key prefix inside the bucket."),
        _Key(
            "region",
            "",
            aws_region,
            'The bucket\'s region, for example "eu-west-1". Empty = AWS default.',
        ),
        _Key(
            "interval_seconds",
            30.0,
            number(0, inclusive=False, maximum=86_400),
            "How often to look for parts to upload.",
        ),
    ),
    "journal": (
        _Key("retention_days", 30, whole(1, 3650), "Keep received messages this many days ..."),
        _Key("max_mb", 1024, whole(1, MAX_MB), "... and at most this much disk."),
    ),
    "log": (
        _Key(
            "level",
            "info",
            choice(*LOG_LEVELS),
            'How much goes into the log files: "debug", "info", "warning" or "error".',
        ),
    ),
}

# Names that say "this is a secret". They are refused in the file wherever they appear.
_SECRET_WORDS = ("token", "secret", "password", "passwd", "oauth", "access_key", "api_key")


# ---------------------------------------------------------------------------------------------
# The settings themselves.


DEFAULT_MAPPING: Mapping[str, str] = MappingProxyType(
    {
        "text": "text",
        "id": "id",
        "author": "author",
        "time": "time",
        "platform": "platform",
        "channel": "channel",
    }
)


@dataclass(frozen=True, slots=True)
class SourceSettings:
    kind: str = "twitch"
    channel: str = ""
    server_url: str = ""  # "" = the source's own default address
    file: Path | None = None
    speed: float | str = 1.0  # replay: a speed-up factor (1.0 = as recorded) or "max"
    login: str = ""
    # The generic `ws` source's field → dotted path in each JSON message (read-only).
    mapping: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_MAPPING))
    )


@dataclass(frozen=True, slots=True)
class AudienceSettings:
    bots: tuple[str, ...] = ()
    skip_commands: bool = True


@dataclass(frozen=True, slots=True)
class ModelSettings:
    dir: Path
    threads: int = 1
    translate_emotes: bool = True
    emote_table: Path | None = None
    cache_size: int = 50000
    bundle_url: str = DEFAULT_BUNDLE_URL
    bundle_sha256: str = ""


@dataclass(frozen=True, slots=True)
class WindowSettings:
    messages: int = 10
    seconds: float = 0.0
    max_age_seconds: float = 30.0
    max_lag_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class DisplaySettings:
    emotions: tuple[str, ...] = DEFAULT_DISPLAYED
    previews: tuple[str, ...] = PREVIEWS


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    dir: Path
    part_max_rows: int = 5000
    part_max_seconds: float = 300.0
    max_disk_mb: int = 2048
    warn_fraction: float = 0.8


@dataclass(frozen=True, slots=True)
class SyncSettings:
    enabled: bool = True
    bucket: str = ""
    prefix: str = "captaflow"
    region: str = ""
    interval_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class JournalSettings:
    retention_days: int = 30
    max_mb: int = 1024


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Secrets:
    """Secrets found in the environment or the keyring; `repr` never shows them."""

    twitch_token: str | None = field(default=None, repr=False)
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    found_in: Mapping[str, str] = field(default_factory=dict)  # name -> "environment"/"keyring"


@dataclass(frozen=True, slots=True)
class Settings:
    paths: Locations
    source: SourceSettings
    audience: AudienceSettings
    model: ModelSettings
    window: WindowSettings
    display: DisplaySettings
    spool: SpoolSettings
    sync: SyncSettings
    journal: JournalSettings
    log: LogSettings
    # (dotted key, value as TOML, where it came from: "default", "file" or "flag"), for
    # `captaflow config --show`; not part of what the settings are.
    explained: tuple[tuple[str, str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def config_path(self) -> Path:
        return self.paths.config_file

    @property
    def data_dir(self) -> Path:
        return self.paths.data_dir

    @property
    def log_dir(self) -> Path:
        return self.paths.log_dir

    @property
    def journal_path(self) -> Path:
        return self.paths.journal_path

    @property
    def reports_dir(self) -> Path:
        return self.paths.reports_dir

    def secrets(self, env: Mapping[str, str] | None = None) -> Secrets:
        """Read the secrets now (environment first, then the OS keyring)."""
        return load_secrets(env)

    def redacted(self) -> dict[str, Any]:
        """Everything, as plain data fit for a log line; holds no secret by construction."""
        secrets = load_secrets(use_keyring=False)
        return {
            "config_file": str(self.paths.config_file),
            "data_dir": str(self.paths.data_dir),
            "log_dir": str(self.paths.log_dir),
            **{
                section: _plain(getattr(self, section))
                for section in (
                    "source",
                    "audience",
                    "model",
                    "window",
                    "display",
                    "spool",
                    "sync",
                    "journal",
                    "log",
                )
            },
            "secrets_in_environment": sorted(secrets.found_in),
        }


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


# ---------------------------------------------------------------------------------------------
# Loading.


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_repr(item) for item in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _hint(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def _secret_refusal(key: str, where: str) -> SettingsError:
    if "aws" in key or "access_key" in key:
        home = (
            "use the standard AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            '~/.aws/credentials, AWS_PROFILE) or the OS keyring (service "CaptaFlow")'
        )
    else:
        home = (
            "set CAPTAFLOW_TWITCH_TOKEN in the environment or store it in the OS keyring "
            '(service "CaptaFlow", name "twitch_token")'
        )
    return SettingsError(
        f"{key} {where} looks like a secret and secrets never go in the settings file: "
        f"remove it and {home}"
    )


def _looks_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise SettingsError(
            f"cannot read the settings file {path}: {error.strerror}; check its permissions"
        ) from None
    try:
        return tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise SettingsError(
            f"{path} is not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        reason = re.sub(r"\s*\(at [^)]*\)$", "", message)
        where = f"line {found[1]}, column {found[2]}" if found else "at the end"
        raise SettingsError(
            f"{path}, {where}: {reason}; fix that line, or delete the file to get a fresh "
            f"one with the defaults"
        ) from None


def _flatten(document: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TOML tables → {"section.key": value}, refusing unknown and secret-looking keys."""
    flat: dict[str, Any] = {}
    sections = [name for name in _SCHEMA if "." not in name]

    def walk(table: Mapping[str, Any], section: str) -> None:
        known = [key.name for key in _SCHEMA[section]]
        subsections = [name.split(".", 1)[1] for name in _SCHEMA if name.startswith(section + ".")]
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if _looks_secret(key):
                raise _secret_refusal(dotted, where)
            if key in subsections and isinstance(value, dict):
                walk(value, dotted)
            elif key in known:
                if isinstance(value, str) and value.strip().lower().startswith("oauth:"):
                    raise _secret_refusal(dotted, where)
                flat[dotted] = value
            else:
                raise SettingsError(
                    f"unknown setting {dotted} {where}{_hint(key, known + subsections)}"
                )

    for name, value in document.items():
        if _looks_secret(name):
            raise _secret_refusal(name, where)
        if name in sections and isinstance(value, dict):
            walk(value, name)
        else:
            raise SettingsError(
                f"unknown section [{name}] {where}"
                + (_hint(name, sections) if name not in sections else ": it must be a [table]")
            )
    return flat


def _check(dotted: str, raw: Any, where: str, from_cli: bool) -> Any:
    section, name = dotted.rsplit(".", 1)
    spec = next(key for key in _SCHEMA[section] if key.name == name)
    try:
        return spec.check(raw, from_cli)
    except Expected as error:
        raise SettingsError(f"{dotted} = {_toml_repr(raw)} {where}: expected {error}") from None


def _resolve_path(raw: str, base: Path) -> Path:
    path = Path(os.path.expandvars(raw)).expanduser()
    return path if path.is_absolute() else (base / path).absolute()


def load_settings(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    create_if_missing: bool = False,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read `path` (None: `CAPTAFLOW_CONFIG` or the platform's config file), apply overrides.

    Override keys are dotted setting names ("source.channel", "window.messages", ...) plus
    "data_dir"; values that are None are skipped. With `create_if_missing`, a missing file is
    written with the defaults and their comments first (the first run of the app).
    """
    given = dict(overrides or {})
    data_dir = given.pop("data_dir", None)
    paths = resolve_locations(data_dir=data_dir, config=path, env=env)
    problem = location_problem(paths)
    if problem:
        raise SettingsError(problem)
    config_file = paths.config_file
    if create_if_missing and not config_file.exists():
        write_default_config(config_file)

    in_file = f"in {config_file}"
    values: dict[str, Any] = {}
    for dotted, raw in _flatten(_read_toml(config_file), in_file).items():
        values[dotted] = _check(dotted, raw, in_file, from_cli=False)

    on_cli = "on the command line"
    cli_keys: set[str] = set()
    for dotted, raw in given.items():
        if raw is None:
            continue
        section, _, name = dotted.rpartition(".")
        if section not in _SCHEMA or name not in [key.name for key in _SCHEMA[section]]:
            known = [f"{s}.{k.name}" for s, keys in _SCHEMA.items() for k in keys]
            raise SettingsError(f"unknown setting {dotted} {on_cli}{_hint(dotted, known)}")
        values[dotted] = _check(dotted, raw, on_cli, from_cli=True)
        cli_keys.add(dotted)

    def get(dotted: str) -> Any:
        if dotted in values:
            return values[dotted]
        section, name = dotted.rsplit(".", 1)
        spec = next(key for key in _SCHEMA[section] if key.name == name)
        return spec.check(spec.default, False)

    def get_path(dotted: str) -> Path | None:
        raw = get(dotted)
        if not raw:
            return None
        # Relative paths in the file are relative to the file; on the command line, to the cwd.
        base = Path.cwd() if dotted in cli_keys else config_file.parent
        return _resolve_path(raw, base)

    derived = {"model.dir": default_model_dir(paths), "spool.dir": paths.spool_dir}

    def explained(dotted: str, spec: _Key) -> tuple[str, str, str]:
        origin = "flag" if dotted in cli_keys else "file" if dotted in values else "default"
        value = get_path(dotted) if spec.is_path else get(dotted)
        if value is None:
            value = derived.get(dotted, "")
        shown = str(value) if isinstance(value, Path) else value
        return dotted, _toml_repr(shown), origin

    source = SourceSettings(
        kind=get("source.kind"),
        channel=get("source.channel"),
        server_url=get("source.server_url"),
        file=get_path("source.file"),
        speed=get("source.speed"),
        login=get("source.login"),
        mapping=MappingProxyType(
            {key.name: get(f"source.mapping.{key.name}") for key in _SCHEMA["source.mapping"]}
        ),
    )
    return Settings(
        paths=paths,
        source=source,
        audience=AudienceSettings(
            bots=get("audience.bots"), skip_commands=get("audience.skip_commands")
        ),
        model=ModelSettings(
            dir=get_path("model.dir") or default_model_dir(paths),
            threads=get("model.threads"),
            translate_emotes=get("model.translate_emotes"),
            emote_table=get_path("model.emote_table"),
            cache_size=get("model.cache_size"),
            bundle_url=get("model.bundle_url"),
            bundle_sha256=get("model.bundle_sha256"),
        ),
        window=WindowSettings(**{key.name: get(f"window.{key.name}") for key in _SCHEMA["window"]}),
        display=DisplaySettings(emotions=get("display.emotions"), previews=get("display.previews")),
        spool=SpoolSettings(
            dir=get_path("spool.dir") or paths.spool_dir,
            part_max_rows=get("spool.part_max_rows"),
            part_max_seconds=get("spool.part_max_seconds"),
            max_disk_mb=get("spool.max_disk_mb"),
            warn_fraction=get("spool.warn_fraction"),
        ),
        sync=SyncSettings(**{key.name: get(f"sync.{key.name}") for key in _SCHEMA["sync"]}),
        journal=JournalSettings(
            **{key.name: get(f"journal.{key.name}") for key in _SCHEMA["journal"]}
        ),
        log=LogSettings(level=get("log.level")),
        explained=tuple(
            explained(f"{section}.{spec.name}", spec)
            for section, specs in _SCHEMA.items()
            for spec in specs
        ),
    )


_ORIGIN_WORDS = {
    "config": {"flag": "--config", "environment": CONFIG_ENV, "default": "the default place"},
    "data": {"flag": "--data-dir", "environment": DATA_DIR_ENV, "default": "the default place"},
}


def describe_settings(settings: Settings) -> list[str]:
    """The effective settings as TOML lines, each with a comment saying where it came from
    (default, file, flag); the places first. Holds no secret: none is ever a setting."""
    paths = settings.paths
    lines = [
        f"# settings file: {paths.config_file} "
        f"(from {_ORIGIN_WORDS['config'][paths.config_origin]})",
        f"# data folder: {paths.data_dir} (from {_ORIGIN_WORDS['data'][paths.data_origin]})",
        f"# log folder: {paths.log_dir}",
    ]
    section = ""
    for dotted, shown, origin in settings.explained:
        table, name = dotted.rsplit(".", 1)
        if table != section:
            section = table
            lines += ["", f"[{table}]"]
        lines.append(f"{name} = {shown}  # {origin}")
    return lines


def setup_problem(settings: Settings) -> str | None:
    """What stops the agent from starting with these settings, as one line saying what to do.

    The line names both the flag and the settings key: the tray and `captaflow run` show it.
    """
    source = settings.source
    where = settings.config_path
    if source.kind == "twitch" and not source.channel:
        return (
            f'no channel set: pass --channel NAME, or set channel = "name" under [source] '
            f"in {where}"
        )
    if source.kind == "ws" and not source.server_url:
        return (
            f'no server_url set for the "ws" source: pass --server-url ws://HOST:PORT/PATH, '
            f"or set server_url under [source] in {where}"
        )
    if source.kind == "replay" and source.file is None:
        return (
            f'no file set for the "replay" source: pass --file PATH, or set file under '
            f"[source] in {where}"
        )
    if source.kind == "replay" and source.file is not None and not source.file.is_file():
        return (
            f"the chat file {source.file} does not exist: check --file (or file under "
            f"[source] in {where})"
        )
    return None


# ---------------------------------------------------------------------------------------------
# The commented default file.

_HEADER = """\
# CaptaFlow settings. Lines starting with # are comments; remove the # in front of a
# setting to change it. Command-line options (for example --channel) override this file.
#
# Secrets never go in this file. Give the Twitch token (only needed for a logged-in
# connection) as the environment variable CAPTAFLOW_TWITCH_TOKEN or store it in the OS
# keyring (service "CaptaFlow", name "twitch_token"); AWS keys come from the usual AWS
# places (environment, ~/.aws/credentials, a profile) or the same keyring.
"""


def default_config_text() -> str:
    lines = [_HEADER]
    for section, keys in _SCHEMA.items():
        lines.append(f"\n[{section}]")
        for index, key in enumerate(keys):
            if index and "\n" in key.doc:
                lines.append("")
            lines.extend(f"# {line}" for line in key.doc.splitlines())
            # Everything but the channel is written commented out: the defaults keep
            # improving between versions and an untouched file should follow them.
            prefix = "" if (section, key.name) == ("source", "channel") else "# "
            lines.append(f"{prefix}{key.name} = {_toml_repr(key.default)}")
    return "\n".join(lines) + "\n"


def write_default_config(path: Path) -> Path:
    """Write the commented defaults to `path` (atomically; never over an existing file)."""
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(default_config_text(), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        raise SettingsError(
            f"cannot create the settings file {path}: {error.strerror}; pass --config with a "
            f"writable place"
        ) from None
    return path


# ---------------------------------------------------------------------------------------------
# Secrets.

SECRET_ENV: Mapping[str, str] = {
    "twitch_token": "CAPTAFLOW_TWITCH_TOKEN",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
}


def _keyring_get(name: str) -> str | None:
    try:
        import keyring

        return keyring.get_password(KEYRING_SERVICE, name)
    except Exception:
        # No backend (a headless Linux box), a locked or broken one: the keyring is only one
        # of the places a secret may live, so its absence is not an error.
        return None


def load_secrets(env: Mapping[str, str] | None = None, *, use_keyring: bool = True) -> Secrets:
    """Each secret from the environment, else from the OS keyring; None where neither has it.

    Whatever is found is registered with the log filter so it is masked in every log record.
    """
    environ = os.environ if env is None else env
    keyring_allowed = use_keyring and not environ.get(NO_KEYRING_ENV)
    found: dict[str, str] = {}
    values: dict[str, str | None] = {}
    for name, variable in SECRET_ENV.items():
        value = environ.get(variable) or None
        if value is not None:
            found[name] = "environment"
        elif keyring_allowed:
            value = _keyring_get(name)
            if value is not None:
                found[name] = "keyring"
        if value:
            logs.register_secret(value)
        values[name] = value
    return Secrets(**values, found_in=found)


def store_secret(name: str, value: str) -> None:
    """Save a secret in the OS keyring (for a `captaflow` command that asks for it once)."""
    if name not in SECRET_ENV:
        raise SettingsError(f"unknown secret {name!r}: use one of {', '.join(SECRET_ENV)}")
    try:
        import keyring

        keyring.set_password(KEYRING_SERVICE, name, value)
    except Exception as error:
        raise SettingsError(
            f"cannot store {name} in the OS keyring ({type(error).__name__}); set "
            f"{SECRET_ENV[name]} in the environment instead"
        ) from None
