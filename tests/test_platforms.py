"""Every platform from settings to the wire: a TOML file and the environment, the real CLI
(`python -m agent run` in a subprocess, as a streamer starts it), loopback fakes of the
bridges that follow their published frames (tests/platform_fakes.py cites each), the real
tiny model, the spool, and moto's S3 for the keys.

What a streamer on YouTube, Kick or TikTok sees: readings filed under the platform the chat
came from (`platform=youtube/...` in S3, whatever the bridge), a Super Chat's words scored,
a Kick ban via Streamer.bot keeping the banned viewer out of later readings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.spool import iter_readings
from agent.vocab import Reading
from tests.platform_fakes import (
    FakeSsnRelay,
    FakeStreamerbot,
    FakeTwitchIrc,
    FakeTwitchValidate,
    irc_privmsg,
    sb_kick_banned,
    sb_kick_chat,
    sb_youtube,
    ssn_row,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX"),
]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    readings: list[Reading]
    status: dict[str, Any]  # status.json after the stop
    seen: dict[str, Any]  # status.json when the run was stopped (what `until` saw)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def environment(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CAPTAFLOW_CONFIG": str(tmp_path / "config.toml"),
        "CAPTAFLOW_DATA_DIR": str(tmp_path / "data"),
        "CAPTAFLOW_NO_KEYRING": "1",
        **extra,
    }


def run_agent(
    tmp_path: Path,
    bundle: Path,
    config: str,
    env: dict[str, str],
    messages: int = 0,
    until: Callable[[dict[str, Any]], bool] | None = None,
    while_running: Callable[[], None] | None = None,
) -> Run:
    """`captaflow run` until `messages` chat messages are in (or `until(status.json)`), then
    Ctrl-C (it seals)."""
    wanted = until or (lambda snapshot: snapshot.get("messages_total", 0) >= messages)
    seen: dict[str, Any] = {}

    def done(snapshot: dict[str, Any]) -> bool:
        if wanted(snapshot):
            seen.update(snapshot)
            return True
        return False

    (tmp_path / "config.toml").write_text(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--model", str(bundle), "--quiet"],
        env=environment(tmp_path, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    status_file = tmp_path / "data" / "status.json"

    def status() -> dict[str, Any]:
        try:
            return dict(json.loads(status_file.read_text()))
        except (OSError, ValueError):
            return {}

    try:
        wait_for(lambda: proc.poll() is not None or done(status()), 120)
        time.sleep(0.5)  # the last messages into windows before the stop
        if while_running is not None and proc.poll() is None:
            while_running()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    readings = list(iter_readings(tmp_path / "data" / "spool"))
    return Run(proc.returncode, out, err, readings, status(), seen)


def one_shot_sync(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "sync"], env=environment(tmp_path, env),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def s3_keys(s3_env: dict[str, str], bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )
    listing = s3.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


def new_bucket(s3_env: dict[str, str]) -> str:
    import boto3

    name = f"captaflow-test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=name)
    return name


def by_platform(readings: list[Reading], field: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for reading in readings:
        totals[reading.platform] = totals.get(reading.platform, 0) + int(getattr(reading, field))
    return totals


def config_for(kind: str, url: str, bucket: str, extra: str = "") -> str:
    return (
        f'[source]\nkind = "{kind}"\nchannel = "streamer"\nserver_url = "{url}"\n{extra}\n'
        f'[window]\nmessages = 3\n\n[sync]\nbucket = "{bucket}"\ninterval_seconds = 3600\n'
    )


def test_streamerbot_with_a_password_youtube_super_chat_and_a_kick_ban(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    """Authentication and Enforce on in Streamer.bot, the password in the environment."""
    banned, other = ("777", "baduser"), ("778", "gooduser")
    script: list[Any] = [
        sb_youtube("Message", "y1", "hello from youtube", "UCv1", "Viewer One"),
        sb_youtube("Message", "y2", "this stream is great", "UCv2", "Viewer Two"),
        sb_youtube("SuperChat", "y3", "a super chat with real words", "UCv3", "Rich Fan"),
        *(sb_kick_chat(f"k{n}", f"kick message {n}", *other) for n in range(3)),
        sb_kick_chat("kb1", "something rude", *banned),
        sb_kick_chat("kb2", "more rude things", *banned),
        sb_kick_banned(*banned),
        sb_kick_chat("kb3", "still here after the ban?", *banned),
        sb_kick_chat("kb4", "and again", *banned),
        *(sb_kick_chat(f"k{n}", f"kick message {n}", *other) for n in range(3, 6)),
    ]
    bucket = new_bucket(s3_server)
    env = {**s3_server, "CAPTAFLOW_STREAMERBOT_PASSWORD": "hunter2"}
    with FakeStreamerbot(password="hunter2", enforce=True, events=[script]) as bot:
        run = run_agent(
            tmp_path, tiny_bundle, config_for("streamerbot", bot.url, bucket), env, messages=13
        )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "hunter2" not in run.stderr + run.stdout
    assert [r["request"] for r in bot.requests][:2] == ["Authenticate", "Subscribe"]
    counted = by_platform(run.readings, "message_count")
    assert by_platform(run.readings, "scored_count")["youtube"] == 3  # the Super Chat too
    # The banned viewer's messages stay out of the readings; the others' are all there.
    assert counted == {"youtube": 3, "kick": 6}
    assert {getattr(r, "via", "streamerbot") for r in run.readings} == {"streamerbot"}
    synced = one_shot_sync(tmp_path, env)
    assert synced.returncode == 0, synced.stderr
    keys = s3_keys(s3_server, bucket)
    assert any("platform=youtube/channel=streamer/" in key for key in keys), keys
    assert any("platform=kick/channel=streamer/" in key for key in keys), keys
    assert not any("platform=streamerbot" in key for key in keys), keys


@pytest.mark.parametrize("join", ["message", "url"])
def test_social_stream_ninja_both_join_styles_file_under_the_chats_platforms(
    join: str, tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    session = "XyZ123abc"
    rows: list[Any] = [
        ssn_row(1, "hi from shorts", type_="youtubeshorts"),
        ssn_row(2, "great stream!", type_="youtube", event="superchat", hasDonation="$5.00"),
        ssn_row(3, "love this part", type_="youtube"),
        ssn_row(4, "followed", type_="tiktok", event="new_follower"),  # not chat
        *(ssn_row(n, f"tiktok chat {n}", type_="tiktok") for n in range(5, 8)),
        ssn_row(9, "thank you!", type_="tiktok", event="donation", hasDonation="5 roses"),
        ssn_row(10, "the rest", type_="tiktok"),
        ssn_row(11, "and more", type_="tiktok"),
    ]
    bucket = new_bucket(s3_server)
    with FakeSsnRelay(session, rows) as relay:
        if join == "message":
            env = {**s3_server, "CAPTAFLOW_SSN_SESSION": session}
            url = relay.url
        else:
            env = dict(s3_server)
            url = f"{relay.url}/join/{session}/4"
        run = run_agent(tmp_path, tiny_bundle, config_for("ssn", url, bucket), env, messages=9)
    assert run.returncode == 0, run.stderr
    assert session not in run.stderr + run.stdout
    expected_join = ("message", {"join": session, "in": 4}) if join == "message" else None
    if expected_join is not None:
        assert relay.joins[0] == expected_join
    assert by_platform(run.readings, "message_count") == {"youtube": 3, "tiktok": 6}
    synced = one_shot_sync(tmp_path, env)
    assert synced.returncode == 0, synced.stderr
    keys = s3_keys(s3_server, bucket)
    assert any("platform=youtube/" in key for key in keys), keys
    assert any("platform=tiktok/" in key for key in keys), keys
    assert not any("platform=ssn" in key or "platform=other" in key for key in keys), keys


TOKEN = "abcdefghijklmnopqrstuvwxyz0123"


def log_text(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*.log"))


def twitch_config(irc_url: str, validate_url: str, bucket: str) -> str:
    return config_for("twitch", irc_url, bucket, f'validate_url = "{validate_url}"\n')


def test_twitch_logged_in_with_a_token_and_the_login_from_the_validation_endpoint(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    info = {"login": "mybot", "scopes": ["chat:read"], "expires_in": 14_400}
    lines = [irc_privmsg(n, f"twitch chat line {n}") for n in range(6)]
    bucket = new_bucket(s3_server)
    env = {**s3_server, "CAPTAFLOW_TWITCH_TOKEN": TOKEN}
    with (
        FakeTwitchValidate({TOKEN: info}) as validate,
        FakeTwitchIrc("streamer", lines, tokens={TOKEN: "mybot"}) as irc,
    ):
        run = run_agent(
            tmp_path, tiny_bundle, twitch_config(irc.url, validate.url, bucket), env, messages=6
        )
    assert run.returncode == 0, run.stderr
    assert validate.calls == [f"OAuth {TOKEN}"]
    assert f"PASS oauth:{TOKEN}" in irc.received[0] and "NICK mybot" in irc.received[0]
    assert by_platform(run.readings, "message_count") == {"twitch": 6}
    logs = log_text(tmp_path)
    assert "token of mybot, scopes chat:read, expires in 4 h 0 min" in logs
    assert TOKEN not in logs + run.stderr + run.stdout


def test_twitch_expired_token_reads_anonymously_and_says_so_once(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    lines = [irc_privmsg(n, f"twitch chat line {n}") for n in range(3)]
    bucket = new_bucket(s3_server)
    env = {**s3_server, "CAPTAFLOW_TWITCH_TOKEN": TOKEN}
    with FakeTwitchValidate({}) as validate, FakeTwitchIrc("streamer", lines, tokens={}) as irc:
        run = run_agent(
            tmp_path, tiny_bundle, twitch_config(irc.url, validate.url, bucket), env, messages=3
        )
    assert run.returncode == 0, run.stderr
    assert not any(line.startswith("PASS") for line in irc.received[0])
    assert by_platform(run.readings, "message_count") == {"twitch": 3}
    said = log_text(tmp_path) + run.stderr
    assert said.count("the Twitch token is expired or revoked") >= 1
    assert "captaflow secrets set twitch_token" in said
    assert TOKEN not in said


def test_streamerbot_refusing_the_subscription_is_a_visible_problem(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    bucket = new_bucket(s3_server)
    with FakeStreamerbot(subscribe_error="Invalid events") as bot:
        run = run_agent(
            tmp_path,
            tiny_bundle,
            config_for("streamerbot", bot.url, bucket),
            dict(s3_server),
            until=lambda snapshot: "subscription" in str(snapshot.get("problem") or ""),
        )
    assert run.returncode == 0, run.stderr
    assert "Streamer.bot refused the chat subscription (Invalid events)" in str(
        run.seen.get("problem")
    )
    assert run.seen.get("state") == "trouble"


def test_streamerbot_not_running_is_said_in_plain_words(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    bucket = new_bucket(s3_server)
    url = "ws://127.0.0.1:9/"  # the discard port: nothing listens there on loopback
    run = run_agent(
        tmp_path,
        tiny_bundle,
        config_for("streamerbot", url, bucket),
        dict(s3_server),
        until=lambda snapshot: "retrying" in json.dumps(snapshot.get("source") or ""),
    )
    assert run.returncode == 0, run.stderr
    said = json.dumps(run.seen.get("source")) + log_text(tmp_path) + run.stderr
    assert f"can't reach Streamer.bot at {url}: is it running with its WebSocket server on?" in said
    assert "Errno" not in said and "0.0 s" not in said


def test_generic_ws_mapping_and_hostile_frames_through_the_cli(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    """The documented mapping (`where = "type=chat"`, `platform = "=youtube"`) from the TOML
    file; 1e400 / 1e300 times replaced and counted, 400 KB of brackets and NaN one skipped
    frame each; the agent keeps reading."""
    rows: list[Any] = [
        json.dumps({"type": "chat", "body": f"mapped chat {n}", "uid": f"u{n}", "who": "a"})
        for n in range(3)
    ]
    rows += [
        '{"type": "chat", "body": "infinite time", "uid": "x1", "t": 1e400}',
        '{"type": "chat", "body": "absurd time", "uid": "x2", "t": 1e300}',
        '{"type": "chat", "body": "not a number", "uid": "x3", "t": NaN}',
        "[" * 200_000 + "]" * 200_000,
        json.dumps({"type": "join", "body": "someone joined", "uid": "j1"}),
        json.dumps({"type": "chat", "body": "after all that", "uid": "x4"}),
    ]

    class Feed(FakeSsnRelay):  # a plain JSON feed: no join, frames as they are
        async def handle(self, ws: Any, n: int) -> None:
            for row in rows:
                await ws.send(row)
            await ws.wait_closed()

    mapping = (
        '[source.mapping]\nwhere = "type=chat"\ntext = "body"\nid = "uid"\nauthor = "who"\n'
        'time = "t"\nplatform = "=youtube"\n'
    )
    bucket = new_bucket(s3_server)
    with Feed("", []) as feed:
        config = config_for("ws", feed.url, bucket).replace("\n[window]", f"{mapping}\n[window]")
        shown: list[str] = []

        def status_command() -> None:
            result = subprocess.run(
                [sys.executable, "-m", "agent", "status"], env=environment(tmp_path, {}),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            shown.append(result.stdout)

        run = run_agent(
            tmp_path,
            tiny_bundle,
            config,
            dict(s3_server),
            until=lambda snapshot: (
                snapshot.get("messages_total", 0) >= 6
                and (snapshot.get("source") or {}).get("frames_skipped") == "2"
            ),
            while_running=status_command,
        )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "RecursionError" not in log_text(tmp_path)
    assert by_platform(run.readings, "message_count") == {"youtube": 6}
    assert {getattr(r, "via", "ws") for r in run.readings} == {"ws"}
    source = run.status.get("source") or {}  # the status file after the stop
    assert source.get("times_replaced") == "2" and source.get("frames_skipped") == "2", source
    assert (
        "checked at entry: 2 message times replaced by the receive time, 2 unusable frames "
        "skipped" in shown[0]
    ), shown
