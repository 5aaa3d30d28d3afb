"""The command line as a user meets it: a settings file and an environment in, `python -m agent`
as a process, exit status, the lines on stdout/stderr and the files left behind out.

Each test breaks one thing on purpose (a file where a folder belongs, a missing file, a value
past its bound, S3 out of reach) and checks the one line that says what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import default_config_text

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "agent" / "data" / "demo_chat.jsonl"
CREATED = "captaflow: created the settings file "


class Home:
    """A user's folders: settings file, data folder and a HOME nothing else can see."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "settings" / "config.toml"
        self.data = root / "data"

    def write_settings(self, text: str) -> Path:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(text, encoding="utf-8")
        return self.config

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CAPTAFLOW_", "AWS_"))
        }
        environment.update(
            {
                "PYTHONPATH": str(ROOT),
                "CAPTAFLOW_NO_KEYRING": "1",
                # The settings file's place: absent until the first run creates it.
                "CAPTAFLOW_CONFIG": str(self.config),
                "HOME": str(self.root / "home"),
                "XDG_CONFIG_HOME": str(self.root / "home" / ".config"),
                "XDG_DATA_HOME": str(self.root / "home" / ".local" / "share"),
            }
        )
        environment.update(extra or {})
        return environment

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        data_dir: bool = True,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        common = ["--data-dir", str(self.data)] if data_dir else []
        return subprocess.run(
            [sys.executable, "-m", "agent", *common, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(env),
            timeout=timeout,
            cwd=self.root,
        )


def error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The one error line (the first-run note aside); no traceback."""
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith(CREATED)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("captaflow: ")
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Home:
    """A home whose data folder went through `captaflow demo` once (one sealed part)."""
    home = Home(tmp_path_factory.mktemp("demo-home"))
    home.write_settings(f'[model]\ndir = "{tiny_bundle.as_posix()}"\n')
    result = home.run("--config", str(home.config), "demo", "--quiet")
    assert result.returncode == 0, result.stderr
    return home


# ---- settings: found, shown, created --------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["config"], ["athena-ddl"], ["report"]])
def test_every_command_creates_the_commented_settings_file_once_and_says_where(
    home: Home, command: list[str]
) -> None:
    first = home.run(*command)
    assert home.config.read_text(encoding="utf-8") == default_config_text()
    assert first.stderr.count(CREATED) == 1
    assert f"{CREATED}{home.config} " in first.stderr
    second = home.run(*command)
    assert CREATED not in second.stderr
    assert second.returncode == first.returncode
    # The note goes to stderr only, so what a command prints for scripts stays clean.
    assert CREATED not in first.stdout


def test_config_prints_the_settings_files_path(home: Home) -> None:
    result = home.run("config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{home.config}\n"


def test_config_show_says_where_each_value_came_from(home: Home) -> None:
    home.write_settings('[window]\nmessages = 25\n[source]\nchannel = "xqcow"\n')
    data = home.root / "elsewhere"
    result = home.run(
        "config", "--show", "--bucket", "my-readings", "--log-level", "debug",
        env={"CAPTAFLOW_DATA_DIR": str(data)}, data_dir=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"# settings file: {home.config} (from CAPTAFLOW_CONFIG)" in lines
    assert f"# data folder: {data} (from CAPTAFLOW_DATA_DIR)" in lines
    assert "messages = 25  # file" in lines
    assert 'channel = "xqcow"  # file' in lines
    assert 'bucket = "my-readings"  # flag' in lines
    assert 'level = "debug"  # flag' in lines
    assert "seconds = 0  # default" in lines
    assert f'dir = "{(data / "model").as_posix()}"  # default' in [
        line.replace("\\\\", "/") for line in lines
    ]
    # What it prints is TOML itself (the origins are comments), so it can be pasted back.
    import tomllib

    parsed = tomllib.loads(result.stdout)
    assert parsed["window"]["messages"] == 25 and parsed["sync"]["bucket"] == "my-readings"


def test_a_config_flag_naming_a_missing_file_is_bad_usage(home: Home) -> None:
    missing = home.root / "typo.toml"
    line = error_line(home.run("--config", str(missing), "status"), 2)
    assert str(missing) in line and "--config" in line
    assert not missing.exists(), "a missing --config file must not be created behind the user"
    created = home.run("config", "--create", "--config", str(missing))
    assert created.returncode == 0, created.stderr
    assert missing.read_text(encoding="utf-8") == default_config_text()
    assert created.stdout == f"{missing}\n"


# ---- bad places, bad values -----------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["run", "--channel", "x"], ["sync"], []])
def test_a_data_dir_naming_a_file_is_one_line_and_exit_2(home: Home, command: list[str]) -> None:
    home.root.mkdir(parents=True, exist_ok=True)
    a_file = home.root / "not-a-folder"
    a_file.write_text("x", encoding="utf-8")
    line = error_line(home.run("--data-dir", str(a_file), *command, data_dir=False), 2)
    assert f"the data folder {a_file} is a file: give --data-dir a folder" in line
    below = error_line(home.run("--data-dir", str(a_file / "sub"), *command, data_dir=False), 2)
    assert f"({a_file} is a file)" in below


def test_a_missing_replay_file_is_bad_usage(home: Home, tiny_bundle: Path) -> None:
    missing = home.root / "missing.jsonl"
    result = home.run(
        "run", "--source", "replay", "--file", str(missing), "--model", str(tiny_bundle)
    )
    line = error_line(result, 2)
    assert str(missing) in line and "--file" in line
    assert not list(home.data.glob("spool/**/*.csv")), "nothing may start on bad settings"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            "[model]\nthreads = 100000\n",
            f"model.threads = 100000 in {{config}}: expected a whole number from 1 to "
            f"{os.cpu_count()} (the CPU cores of this PC)",
        ),
        (
            "[window]\nmessages = 99999999\n",
            "window.messages = 99999999 in {config}: expected a whole number from 1 to 10000",
        ),
        (
            "[spool]\nmax_disk_mb = 99999999\n",
            "spool.max_disk_mb = 99999999 in {config}: expected a whole number from 1 to 1048576",
        ),
        (
            "[sync]\ninterval_seconds = 0\n",
            "sync.interval_seconds = 0 in {config}: expected a number > 0 and ≤ 86400",
        ),
        (
            '[sync]\nregion = "Frankfurt"\n',
            'sync.region = "Frankfurt" in {config}: expected an AWS region such as "eu-west-1" '
            'or "us-east-1" (or "" for the default)',
        ),
    ],
)
def test_values_past_their_bounds_stop_every_command_naming_key_and_range(
    home: Home, settings: str, expected: str
) -> None:
    home.write_settings(settings)
    for command in (["status"], ["run", "--channel", "x"]):
        line = error_line(home.run(*command), 2)
        assert line == "captaflow: " + expected.format(config=home.config)


def test_a_bad_flag_value_names_the_key_and_says_it_came_from_the_command_line(
    home: Home,
) -> None:
    line = error_line(home.run("status", "--bucket", "Not_A_Bucket"), 2)
    assert line.startswith('captaflow: sync.bucket = "Not_A_Bucket" on the command line: ')


def test_bad_usage_is_one_line_and_exit_2(home: Home) -> None:
    assert "invalid choice: 'bogus'" in error_line(home.run("bogus"), 2)
    unknown_source = error_line(home.run("run", "--source", "discord"), 2)
    assert "twitch" in unknown_source and "replay" in unknown_source
    assert "--session" in error_line(home.run("replay"), 2)


# ---- the last line of defence ---------------------------------------------------------------

# An error nobody foresaw, raised inside a command: the real entry point (`agent.cli.main`)
# with the `status` command replaced by one that fails.
BOOM = """
import sys
import agent.cli as cli

def boom(invocation):
    invocation.settings()
    raise RuntimeError("the flux capacitor is empty\\nsecond line")

cli.COMMANDS["status"] = boom
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_unexpected_error_is_one_line_naming_the_log_file(home: Home) -> None:
    common = ["--data-dir", str(home.data), "status"]
    result = subprocess.run(
        [sys.executable, "-c", BOOM, *common], capture_output=True, text=True, env=home.env(),
        timeout=60,
    )  # fmt: skip
    line = error_line(result, 1)
    log_file = home.data / "logs" / "captaflow.log"
    assert line == (
        "captaflow: unexpected RuntimeError: the flux capacitor is empty (the details are in "
        f"{log_file}; please report it)"
    )
    logged = log_file.read_text(encoding="utf-8")
    assert "Traceback" in logged and "the flux capacitor is empty" in logged

    debug = subprocess.run(
        [sys.executable, "-c", BOOM, *common, "--debug"], capture_output=True, text=True,
        env=home.env(), timeout=60,
    )  # fmt: skip
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "RuntimeError: the flux capacitor" in debug.stderr


# ---- sync --------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.mark.network
def test_a_one_shot_sync_that_cannot_reach_s3_says_what_to_do_not_will_retry(
    demo_home: Home,
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = demo_home.run(
        "--config", str(demo_home.config), "sync", "--bucket", "my-readings",
        env=aws_env(endpoint), timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "uploading 1 part(s) to s3://my-readings/captaflow/"
    assert len(lines) == 2, result.stderr
    assert lines[1].startswith("captaflow: upload stopped: cannot reach ")
    assert lines[1].endswith(
        "1 part(s) stay on disk, nothing is lost: run `captaflow sync` again once S3 is "
        "reachable (a running agent retries by itself)"
    )
    assert "will retry" not in result.stderr and "Traceback" not in result.stderr
    assert len(list((demo_home.data / "spool" / "sealed").rglob("*.csv"))) == 1


@pytest.mark.network
def test_sync_progress_is_one_line_per_step(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    import boto3

    home = Home(tmp_path)
    home.write_settings("[spool]\npart_max_rows = 40\n")
    s3 = boto3.client(
        "s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    s3.create_bucket(Bucket="progress-lines")
    demo = home.run("demo", "--quiet", "--model", str(tiny_bundle))
    assert demo.returncode == 0, demo.stderr
    parts = len(list((home.data / "spool" / "sealed").rglob("*.csv")))
    assert parts > 2
    result = home.run("sync", "--bucket", "progress-lines", env=s3_server)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"uploading {parts} part(s) to s3://progress-lines/captaflow/",
        *[f"uploaded {done}/{parts}" for done in range(1, parts + 1)],
        f"uploaded {parts} part(s) to s3://progress-lines/captaflow/; 0 still waiting",
    ]
    again = home.run("sync", "--bucket", "progress-lines", env=s3_server)
    assert again.returncode == 0
    assert again.stderr.splitlines() == [
        "nothing waits for upload to s3://progress-lines/captaflow/"
    ]


def test_sync_without_a_bucket_is_bad_usage(home: Home) -> None:
    assert "--bucket NAME" in error_line(home.run("sync"), 2)


# ---- status ------------------------------------------------------------------------------------

LINE_NAMES = ("agent", "source", "session", "last session", "spool", "sync", "model", "data")


def assert_each_said_once(lines: list[str]) -> None:
    names = [line.split(":", 1)[0] for line in lines]
    assert len(names) == len(set(names)), lines
    assert not [line for line in lines if re.search(r"\bNone\b", line)], lines
    assert not [line for line in lines if line.split(":", 1)[0] == "upload"], lines


def test_status_after_a_stop_says_stopped_once_each_and_names_the_model(
    demo_home: Home, tiny_bundle: Path
) -> None:
    result = demo_home.run("--config", str(demo_home.config), "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert_each_said_once(lines)
    assert lines[0] == "agent: not running"
    assert not [line for line in lines if "running" in line and line != lines[0]]
    assert re.fullmatch(
        r"last session: \S+-captaflow_demo-[a-z0-9]{6} on captaflow_demo: 2019 messages, "
        r"\d+ readings \(last seen .* ago\)",
        lines[1],
    ), lines[1]
    assert "spool: 1 part(s) waiting for upload, 0 uploaded" in lines
    assert "sync: off (no bucket: pass --bucket NAME or set sync.bucket)" in lines
    [model] = [line for line in lines if line.startswith("model: ")]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert model.startswith(f"model: {manifest['source_model']['id']} at {tiny_bundle}")
    assert model == f"model: {manifest['source_model']['id']} at {tiny_bundle}"
    assert [line for line in lines if line.startswith("parity: ")] == [
        f"parity: int8 vs the original, max diff {manifest['parity']['max_abs_diff']:.4f}, top "
        f"label agreement {manifest['parity']['top_label_agreement']:.0%}"
    ]
    if manifest.get("test_model"):
        assert f"test model: {manifest['test_model']}; its emotions mean nothing" in lines
    assert f"data: {demo_home.data}" in lines

    with_bucket = demo_home.run("--config", str(demo_home.config), "status", "--bucket", "b-1")
    assert "sync: to s3://b-1/captaflow/" in with_bucket.stdout.splitlines()


def test_status_says_when_the_model_is_missing(demo_home: Home) -> None:
    nowhere = demo_home.root / "no-model-here"
    result = demo_home.run("--config", str(demo_home.config), "status", "--model", str(nowhere))
    assert result.returncode == 0, result.stderr
    # A folder named on purpose is to be filled, not replaced by "pass --model DIR".
    assert (
        f"model: the model folder {nowhere} does not exist: export one there (`captaflow "
        f"export-model --out {nowhere}`) or run `captaflow model get --model {nowhere}`"
        in result.stdout.splitlines()
    )
    (demo_home.root / "plain").mkdir(exist_ok=True)
    plain = Home(demo_home.root / "plain").run("status")
    assert plain.returncode == 0, plain.stderr
    default_dir = demo_home.root / "plain" / "data" / "model"
    assert (
        f"model: none at {default_dir}: run `captaflow model get` (or `captaflow export-model`) "
        "once, or pass --model DIR" in plain.stdout.splitlines()
    )


def test_status_of_a_bundle_whose_manifest_is_broken_says_so(home: Home, tiny_bundle: Path) -> None:
    broken = home.root / "broken-bundle"
    shutil.copytree(tiny_bundle, broken)
    (broken / "manifest.json").write_text("{not json", encoding="utf-8")
    result = home.run("status", "--model", str(broken))
    assert result.returncode == 0, result.stderr
    [model] = [line for line in result.stdout.splitlines() if line.startswith("model: ")]
    assert model.startswith(f"model: the bundle at {broken} cannot be read (")
    assert model.endswith("run `captaflow export-model` again")


def wait_for(predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.timeout(120)
def test_status_while_running_then_after_ctrl_c(home: Home, tiny_bundle: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--data-dir", str(home.data), "run", "--source",
         "replay", "--file", str(DEMO), "--speed", "2", "--model", str(tiny_bundle), "--quiet"],
        env=home.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        status_file = home.data / "status.json"
        wait_for(lambda: status_file.is_file() and json.loads(status_file.read_text())
                 .get("readings_total"), 60)  # fmt: skip
        running = home.run("status")
        lines = running.stdout.splitlines()
        assert_each_said_once(lines)
        assert re.fullmatch(rf"agent: (running|trouble) \(pid {proc.pid}\)", lines[0]), lines
        assert any(line.startswith("source: ") for line in lines), lines
        assert any(re.match(r"session: \S+ on captaflow_demo: \d+ messages", x) for x in lines)
        # The bundle the running agent was given (--model), not the settings' empty default.
        manifest = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
        model_id = manifest["source_model"]["id"]
        assert f"model: {model_id} at {tiny_bundle.absolute()}" in lines, lines
        assert running.returncode == 0
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    stopped = home.run("status").stdout.splitlines()
    assert_each_said_once(stopped)
    assert stopped[0] == "agent: not running"
    assert not any(line.startswith(("source:", "problem:", "chat feels:")) for line in stopped)


# ---- help, athena-ddl, report -------------------------------------------------------------------


def subcommands(home: Home) -> list[str]:
    """The commands `captaflow --help` lists, whoever added them."""
    listed = home.run("--help", data_dir=False).stdout.split("  COMMAND\n", 1)[1]
    return re.findall(r"(?m)^    ([a-z][a-z-]*)\b", listed.split("\n\n", 1)[0])


def test_every_subcommands_help_has_a_description(home: Home) -> None:
    commands = [name for name in subcommands(home) if name != "export-model"]
    assert {"run", "demo", "sync", "status", "config", "secrets"} <= set(commands)
    for command in commands:
        result = home.run(command, "--help", data_dir=False)
        assert result.returncode == 0, (command, result.stderr)
        usage, _, rest = result.stdout.partition("\n\n")
        assert usage.startswith(f"usage: captaflow {command} "), command
        description = rest.split("\n\n", 1)[0]
        assert len(description) > 40, (command, result.stdout)
        assert not description.startswith(("options:", "positional")), (command, result.stdout)


def test_export_model_help_names_the_captaflow_command(home: Home) -> None:
    result = home.run("export-model", "--help", data_dir=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: captaflow export-model ")
    assert "python -m model_export" not in result.stdout.split("\n\n", 1)[0]


def test_athena_ddl_without_a_bucket_prints_a_placeholder_table(home: Home) -> None:
    result = home.run("athena-ddl")
    assert result.returncode == 0, result.stderr
    assert "CREATE EXTERNAL TABLE" in result.stdout
    assert "LOCATION 's3://your-bucket/captaflow/'" in result.stdout
    notes = [line for line in result.stderr.splitlines() if not line.startswith(CREATED)]
    assert notes == [
        "captaflow: no bucket set: the table points at s3://your-bucket/; pass --bucket NAME "
        "(or set sync.bucket) for the real one"
    ]


def test_report_open_without_a_browser_says_where_the_report_is(demo_home: Home) -> None:
    out = demo_home.root / "open-me.html"
    result = demo_home.run(
        "--config", str(demo_home.config), "report", "--out", str(out), "--open",
        env={"BROWSER": "false", "DISPLAY": "", "WAYLAND_DISPLAY": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n" and out.is_file()
    assert result.stderr.splitlines() == [
        f"captaflow: no browser could be opened here; open {out.resolve()} yourself"
    ]


# ---- secrets -----------------------------------------------------------------------------------


def keyring_env(home: Home) -> dict[str, str]:
    """A working OS keyring for the child process (see tests/keyring_backend.py)."""
    return {
        "CAPTAFLOW_NO_KEYRING": "",
        "PYTHON_KEYRING_BACKEND": "tests.keyring_backend.FileKeyring",
        "CAPTAFLOW_TEST_KEYRING_FILE": str(home.root / "keyring.json"),
    }


def test_secrets_list_says_which_are_set_and_where_never_the_value(home: Home) -> None:
    token = "oauth:q1w2e3r4t5y6u7i8o9p0"
    result = home.run("secrets", "list", env={"CAPTAFLOW_TWITCH_TOKEN": token})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "twitch_token: set in the environment (CAPTAFLOW_TWITCH_TOKEN)"
    assert (
        "ssn_session: not set (`captaflow secrets set ssn_session`, or set "
        "CAPTAFLOW_SSN_SESSION)" in lines
    )
    names = [line.split(":", 1)[0] for line in lines]
    assert names == [
        "twitch_token", "streamerbot_password", "ssn_session", "aws_access_key_id",
        "aws_secret_access_key", "aws_session_token",
    ]  # fmt: skip
    assert "q1w2e3" not in result.stdout + result.stderr


def test_secrets_set_stores_in_the_keyring_and_the_source_finds_it(home: Home) -> None:
    env = keyring_env(home)
    stored = home.run(
        "secrets", "set", "streamerbot_password", stdin="hunter2-but-longer\n", env=env
    )
    assert stored.returncode == 0, stored.stderr
    assert "hunter2" not in stored.stdout + stored.stderr
    assert stored.stderr.splitlines()[-1] == (
        'captaflow: stored streamerbot_password in the OS keyring (service "CaptaFlow"); '
        "CAPTAFLOW_STREAMERBOT_PASSWORD, when set, still wins"
    )
    entries = json.loads((home.root / "keyring.json").read_text(encoding="utf-8"))
    assert entries == {"CaptaFlow/streamerbot_password": "hunter2-but-longer"}
    listed = home.run("secrets", "list", env=env).stdout.splitlines()
    assert 'streamerbot_password: set in the OS keyring (service "CaptaFlow")' in listed
    # The environment wins over the keyring, and says so.
    both = home.run(
        "secrets", "list", env={**env, "CAPTAFLOW_STREAMERBOT_PASSWORD": "from-env-123"}
    ).stdout.splitlines()
    assert "streamerbot_password: set in the environment (CAPTAFLOW_STREAMERBOT_PASSWORD)" in both


def test_a_secret_needed_by_the_source_is_asked_for_by_name(home: Home, tiny_bundle: Path) -> None:
    env = keyring_env(home)
    needs = error_line(home.run("run", "--source", "ssn", "--model", str(tiny_bundle), env=env), 2)
    assert "captaflow secrets set ssn_session" in needs


def test_secrets_set_refuses_what_it_cannot_do_in_one_line(home: Home) -> None:
    unknown = error_line(home.run("secrets", "set", "password", stdin="x\n"), 2)
    assert unknown.startswith("captaflow: unknown secret 'password': use one of twitch_token, ")
    off = error_line(home.run("secrets", "set", "twitch_token", stdin="oauth:abcdefgh\n"), 2)
    assert "CAPTAFLOW_NO_KEYRING is set" in off and "CAPTAFLOW_TWITCH_TOKEN" in off
    empty = error_line(
        home.run("secrets", "set", "ssn_session", stdin="\n", env=keyring_env(home)), 2
    )
    assert "nothing was stored" in empty
    assert not (home.root / "keyring.json").exists()


# ---- sources from their descriptors -------------------------------------------------------------


def test_source_choices_and_help_come_from_the_descriptors(home: Home) -> None:
    from agent.sources import DESCRIPTORS

    result = home.run("run", "--help", data_dir=False)
    flat = " ".join(result.stdout.split())
    assert "--source {" + ",".join(d.kind for d in DESCRIPTORS) + "}" in flat
    for found in DESCRIPTORS:
        assert f"{found.kind} = {found.title}" in flat


WS_SETTINGS = """
[source]
kind = "ws"
server_url = "ws://127.0.0.1:9/chat"

[source.mapping]
text = "data.message"
author = "data.user.name"
platform = "=youtube"
where = "type=chat"
"""


def test_the_ws_mapping_as_documented_is_accepted(home: Home) -> None:
    home.write_settings(WS_SETTINGS)
    shown = home.run("config", "--show")
    assert shown.returncode == 0, shown.stderr
    assert (
        'mapping = { text = "data.message", author = "data.user.name", platform = "=youtube", '
        'where = "type=chat" }  # file'
    ) in shown.stdout.splitlines()


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('where = "type"', 'source.mapping.where = "type"'),
        ('channel = "a b"', "source.mapping.channel"),
    ],
)
def test_a_bad_ws_mapping_entry_is_named(home: Home, line: str, named: str) -> None:
    home.write_settings(WS_SETTINGS.replace('where = "type=chat"', line))
    message = error_line(home.run("run"), 2)
    assert message.startswith(f"captaflow: {named}")
    assert str(home.config) in message


# ---- the tray gets every common flag ------------------------------------------------------------

# The real entry point with `agent.tray.run_tray` replaced by a recorder: it reports what the
# tray was given, and what a Start (which re-reads the settings file with the overrides) sees.
TRAY_SPY = """
import json, sys
import agent.tray
import agent.cli as cli
from agent.config import load_settings

def run_tray(settings, *, debug=False, overrides=None, **_):
    again = load_settings(
        settings.config_path, {"data_dir": settings.paths.data_dir, **(overrides or {})}
    )
    seen = {}
    for name, got in (("given", settings), ("on_start", again)):
        seen[name] = {
            "data_dir": str(got.data_dir), "config": str(got.config_path),
            "model": str(got.model.dir), "bucket": got.sync.bucket, "prefix": got.sync.prefix,
            "channel": got.source.channel, "kind": got.source.kind,
            "server_url": got.source.server_url, "log_level": got.log.level,
            "ui_port": got.ui.port,
        }
    print(json.dumps(seen))
    return 0

agent.tray.run_tray = run_tray
sys.exit(cli.main(sys.argv[1:]))
"""


def test_the_bare_command_passes_every_common_flag_to_the_tray(home: Home) -> None:
    home.write_settings('[source]\nchannel = "from_file"\n[sync]\nbucket = "file-bucket"\n')
    model = home.root / "my-model"
    flags = [
        "--config", str(home.config), "--data-dir", str(home.data), "--model", str(model),
        "--bucket", "flag-bucket", "--prefix", "streams/mine", "--channel", "from_flag",
        "--source", "streamerbot", "--server-url", "ws://127.0.0.1:8081/", "--log-level", "debug",
        "--ui-port", "8999",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", TRAY_SPY, *flags], capture_output=True, text=True,
        env=home.env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    expected = {
        "data_dir": str(home.data), "config": str(home.config), "model": str(model),
        "bucket": "flag-bucket", "prefix": "streams/mine", "channel": "from_flag",
        "kind": "streamerbot", "server_url": "ws://127.0.0.1:8081/", "log_level": "debug",
        "ui_port": 8999,
    }  # fmt: skip
    assert seen["given"] == expected
    assert seen["on_start"] == expected, "a Start must keep the command line's flags"


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is POSIX")
@pytest.mark.timeout(60)
def test_secrets_set_on_a_terminal_asks_without_echo(home: Home) -> None:
    import pty
    import select
    import warnings

    secret = "typed-not-shown-4711"
    command = [sys.executable, "-m", "agent", "--data-dir", str(home.data), "secrets", "set",
               "twitch_token"]  # fmt: skip
    env = home.env(keyring_env(home))
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a threaded process; the child only execs.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid, terminal = pty.fork()
    if pid == 0:  # the child: a process whose controlling terminal is the pty, as in a shell
        os.chdir(home.root)
        os.execve(sys.executable, command, env)
    seen = b""

    def read_until(wanted: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while wanted not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(terminal, 4096)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                seen += chunk

    read_until(b"typing is not shown): ")
    assert b"twitch_token (" in seen, seen
    os.write(terminal, secret.encode() + b"\n")
    read_until(b"still wins")
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert secret.encode() not in seen, "the secret was echoed to the terminal"
    assert b"stored twitch_token in the OS keyring" in seen
    stored = json.loads((home.root / "keyring.json").read_text(encoding="utf-8"))
    assert stored == {"CaptaFlow/twitch_token": secret}


def test_status_after_a_kill_tells_the_last_session_never_a_live_state(home: Home) -> None:
    # What a killed agent leaves behind: its last snapshot still says "running", with the
    # source's entry-check counters (see agent.vocab.StatusRecord).
    home.data.mkdir(parents=True)
    (home.data / "status.json").write_text(
        json.dumps({
            "pid": 999999, "written_at": time.time() - 600, "state": "running",
            "source": {"state": "connected", "detail": "#xqcow", "problem": "",
                       "times_replaced": "3", "frames_skipped": "2"},
            "session_id": "20261201t093136z-xqcow", "channel": "xqcow", "messages_total": 120,
            "readings_total": 12, "upload_state": "idle", "dominant": "joy", "problem": "",
            "set_aside_total": 1, "model_id": "m",
        }),
        encoding="utf-8",
    )  # fmt: skip
    result = home.run("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert_each_said_once(lines)
    assert lines[:3] == [
        "agent: not running",
        "last session: 20261201t093136z-xqcow on xqcow: 120 messages, 12 readings "
        "(last seen 10 min ago)",
        "last run: did not stop cleanly (killed or crashed); the next start recovers what it left",
    ]
    assert (
        "checked input: 3 message time(s) out of range replaced by the receive time, 2 frame(s) "
        "skipped (not valid, too large or too deep)"
    ) in lines
    assert any(line.startswith("set aside: 1 window(s)") for line in lines)
    assert not any(line.startswith(("source:", "chat feels:", "problem:")) for line in lines)


# ---- the new-user audit: each finding through the real command line --------------------------


def test_demo_accepts_ui_port_like_every_command_that_runs_the_agent(
    home: Home, tiny_bundle: Path
) -> None:
    result = home.run("demo", "--ui-port", "0", "--quiet", "--model", str(tiny_bundle))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == f"report: {home.data / 'reports' / 'demo.html'}"
    # The stopped summary: short lines, so a 100-column terminal does not wrap them.
    assert re.fullmatch(r"stopped: session \S+", lines[-4]), lines
    assert lines[-3] == "  2019 messages (0 duplicates dropped, 6 bots/commands not scored)"
    assert re.fullmatch(r"  \d+ readings; 1 part\(s\) waiting for upload", lines[-2]), lines
    assert all(len(line) <= 100 for line in lines[-4:-1]), lines


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.timeout(120)
def test_ctrl_c_before_any_chat_says_nothing_was_recorded_never_none(
    home: Home, tiny_bundle: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on: Streamer.bot is not running
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--data-dir", str(home.data), "run", "--source",
         "streamerbot", "--server-url", f"ws://127.0.0.1:{port}/", "--ui-port", "0",
         "--model", str(tiny_bundle), "--quiet"],
        env=home.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (home.data / "status.json").is_file(), 60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert err.splitlines()[-1] == "stopped: no chat arrived, nothing recorded", err
    assert "None" not in err


def test_secrets_list_and_set_accept_data_dir_after_the_action(home: Home) -> None:
    listed = home.run("secrets", "list", "--data-dir", str(home.data), data_dir=False)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == (
        "twitch_token: not set (`captaflow secrets set twitch_token`, or set "
        "CAPTAFLOW_TWITCH_TOKEN)"
    )
    line = error_line(
        home.run("secrets", "set", "--data-dir", str(home.data), "nosuch", data_dir=False), 2
    )
    assert line.startswith("captaflow: unknown secret 'nosuch': use one of twitch_token")


def test_export_model_accepts_data_dir_for_its_default_out(home: Home) -> None:
    helped = home.run("export-model", "--help", data_dir=False)
    assert helped.returncode == 0
    assert "used only for the default --out (DIR/model" in " ".join(helped.stdout.split())
    result = home.run(
        "export-model", "--tiny", "--threads", "1", "--data-dir", str(home.data), data_dir=False
    )
    assert result.returncode == 0, result.stderr
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(rf"\[ *[\d.]+s\] done: {re.escape(str(home.data / 'model'))} \(.*\)", last)
    assert (home.data / "model" / "manifest.json").is_file()


@pytest.mark.parametrize("command", [["config", "--show"], ["athena-ddl"], ["status"]])
def test_a_closed_stdout_pipe_ends_quietly(home: Home, command: list[str]) -> None:
    """`captaflow config --show | head -3`: the reader left; no error, no traceback."""
    home.write_settings("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--data-dir", str(home.data), *command],
        env=home.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # before the command writes: every write meets a closed pipe
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    said = [line for line in err.splitlines() if not line.startswith("captaflow: no bucket set")]
    assert said == [], err


def test_unknown_sessions_list_the_known_ones_newest_first(home: Home, tiny_bundle: Path) -> None:
    made = []
    for _ in range(3):
        demo = home.run("demo", "--ui-port", "0", "--quiet", "--model", str(tiny_bundle))
        assert demo.returncode == 0, demo.stderr
        made.append(demo.stderr.splitlines()[-4].removeprefix("stopped: session "))
        time.sleep(1.1)  # ids begin with the start second: the report orders ties by them
    newest_first = ", ".join(reversed(made))
    line = error_line(home.run("markers", "--session", "x"), 2)
    assert line == (
        f"captaflow: no session 'x' in {home.data / 'spool'}: known sessions (newest first) are "
        f"{newest_first}"
    )
    line = error_line(home.run("replay", "--session", "nosuch", "--model", str(tiny_bundle)), 2)
    assert line == (
        f"captaflow: no session 'nosuch' in the journal: known sessions (newest first) are "
        f"{newest_first}; see `captaflow status` or the report's session table"
    )


def test_speed_0_is_refused_with_a_range_that_excludes_it(home: Home) -> None:
    line = error_line(home.run("demo", "--speed", "0"), 2)
    assert line == (
        'captaflow: source.speed = "0" on the command line: expected "recorded", "max" or a '
        "speed-up factor over 0 and at most 10000 such as 4"
    )


def test_config_show_prints_values_as_written_and_the_default_file_as_defaults(
    home: Home,
) -> None:
    first = home.run("config", "--show")  # the first run writes the commented file
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert 'speed = "recorded"  # default' in lines
    assert 'channel = ""  # default (also in the file)' in lines
    home.write_settings('[source]\nspeed = "4x"\nchannel = "xqcow"\n')
    again = home.run("--ui-port", "0", "config", "--show")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert 'speed = "4x"  # file' in lines
    assert 'channel = "xqcow"  # file' in lines
    assert "port = 0  # flag" in lines


@pytest.mark.network
def test_a_one_shot_sync_with_the_keyring_off_says_what_applies_and_promises_no_retry(
    home: Home, tiny_bundle: Path
) -> None:
    demo = home.run("demo", "--ui-port", "0", "--quiet", "--model", str(tiny_bundle))
    assert demo.returncode == 0, demo.stderr
    endpoint = f"http://127.0.0.1:{closed_port()}"
    no_keys = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    result = home.run("sync", "--bucket", "my-readings", env=no_keys)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "captaflow: upload stopped: no AWS credentials found: run `aws configure`, set "
        "AWS_PROFILE, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment or "
        "~/.aws/credentials (the OS keyring is off: CAPTAFLOW_NO_KEYRING is set); 1 part(s) "
        "stay on disk, nothing is lost: fix that, then run `captaflow sync` again"
    )
    offline = home.run("sync", "--bucket", "my-readings", env=aws_env(endpoint), timeout=120)
    assert offline.returncode == 1, offline.stderr
    logged = (home.data / "logs" / "captaflow.log").read_text(encoding="utf-8").splitlines()
    uploads = [x.split(" captaflow.sync: ", 1)[1] for x in logged if " captaflow.sync: " in x]
    assert uploads[-1].startswith("upload stopped: cannot reach "), uploads
    assert uploads[-1].endswith("(EndpointConnectionError) (1 part(s) waiting)"), uploads
    assert not any("will retry" in x for x in uploads), uploads


def test_a_missing_model_folder_passed_on_purpose_is_to_be_filled(home: Home) -> None:
    nowhere = home.root / "nomodel"
    line = error_line(home.run("score", "--model", str(nowhere), "hello"), 1)
    assert line == (
        f"captaflow: the model folder {nowhere} does not exist: export one there (`captaflow "
        f"export-model --out {nowhere}`) or run `captaflow model get --model {nowhere}`"
    )
    home.write_settings(f'[model]\ndir = "{nowhere.as_posix()}"\n')
    line = error_line(home.run("score", "hello"), 1)
    assert line.endswith("or run `captaflow model get`"), line


def test_export_model_errors_begin_like_every_captaflow_error(home: Home) -> None:
    line = error_line(home.run("export-model", "--bogus", data_dir=False), 2)
    assert line == (
        "captaflow: unrecognized arguments: --bogus (see `captaflow export-model --help`)"
    )


def test_batch_ids_as_the_readme_says_own_per_demo_run_kept_by_a_replay(
    home: Home, tiny_bundle: Path
) -> None:
    import csv

    sessions = []
    for _ in range(2):
        demo = home.run("demo", "--ui-port", "0", "--quiet", "--model", str(tiny_bundle))
        assert demo.returncode == 0, demo.stderr
        sessions.append(demo.stderr.splitlines()[-4].removeprefix("stopped: session "))
    replay = home.run("replay", "--session", sessions[0], "--quiet", "--model", str(tiny_bundle))
    assert replay.returncode == 0, replay.stderr
    assert replay.stderr.splitlines()[-1].startswith(
        f"re-scored session {sessions[0]} as {sessions[0]}-r1: "
    )
    ids: dict[str, set[str]] = {}
    for part in (home.data / "spool").rglob("*.csv"):
        with part.open(encoding="utf-8", newline="") as rows:
            for row in csv.DictReader(rows):
                ids.setdefault(row["session_id"], set()).add(row["batch_id"])
    first, second, rescored = ids[sessions[0]], ids[sessions[1]], ids[f"{sessions[0]}-r1"]
    assert first and not first & second  # the same demo chat, each run's own ids
    assert rescored == first  # a re-scored session keeps its original's ids
