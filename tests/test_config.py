"""Settings, paths, secrets and log masking: what the streamer types and what must never leak."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path

import pytest

from agent import logs
from agent.config import (
    default_config_text,
    describe_settings,
    load_settings,
    setup_problem,
    write_default_config,
)
from agent.errors import SettingsError, UsageError
from agent.paths import resolve_locations
from agent.vocab import DEFAULT_DISPLAYED, LABELS


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "config.toml"


def load(config: Path, text: str | None = None, **overrides: object):
    if text is not None:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(text, encoding="utf-8")
    return load_settings(config, {"data_dir": config.parent.parent / "data", **overrides})


def error_of(config: Path, text: str, **overrides: object) -> str:
    with pytest.raises(SettingsError) as caught:
        load(config, text, **overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- defaults and the commented file ---------------------------------------------------------


def test_missing_file_gives_defaults_rooted_in_the_data_dir(config: Path) -> None:
    settings = load(config)
    data = config.parent.parent / "data"
    assert settings.paths.data_dir == data
    assert settings.model.dir == data / "model"
    assert settings.spool.dir == data / "spool"
    assert settings.journal_path == data / "journal.sqlite3"
    assert settings.paths.log_dir == data / "logs"
    assert settings.window.messages == 10 and settings.window.seconds == 0
    assert settings.display.emotions == DEFAULT_DISPLAYED
    assert settings.sync.prefix == "captaflow" and settings.sync.enabled
    assert settings.source.kind == "twitch" and settings.source.server_url == ""
    assert settings.source.options["mapping"] == {}  # the ws source's own defaults apply
    assert settings.source.options_of("replay") == {"file": "", "speed": 1.0}
    assert not config.exists(), "loading must not write unless asked"


def test_first_run_writes_a_commented_file_that_loads_to_the_defaults(config: Path) -> None:
    created = load_settings(
        config, {"data_dir": config.parent.parent / "data"}, create_if_missing=True
    )
    text = config.read_text(encoding="utf-8")
    assert text == default_config_text()
    # Every key has a comment above it explaining it.
    for line_number, line in enumerate(text.splitlines()):
        if re.match(r"^#? ?[a-z_]+ = ", line):
            assert text.splitlines()[line_number - 1].startswith("#"), line
    assert created == load(config)
    assert "CAPTAFLOW_TWITCH_TOKEN" in text and "keyring" in text


def test_uncommenting_every_default_changes_nothing(config: Path) -> None:
    # The written defaults are the code's defaults: a user who uncomments a line and keeps
    # its value gets exactly what they had.
    # Only setting lines (a key of the schema), not a comment that happens to read "x = y".
    names = {line.split(" = ")[0] for line in describe_settings(load(config)) if " = " in line}
    pattern = "|".join(sorted(names))
    uncommented = re.sub(rf"(?m)^# (({pattern}) = )", r"\1", default_config_text())
    tomllib.loads(uncommented)  # valid TOML
    full, empty = load(config, uncommented), load(config, "")
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
    ):
        assert getattr(full, section) == getattr(empty, section), section


def test_write_default_config_never_overwrites(config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text('[source]\nchannel = "mine"\n', encoding="utf-8")
    write_default_config(config)
    assert load(config).source.channel == "mine"


# --- values ------------------------------------------------------------------------------------


def test_values_are_read_and_normalised(config: Path) -> None:
    settings = load(
        config,
        """
[source]
kind = "Replay"
channel = "#XQCow"
file = "chats/demo.jsonl"
speed = "4x"
[source.mapping]
text = "data.message.text"
[audience]
bots = ["@MyBot", "otherbot", "mybot"]
[display]
emotions = ["surprise", "joy", "anger"]
[window]
seconds = 2.5
[sync]
bucket = "s3://my-bucket/"
prefix = "/streams/captaflow/"
""",
    )
    assert settings.source.kind == "replay"
    assert settings.source.channel == "xqcow"
    # Relative paths in the file are relative to the file, not to wherever the app started.
    assert settings.source.options["file"] == str(config.parent / "chats" / "demo.jsonl")
    assert settings.source.options["speed"] == 4.0
    assert settings.source.options["mapping"]["text"] == "data.message.text"
    assert "id" not in settings.source.options["mapping"]
    assert settings.source.options["file"] == str(config.parent / "chats" / "demo.jsonl")
    assert settings.audience.bots == ("mybot", "otherbot")
    assert settings.display.emotions == ("anger", "joy", "surprise")  # the model's order
    assert set(settings.display.emotions) <= set(LABELS)
    assert settings.window.seconds == 2.5
    assert settings.sync.bucket == "my-bucket" and settings.sync.prefix == "streams/captaflow"


@pytest.mark.parametrize(("raw", "expected"), [('"recorded"', 1.0), ('"max"', "max"), ("10", 10.0)])
def test_replay_speed(config: Path, raw: str, expected: object) -> None:
    assert load(config, f"[source]\nspeed = {raw}\n").source.options["speed"] == expected


def test_a_bad_value_names_key_value_file_and_expectation(config: Path) -> None:
    message = error_of(config, "[window]\nmessages = -3\n")
    assert message == f"window.messages = -3 in {config}: expected a whole number from 1 to 10000"


WHOLE = "a whole number from"
BOUNDED = [
    # (key, a value past its bound, what the message says is allowed)
    ("model.threads", "100000", f"{WHOLE} 1 to {os.cpu_count()} (the CPU cores of this PC)"),
    ("model.cache_size", "100000000", f"{WHOLE} 0 to 1000000"),
    ("window.messages", "1000000", f"{WHOLE} 1 to 10000"),
    ("window.seconds", "1e9", "a number ≥ 0 and ≤ 3600"),
    ("window.max_age_seconds", "inf", "a number > 0 and ≤ 3600"),
    ("window.max_lag_seconds", "601", "a number > 0 and ≤ 600"),
    ("spool.part_max_rows", "99999999", f"{WHOLE} 1 to 1000000"),
    ("spool.part_max_seconds", "1e6", "a number > 0 and ≤ 86400"),
    ("spool.max_disk_mb", "99999999", f"{WHOLE} 1 to 1048576"),
    ("journal.max_mb", "99999999", f"{WHOLE} 1 to 1048576"),
    ("journal.retention_days", "100000", f"{WHOLE} 1 to 3650"),
    ("sync.interval_seconds", "1e7", "a number > 0 and ≤ 86400"),
    ("sync.region", '"Europe"', 'an AWS region such as "eu-west-1"'),
    ("sync.region", '"eu-west-1; rm -rf"', 'an AWS region such as "eu-west-1"'),
    ("source.speed", "1e9", '"recorded", "max" or a speed-up factor over 0 and at most 10000'),
]


@pytest.mark.parametrize(("key", "raw", "allowed"), BOUNDED)
def test_values_past_their_bounds_name_the_key_and_the_range(
    config: Path, key: str, raw: str, allowed: str
) -> None:
    section, name = key.split(".")
    message = error_of(config, f"[{section}]\n{name} = {raw}\n")
    assert message.startswith(f"{key} = ") and f" in {config}: expected {allowed}" in message


@pytest.mark.parametrize("region", ["eu-west-1", "us-gov-west-1", "ap-southeast-3", "auto", ""])
def test_real_region_names_are_accepted(config: Path, region: str) -> None:
    assert load(config, f'[sync]\nregion = "{region}"\n').sync.region == region


def test_threads_up_to_the_cores_are_accepted(config: Path) -> None:
    cores = os.cpu_count() or 1
    assert load(config, f"[model]\nthreads = {cores}\n").model.threads == cores


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[model]\nthreads = 1.5\n", "model.threads = 1.5"),
        ("[sync]\nenabled = 1\n", "expected true or false"),
        ('[source]\nkind = "discord"\n', 'expected one of "twitch", "streamerbot"'),
        ('[source]\nchannel = "bad name!"\n', 'source.channel = "bad name!"'),
        ('[display]\nemotions = ["joy", "happiness"]\n', "display.emotions"),
        ("[display]\nemotions = []\n", "a non-empty list"),
        ("[spool]\nwarn_fraction = 1.5\n", "≤ 1"),
        ('[source]\nspeed = "fast-ish"\n', '"recorded", "max" or a speed-up factor'),
        ('[sync]\nbucket = "Not_A_Bucket"\n', "an S3 bucket name"),
        ('[log]\nlevel = "loud"\n', '"debug"'),
        ("[window]\nmax_age_seconds = 0\n", "a number > 0"),
    ],
)
def test_each_check_refuses_bad_values(config: Path, text: str, fragment: str) -> None:
    message = error_of(config, text)
    assert fragment in message
    assert str(config) in message


def test_unknown_keys_get_a_did_you_mean(config: Path) -> None:
    assert "did you mean 'messages'?" in error_of(config, "[window]\nmesages = 5\n")
    assert "did you mean 'window'?" in error_of(config, "[windows]\nmessages = 5\n")
    assert error_of(config, '[source.mapping]\ntxt = "a"\n').startswith(
        f'source.mapping.txt = "a" in {config}: expected mapping keys among text, id'
    )
    assert "must be a [table]" in error_of(config, "window = 3\n")


def test_a_toml_syntax_error_names_file_line_and_column(config: Path) -> None:
    message = error_of(config, '[source]\nkind = "twitch"\nchannel = \n')
    assert message.startswith(f"{config}, line 3, column ")
    assert "delete the file" in message


def test_a_file_that_is_not_utf8_is_refused_clearly(config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_bytes(b'[source]\nchannel = "caf\xe9"\n')
    with pytest.raises(SettingsError, match="not UTF-8"):
        load(config)


def test_bad_settings_are_usage_errors_with_exit_status_2(config: Path) -> None:
    with pytest.raises(UsageError) as caught:
        load(config, "[window]\nmessages = 0\n")
    assert caught.value.exit_status == 2


# --- overrides ---------------------------------------------------------------------------------


def test_command_line_overrides_win_and_are_coerced(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load(
        config,
        '[source]\nchannel = "fromfile"\n[window]\nmessages = 20\n',
        **{
            "source.channel": "fromflag",
            "window.messages": "5",
            "sync.enabled": "false",
            "display.emotions": "joy,anger",
            "model.dir": "models/tiny",
            "source.file": None,  # argparse's "not given"
        },
    )
    assert settings.source.channel == "fromflag"
    assert settings.window.messages == 5
    assert settings.sync.enabled is False
    assert settings.display.emotions == ("anger", "joy")
    assert settings.model.dir == tmp_path / "models" / "tiny"  # relative to the cwd
    assert settings.source.options["file"] == ""


def test_a_bad_override_says_it_came_from_the_command_line(config: Path) -> None:
    message = error_of(config, "", **{"window.messages": "0"})
    assert message == (
        'window.messages = "0" on the command line: expected a whole number from 1 to 10000'
    )
    assert "did you mean 'window.messages'?" in error_of(config, "", **{"window.mesages": 3})


def test_locations_follow_flags_then_environment(tmp_path: Path) -> None:
    env = {
        "CAPTAFLOW_DATA_DIR": str(tmp_path / "envdata"),
        "CAPTAFLOW_CONFIG": str(tmp_path / "env.toml"),
    }
    from_env = resolve_locations(env=env)
    assert from_env.data_dir == tmp_path / "envdata"
    assert from_env.config_file == tmp_path / "env.toml"
    assert from_env.log_dir == tmp_path / "envdata" / "logs"
    flags = resolve_locations(data_dir=tmp_path / "flag", config=tmp_path / "f.toml", env=env)
    assert flags.data_dir == tmp_path / "flag" and flags.config_file == tmp_path / "f.toml"
    default = resolve_locations(env={})
    assert default.config_file.name == "config.toml"
    assert "CaptaFlow" in str(default.data_dir)


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "advice"),
    [
        ('[source]\ntoken = "oauth:abc"\n', "CAPTAFLOW_TWITCH_TOKEN"),
        ('[sync]\naws_secret_access_key = "x"\n', "AWS_SECRET_ACCESS_KEY"),
        ('[sync]\naws_access_key_id = "AKIA"\n', "~/.aws/credentials"),
        ('twitch_token = "abc"\n', "keyring"),
        ('[source]\nlogin = "oauth:abcdef"\n', "CAPTAFLOW_TWITCH_TOKEN"),
    ],
)
def test_secrets_in_the_file_are_refused_with_where_they_belong(
    config: Path, text: str, advice: str
) -> None:
    message = error_of(config, text)
    assert "secrets never go in the settings file" in message
    assert advice in message
    assert "oauth:abc" not in message


def test_secrets_come_from_the_environment_and_stay_out_of_sight(config: Path) -> None:
    from agent.secrets import find_secret, read_secret

    env = {
        "CAPTAFLOW_TWITCH_TOKEN": "oauth:s3cr3tt0ken",
        "AWS_SECRET_ACCESS_KEY": "abcdEFGH",
        "CAPTAFLOW_NO_KEYRING": "1",
    }
    assert read_secret(find_secret("twitch_token"), env) == "oauth:s3cr3tt0ken"
    assert read_secret(find_secret("aws_secret_access_key"), env) == "abcdEFGH"
    assert read_secret(find_secret("aws_access_key_id"), env) is None
    # Once read, the values are masked in any log text, wherever they appear.
    assert "s3cr3t" not in logs.mask_secrets("joining with s3cr3tt0ken now")
    assert "abcdEFGH" not in logs.mask_secrets("key=abcdEFGH")
    settings = load(config)
    assert "s3cr3t" not in str(settings.redacted()) and "s3cr3t" not in repr(settings)


def test_the_settings_hold_no_secret_and_say_only_which_are_in_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPTAFLOW_SSN_SESSION", "session-s3cr3t")
    redacted = load(config).redacted()
    assert redacted["secrets_in_environment"] == ["ssn_session"]
    assert "session-s3cr3t" not in str(redacted)


def test_without_environment_or_keyring_backend_secrets_are_quietly_absent() -> None:
    # This machine has no keyring daemon: the lookup must fail quietly, not raise.
    from agent.secrets import find_secret, read_secret

    assert read_secret(find_secret("twitch_token"), {}) is None


# --- setup problems ------------------------------------------------------------------------------


def test_setup_problem_says_what_the_source_still_needs(config: Path, tmp_path: Path) -> None:
    assert (setup_problem(load(config, "")) or "").startswith(
        'no channel set for the "twitch" source: pass --channel NAME, or set channel = "name" '
        f"under [source] in {config}"
    )
    assert setup_problem(load(config, '[source]\nchannel = "xqcow"\n')) is None
    assert "server_url" in (setup_problem(load(config, '[source]\nkind = "ws"\n')) or "")
    missing = setup_problem(load(config, '[source]\nkind = "replay"\nfile = "nope.jsonl"\n'))
    assert missing == (
        f"the file {config.parent / 'nope.jsonl'} does not exist: check --file (or file under "
        f"[source] in {config})"
    )
    # The source's own rule, from its descriptor: Social Stream Ninja needs its session id.
    ssn = load(config, '[source]\nkind = "ssn"\n')
    assert "captaflow secrets set ssn_session" in (setup_problem(ssn, secrets={}) or "")
    assert setup_problem(ssn, secrets={"ssn_session": "abc123"}) is None


# --- logs ----------------------------------------------------------------------------------------


def test_logs_mask_secrets_in_messages_arguments_and_tracebacks(tmp_path: Path) -> None:
    log_file = logs.setup_logging(tmp_path / "logs", "info")
    assert log_file is not None
    try:
        log = logging.getLogger("captaflow.test")
        log.info("sending PASS oauth:abcdef123456 to %s", "irc")
        log.info("aws key %s", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        try:
            raise RuntimeError("token=hunter2hunter2")
        except RuntimeError:
            log.exception("failed")
        log.info("model sha256 %s", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12")
    finally:
        logs.setup_logging(None, "warning")
    text = log_file.read_text(encoding="utf-8")
    assert "sending PASS *** to irc" in text
    assert "RuntimeError: token=***" in text  # the traceback is kept, the secret is not
    assert "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12" in text  # hex digests stay readable
    for secret in ("abcdef123456", "wJalrXUtnFEMI", "hunter2"):
        assert secret not in text


def test_logs_rotate(tmp_path: Path) -> None:
    logs.setup_logging(tmp_path / "logs", "info", max_bytes=2000, backup_count=2)
    try:
        for index in range(100):
            logging.getLogger("captaflow.test").info("filler line %03d to pass the limit", index)
    finally:
        logs.setup_logging(None, "warning")
    files = sorted(f.name for f in (tmp_path / "logs").iterdir())
    assert files == ["captaflow.log", "captaflow.log.1", "captaflow.log.2"]
    assert all((tmp_path / "logs" / f).stat().st_size <= 2000 for f in files)


# --- the [source] schema comes from the sources' descriptors ----------------------------------


def test_the_source_keys_are_the_common_ones_plus_each_descriptors(config: Path) -> None:
    from agent.sources import DESCRIPTORS

    text = default_config_text()
    source_part = text.split("[source]", 1)[1].split("\n[", 1)[0]
    own = [spec.name for d in DESCRIPTORS for spec in d.settings]
    names = "|".join(["kind", "channel", "server_url", *own])
    written = re.findall(rf"^#? ?({names}) = ", source_part, flags=re.M)
    assert written[:3] == ["kind", "channel", "server_url"]
    assert sorted(written[3:]) == sorted(dict.fromkeys(own))
    for found in DESCRIPTORS:
        assert f'"{found.kind}": {found.summary}' in source_part
        for secret in found.secrets:
            assert secret.env in text and secret.keyring in text


def test_the_ws_mapping_takes_a_filter_and_constants_as_documented(config: Path) -> None:
    settings = load(
        config,
        """
[source]
kind = "ws"
server_url = "ws://127.0.0.1:9000/chat"
[source.mapping]
text = "data.message"
author = "data.user.name"
platform = "=youtube"
where = "type=chat"
""",
    )
    assert dict(settings.source.options["mapping"]) == {
        "text": "data.message",
        "author": "data.user.name",
        "platform": "=youtube",
        "where": "type=chat",
    }
    inline = load(config, '[source]\nmapping = { text = "msg", channel = "=mine" }\n')
    assert dict(inline.source.options["mapping"]) == {"text": "msg", "channel": "=mine"}


@pytest.mark.parametrize(
    ("entry", "raw"),
    [("where", '"type"'), ("where", '"=chat"'), ("platform", '"="'), ("text", '"a b"')],
)
def test_a_bad_mapping_entry_is_named(config: Path, entry: str, raw: str) -> None:
    message = error_of(config, f"[source.mapping]\n{entry} = {raw}\n")
    assert message.startswith(f"source.mapping.{entry} = {raw} in {config}: expected ")
    assert "for mapping key" not in message


def test_a_secret_inside_the_mapping_is_refused_too(config: Path) -> None:
    assert "looks like a secret" in error_of(config, '[source.mapping]\ntoken = "abc"\n')


def test_the_readmes_ws_example_loads_as_it_says(config: Path) -> None:
    # The documentation is what a user copies: it must be accepted exactly as written.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    settings = load(config, example)
    assert settings.source.kind == "ws" and settings.source.server_url.startswith("ws://")
    assert settings.source.options["mapping"]["where"] == "type=chat"
    assert settings.source.options["mapping"]["platform"] == "=youtube"
    [inline] = re.findall(r"`(mapping = \{[^`]*\})`", section)
    assert load(config, f"[source]\n{inline}\n").source.options["mapping"]["where"] == "type=chat"


def test_every_settings_example_in_the_readme_loads(config: Path) -> None:
    # Any section may show settings (the platforms, the configuration); each block must be
    # accepted as written, or a user copying it gets an error for following the manual.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    assert blocks
    for block in blocks:
        try:
            load(config, block)
        except SettingsError as error:  # pragma: no cover - the message says which
            pytest.fail(f"README example refused: {error}\n{block}")


def test_show_prints_a_flagged_word_as_given_and_a_flagged_number_as_a_number(
    tmp_path: Path,
) -> None:
    config = tmp_path / "settings" / "config.toml"
    lines = describe_settings(load(config, "", **{"source.speed": "recorded", "ui.port": "0"}))
    assert 'speed = "recorded"  # flag' in lines
    assert "port = 0  # flag" in lines
    lines = describe_settings(load(config, "", **{"source.speed": "4"}))
    assert "speed = 4  # flag" in lines
