"""Settings: one TOML file with comments, flags on top, secrets never inside.

`load_settings(path, overrides)` reads the file (or the defaults when it does not exist yet),
applies the command line's overrides (dotted keys such as `"window.messages"`; `None` values
are ignored so argparse namespaces can be passed through), validates every value and returns a
frozen `Settings`. Anything wrong raises `SettingsError` with one line naming the key, the value,
where it came from and what is expected:

    window.messages = -3 in C:\\Users\\me\\AppData\\Roaming\\CaptaFlow\\CaptaFlow\\config.toml:
    expected a whole number from 1 to 10000

The schema below is the single source of truth: defaults, checks and the comments written into
a fresh file all come from it, so the file on disk and the code cannot drift apart. Its
`[source]` part is built from the sources' descriptors (`agent.sources.DESCRIPTORS`): the keys
every source shares (kind, channel, server_url) plus each source's own `SettingSpec`s, so a new
source brings its settings along. Every value has an upper bound: past it is a typo, not a wish.

Secrets (tokens, passwords, session ids, AWS keys) are read from the environment or the OS
keyring (service "CaptaFlow") through `agent.secrets`, never from the TOML: a secret-looking key
in the file is refused with a message saying where it belongs.
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

from agent.checks import (
    Expected,
    aws_region,
    boolean,
    bucket_name,
    choice,
    http_url,
    key_prefix,
    name_or_empty,
    names_list,
    number,
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
from agent.sources import DESCRIPTORS, SOURCE_KINDS
from agent.vocab import DEFAULT_DISPLAYED, LABELS

PREVIEWS = ("message", "batch", "summary")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Upper bounds: a value past them is a typo (an extra zero), not a wish, and some would hang
# the agent (100000 scoring threads) or fill the disk before any warning.
CPU_CORES = os.cpu_count() or 1
MAX_MB = 1_048_576  # 1 TB


# ---------------------------------------------------------------------------------------------
# The schema.


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    default: Any
    check: Callable[[Any, bool], Any]
    doc: str
    is_path: bool = False


def _is_table(spec: _Key) -> bool:
    """A key whose value is a table of its own (`[source.mapping]`)."""
    return isinstance(spec.default, Mapping)


def _source_keys() -> tuple[_Key, ...]:
    """`[source]`: the keys every source shares, then each source's own (its descriptor's
    SettingSpecs, once per name), so a new source module brings its settings along."""
    kinds = "\n".join(f'  "{d.kind}": {d.summary}' for d in DESCRIPTORS)
    common = (
        _Key(
            "kind", DESCRIPTORS[0].kind, choice(*SOURCE_KINDS), f"Where chat comes from:\n{kinds}"
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
            "Leave empty for the usual address of the chosen kind"
            + "".join(f"\n  {d.kind}: {d.default_url}" for d in DESCRIPTORS if d.default_url)
            + "\nA kind without a usual address (ws) needs one.",
        ),
    )
    own: dict[str, _Key] = {}
    for found in DESCRIPTORS:
        for spec in found.settings:
            own.setdefault(
                spec.name, _Key(spec.name, spec.default, spec.check, spec.doc, spec.is_path)
            )
    # Tables last: a `[source.mapping]` header written after them cannot swallow other keys.
    keys = sorted(own.values(), key=_is_table)
    return common + tuple(keys)


_COMMON = ("kind", "channel", "server_url")

_SCHEMA: dict[str, tuple[_Key, ...]] = {
    "source": _source_keys(),
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
    "ui": (
        _Key(
            "port",
            8730,
            whole(0, 65535),
            "The local dashboard and OBS overlay at http://127.0.0.1:PORT/ (this PC only).\n"
            "0 = no web UI.",
        ),
    ),
    "twitch": (
        _Key(
            "client_id",
            "",
            text,
            "Your Twitch app's client id (register one at https://dev.twitch.tv/console, client\n"
            'type "Public"), for `captaflow login twitch` and stream markers.',
        ),
        _Key(
            "markers",
            False,
            boolean,
            "Create a Twitch stream marker for each live moment (needs `captaflow login twitch`).",
        ),
        _Key("api_url", "https://api.twitch.tv/helix", http_url, "Twitch's Helix API; leave it."),
        _Key("auth_url", "https://id.twitch.tv/oauth2", http_url, "Twitch's log-in; leave it."),
    ),
}

# Names that say "this is a secret". They are refused in the file wherever they appear.
_SECRET_WORDS = ("token", "secret", "password", "passwd", "oauth", "access_key", "api_key")


# ---------------------------------------------------------------------------------------------
# The settings themselves.


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """`[source]`: the shared keys, and each source's own keys in `options`.

    `options` holds every descriptor SettingSpec by name, checked (paths resolved, as text),
    whichever kind is chosen: switching `kind` back and forth keeps what was set for each.
    """

    kind: str = "twitch"
    channel: str = ""
    server_url: str = ""  # "" = the source's own default address
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def options_of(self, kind: str | None = None) -> dict[str, Any]:
        """The options the source `kind` (default: the chosen one) declares, by name."""
        from agent.sources import descriptor

        return {
            spec.name: self.options.get(spec.name, spec.default)
            for spec in descriptor(kind or self.kind).settings
        }

    # Typed views of the replay options, for code outside the sources that shows a replay's
    # progress (the previews); the sources themselves read `options`.
    @property
    def file(self) -> Path | None:
        raw = self.options.get("file")
        return Path(raw) if raw else None

    @property
    def speed(self) -> float | str:
        value = self.options.get("speed", 1.0)
        return value if isinstance(value, float | str) else 1.0


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
class UiSettings:
    port: int = 8730


@dataclass(frozen=True, slots=True)
class TwitchSettings:
    client_id: str = ""
    markers: bool = False
    api_url: str = "https://api.twitch.tv/helix"
    auth_url: str = "https://id.twitch.tv/oauth2"


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
    ui: UiSettings = field(default_factory=UiSettings)
    twitch: TwitchSettings = field(default_factory=TwitchSettings)
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

    def redacted(self) -> dict[str, Any]:
        """Everything, as plain data fit for a log line; holds no secret by construction."""
        from agent.secrets import NO_KEYRING_ENV, list_secrets

        # Which secrets the environment holds (names only); the keyring is not asked here.
        in_environment = [
            state.name
            for state in list_secrets({**os.environ, NO_KEYRING_ENV: "1"})
            if state.where == "environment"
        ]
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
                    "ui",
                    "twitch",
                )
            },
            "secrets_in_environment": sorted(in_environment),
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
    if isinstance(value, Mapping):
        inner = ", ".join(f"{key} = {_toml_repr(item)}" for key, item in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_repr(item) for item in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_written(raw: Any, checked: Any, from_cli: bool) -> Any:
    """What `config --show` prints for a value: a word the check turned into a number (speed
    "recorded" is 1.0) as it was written, so the line says what the file and README say; a
    number given as a flag (`--ui-port 0`, text on the command line) as the number."""
    if not isinstance(raw, str) or isinstance(checked, str | bool):
        return checked
    if from_cli:
        try:
            float(raw)
        except ValueError:
            return raw
        return checked
    return raw


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
        specs = {spec.keyring: spec for d in DESCRIPTORS for spec in d.secrets}
        words = set(re.split(r"[._]", key.lower()))
        named = [spec for name, spec in specs.items() if words & set(name.split("_"))]
        if len(named) == 1 or len(specs) == 1:
            spec = (named or list(specs.values()))[0]
            home = (
                f"run `captaflow secrets set {spec.keyring}` (the OS keyring) or set {spec.env} "
                f"instead"
            )
        else:
            # An "oauth:" value under another name: most likely a Twitch token, but say all.
            choices = ", ".join(f"{spec.keyring} ({spec.env})" for spec in specs.values())
            home = (
                f"run `captaflow secrets set NAME` (the OS keyring) or set its variable instead: "
                f"{choices}"
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
                entries = value.items() if isinstance(value, dict) else [("", value)]
                for entry, item in entries:
                    named = f"{dotted}.{entry}" if entry else dotted
                    if _looks_secret(entry) or (
                        isinstance(item, str) and item.strip().lower().startswith("oauth:")
                    ):
                        raise _secret_refusal(named, where)
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
    if _is_table(spec) and isinstance(raw, Mapping):
        # One entry at a time, so the message names the entry that is wrong
        # (source.mapping.where), not the whole table.
        for key, item in raw.items():
            try:
                spec.check({key: item}, from_cli)
            except Expected as error:
                said = str(error).removeprefix(f"for mapping key {key!r}: ")
                raise SettingsError(
                    f"{dotted}.{key} = {_toml_repr(item)} {where}: expected {said}"
                ) from None
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
    written: dict[str, Any] = {}  # each value as the file or the flag gave it, for --show
    for dotted, raw in _flatten(_read_toml(config_file), in_file).items():
        values[dotted] = _check(dotted, raw, in_file, from_cli=False)
        written[dotted] = raw

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
        written[dotted] = raw
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
        if origin == "file" and written[dotted] == spec.default:
            origin = "default (also in the file)"  # the commented file's `channel = ""`
        value = get_path(dotted) if spec.is_path else get(dotted)
        if value is None:
            value = derived.get(dotted, "")
        shown = str(value) if isinstance(value, Path) else value
        if not spec.is_path:
            shown = _as_written(written.get(dotted, spec.default), shown, dotted in cli_keys)
        return dotted, _toml_repr(shown), origin

    def option(spec: _Key) -> Any:
        if spec.is_path:
            found = get_path(f"source.{spec.name}")
            return str(found) if found is not None else ""
        value = get(f"source.{spec.name}")
        return MappingProxyType(dict(value)) if isinstance(value, Mapping) else value

    source = SourceSettings(
        kind=get("source.kind"),
        channel=get("source.channel"),
        server_url=get("source.server_url"),
        options=MappingProxyType(
            {spec.name: option(spec) for spec in _SCHEMA["source"] if spec.name not in _COMMON}
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
        ui=UiSettings(port=get("ui.port")),
        twitch=TwitchSettings(**{key.name: get(f"twitch.{key.name}") for key in _SCHEMA["twitch"]}),
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


def setup_problem(settings: Settings, secrets: Mapping[str, str] | None = None) -> str | None:
    """What stops the agent from starting with these settings, as one line saying what to do.

    The chosen source's descriptor says what it needs (its `setup_problem`, `needs_channel`);
    a path among its settings must name a file that exists. `secrets` by keyring name, or
    None to read them (environment, then the OS keyring). The tray and `captaflow run` show
    the line, so it names both the flag and the settings key.
    """
    from agent.sources import descriptor, source_config

    source = settings.source
    found = descriptor(source.kind)
    where = settings.config_path
    if found.needs_channel and not source.channel:
        return (
            f'no channel set for the "{found.kind}" source: pass --channel NAME, or set '
            f'channel = "name" under [source] in {where}'
        )
    problem = found.setup_problem(source_config(source, secrets))
    if problem:
        return problem
    for spec in found.settings:
        value = source.options.get(spec.name)
        if spec.is_path and value and not Path(value).is_file():
            flag = f"--{spec.name.replace('_', '-')}"
            what = "is a folder, not a file" if Path(value).is_dir() else "does not exist"
            return (
                f"the {spec.name} {value} {what}: check {flag} (or {spec.name} under "
                f"[source] in {where})"
            )
    return None


# ---------------------------------------------------------------------------------------------
# The commented default file.


def _header() -> str:
    secrets = "\n".join(
        f"#   {spec.keyring} (or {spec.env}):\n#     {spec.doc}"
        for spec in {spec.keyring: spec for d in DESCRIPTORS for spec in d.secrets}.values()
    )
    return f"""\
# CaptaFlow settings. Lines starting with # are comments; remove the # in front of a
# setting to change it. Command-line options (for example --channel) override this file;
# `captaflow config --show` prints what is in effect and where each value came from.
#
# Secrets never go in this file. `captaflow secrets set NAME` asks for one and keeps it in
# the OS keyring (service "CaptaFlow"); its environment variable, when set, wins. The
# secrets the sources use:
{secrets}
# AWS keys come from the usual AWS places (environment, ~/.aws/credentials, a profile) or
# the same keyring (aws_access_key_id, aws_secret_access_key).
"""


def default_config_text() -> str:
    lines = [_header()]
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
        # One temporary name per process: the tray and a command started at the same first
        # run must not write into each other's half-written file.
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(default_config_text(), encoding="utf-8")
        if path.exists():  # the other one was first: its file (the same text) stays
            temporary.unlink()
        else:
            os.replace(temporary, path)
    except OSError as error:
        raise SettingsError(
            f"cannot create the settings file {path}: {error.strerror}; pass --config with a "
            f"writable place"
        ) from None
    return path
