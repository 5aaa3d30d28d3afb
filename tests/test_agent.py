"""The whole flow, end to end: source → journal → window → scorer → spool (→ S3).

The scorer is the real int8 tiny model exported through the real export path; the only
fakes are remote peers (a Twitch-like WebSocket server and moto's S3 server on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_settings
from agent.runtime import Agent
from agent.spool import iter_readings
from agent.vocab import LABELS, READING_COLUMNS, AgentState

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "agent" / "data" / "demo_chat.jsonl"


@pytest.fixture(autouse=True)
def _no_os_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTAFLOW_NO_KEYRING", "1")


def settings_for(tmp_path: Path, model: Path, **overrides: Any) -> Any:
    given = {"data_dir": str(tmp_path / "data"), "model.dir": str(model), **overrides}
    return load_settings(tmp_path / "config.toml", given)


def test_replay_of_the_real_busy_chat_capture_yields_readings_for_every_message(
    tmp_path: Path, tiny_bundle: Path, testdata: Path
) -> None:
    capture = testdata / "xqcow-chat-2019-09-15.irc.gz"
    settings = settings_for(
        tmp_path, tiny_bundle, **{"source.kind": "replay", "source.file": str(capture),
                                  "source.speed": "max"}
    )  # fmt: skip
    agent = Agent(settings)
    agent.run_forever()
    stats = agent.stats
    assert agent.status().state is AgentState.STOPPED and agent.error is None
    # 4,933 PRIVMSG + 5 USERNOTICE with text; bots and !commands are journaled only.
    assert stats.messages == 4938 and stats.duplicates == 0
    assert 31 <= stats.not_scored <= 100
    readings = list(iter_readings(Path(settings.spool.dir)))
    assert readings, "no readings"
    assert len({r.batch_id for r in readings}) == len(readings)
    assert sum(r.message_count for r in readings) + stats.deleted == (
        stats.messages - stats.not_scored
    )
    assert all(r.channel == "xqcow" and r.platform == "twitch" for r in readings)
    assert all(len(r.scores) == len(LABELS) for r in readings)
    assert all(0.0 <= s <= 1.0 for r in readings for s in r.scores)
    assert all(r.dominant in settings.display.emotions for r in readings)
    # Windows follow the recording's own clock: 7.7 minutes of chat, in order.
    span = readings[-1].window_end - readings[0].window_start
    assert 400 < span < 480
    assert all(a.window_start <= b.window_start for a, b in itertools.pairwise(readings))
    assert not list((Path(settings.spool.dir) / "open").glob("*")), "stop seals the open part"

    # A restart on the same journal replays the same chat: every message is a duplicate.
    again = Agent(settings)
    again.run_forever()
    assert again.stats.messages == 0 and again.stats.duplicates == 4938
    assert len(list(iter_readings(Path(settings.spool.dir)))) == len(readings)


def test_when_chat_outruns_the_scorer_windows_are_sampled_and_rows_say_so(
    tmp_path: Path, tiny_bundle: Path, testdata: Path
) -> None:
    # A replay at full speed delivers the whole capture in well under a second; with a lag
    # bound of 5 ms the scorer cannot score every message in time, so windows get sampled.
    settings = settings_for(
        tmp_path, tiny_bundle,
        **{"source.kind": "replay", "source.file": str(testdata / "xqcow-chat-2019-09-15.irc.gz"),
           "source.speed": "max", "window.max_lag_seconds": 0.005, "model.cache_size": 0},
    )  # fmt: skip
    agent = Agent(settings)
    agent.run_forever()
    readings = list(iter_readings(Path(settings.spool.dir)))
    sampled = [r for r in readings if r.scored_count < r.message_count]
    assert sampled, "no window was sampled"
    assert all(1 <= r.scored_count <= r.message_count for r in readings)
    # Sampling changes how many are scored, never how many are counted.
    assert sum(r.message_count for r in readings) + agent.stats.deleted == (
        agent.stats.messages - agent.stats.not_scored
    )


# ---- a Twitch-like chat server on loopback ---------------------------------------------------


def privmsg(n: int, text: str) -> str:
    return (
        f"@id=msg-{n};user-id={1000 + n};tmi-sent-ts={int(time.time() * 1000)} "
        f":viewer{n}!viewer{n}@viewer{n}.tmi.twitch.tv PRIVMSG #streamer :{text}\r\n"
    )


class TwitchLikeServer:
    """Plays Twitch: answers the login, sends chat, drops the link once, resends history."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        self.connections = 0
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TwitchLikeServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws: Any) -> None:
        self.connections += 1
        first = self.connections == 1
        while True:
            frame = await ws.recv()
            if "NICK " in frame:
                await ws.send(":tmi.twitch.tv 001 justinfan :Welcome, GLHF!\r\n")
            if "JOIN #" in frame:
                break
        half = len(self.messages) // 2
        if first:
            # Half the chat, several lines in one frame, then the link dies.
            await ws.send("".join(privmsg(n, t) for n, t in enumerate(self.messages[:half])))
            await asyncio.sleep(0.2)
            return
        # After the reconnect the server resends recent history (the last 5), then the rest.
        for n in range(max(0, half - 5), len(self.messages)):
            await ws.send(privmsg(n, self.messages[n]))
        await asyncio.sleep(30)


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.network
@pytest.mark.timeout(120)
def test_live_twitch_chat_through_a_dropped_link_gives_each_message_once(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    texts = [f"message number {n} PogU" if n % 3 else f"KEKW {n}" for n in range(40)]
    with TwitchLikeServer(texts) as server:
        settings = settings_for(
            tmp_path, tiny_bundle, **{"source.kind": "twitch", "source.channel": "streamer",
                                      "source.server_url": server.url, "window.messages": 10}
        )  # fmt: skip
        agent = Agent(settings)
        agent.start()
        try:
            wait_for(lambda: agent.status().messages_total >= 40, 60)
            wait_for(lambda: agent.status().readings_total >= 4, 30)
            status = agent.status()
            assert status.state is AgentState.RUNNING
            assert status.session_id and status.channel == "streamer"
        finally:
            agent.stop()
    assert server.connections >= 2
    assert agent.stats.messages == 40 and agent.stats.duplicates == 5
    readings = list(iter_readings(Path(settings.spool.dir)))
    assert sum(r.message_count for r in readings) == 40
    assert not list((Path(settings.spool.dir) / "open").glob("*"))
    journal = sqlite3.connect(Path(settings.data_dir) / "journal.sqlite3")
    keys = {row[0] for row in journal.execute("SELECT key FROM messages")}
    journal.close()
    assert keys == {f"msg-{n}" for n in range(40)}


def test_status_file_tells_another_process_what_happened(tmp_path: Path, tiny_bundle: Path) -> None:
    settings = settings_for(
        tmp_path, tiny_bundle,
        **{"source.kind": "replay", "source.file": str(DEMO), "source.speed": "max"},
    )  # fmt: skip
    Agent(settings).run_forever()
    snapshot = json.loads((Path(settings.data_dir) / "status.json").read_text())
    assert snapshot["channel"] == "captaflow_demo"
    assert snapshot["messages_total"] == len(DEMO.read_text().splitlines())
    assert snapshot["readings_total"] > 100
    assert snapshot["parts_waiting"] >= 1


# ---- the command line, as a user types it ----------------------------------------------------


def captaflow(
    *args: str, tmp_path: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "CAPTAFLOW_CONFIG": str(tmp_path / "config.toml"),
        "CAPTAFLOW_DATA_DIR": str(tmp_path / "data"),
        "CAPTAFLOW_NO_KEYRING": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], input=stdin, capture_output=True, text=True,
        env=environment, timeout=180,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    # A first run also says where it created the settings file: a note, not part of the error.
    lines = [
        line
        for line in result.stderr.strip().splitlines()
        if not line.startswith("captaflow: created the settings file ")
    ]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Path]:
    """A data folder that has been through `captaflow demo` once."""
    home = tmp_path_factory.mktemp("cli-home")
    result = captaflow("demo", "--model", str(tiny_bundle), "--quiet", tmp_path=home)
    assert result.returncode == 0, result.stderr
    # At full speed: a short line every 25 windows instead of every window (app's previews).
    assert "READINGS SUMMARY" in result.stdout and "windows #0–#24 ·" in result.stdout
    yield home


def test_demo_prints_the_three_previews_and_writes_a_report(
    cli_home: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    report = cli_home / "data" / "reports" / "demo.html"
    assert report.is_file() and "<svg" in report.read_text(encoding="utf-8")
    # The per-message preview, as the prototype printed it (--verbose brings every line back).
    result = captaflow("demo", "--model", str(tiny_bundle), "--verbose", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" │ ") >= 1000 and "── window #1 " in result.stdout
    assert "session means:" in result.stdout


def test_score_reads_arguments_and_stdin(tiny_bundle: Path, tmp_path: Path) -> None:
    result = captaflow("score", "--model", str(tiny_bundle), "--json", "PogU", "",
                       "\U0001f602" * 3, tmp_path=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["PogU", "", "\U0001f602" * 3]
    assert all(list(r["scores"]) == list(LABELS) for r in rows)
    piped = captaflow("score", "--model", str(tiny_bundle), stdin="W\nno way\n",
                      tmp_path=tmp_path)  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert len(piped.stdout.splitlines()) == 2 and "→" in piped.stdout


def test_status_report_replay_and_athena_ddl(cli_home: Path, tiny_bundle: Path) -> None:
    status = captaflow("status", tmp_path=cli_home)
    assert status.returncode == 0, status.stderr
    assert "not running" in status.stdout and "waiting for upload" in status.stdout

    report = captaflow("report", "--latest", "--out", str(cli_home / "r.html"), tmp_path=cli_home)
    assert report.returncode == 0, report.stderr
    assert (cli_home / "r.html").is_file()

    ddl = captaflow("athena-ddl", "--bucket", "my-readings", tmp_path=cli_home)
    assert ddl.returncode == 0 and "CREATE EXTERNAL TABLE" in ddl.stdout
    assert "s3://my-readings/captaflow/" in ddl.stdout

    journal = sqlite3.connect(cli_home / "data" / "journal.sqlite3")
    [(session,)] = journal.execute("SELECT session_id FROM sessions").fetchall()
    journal.close()
    replay = captaflow("replay", "--session", session, "--model", str(tiny_bundle), "--quiet",
                       tmp_path=cli_home)  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert f"as {session}-r1" in replay.stderr
    sealed = list((cli_home / "data" / "spool" / "sealed").rglob(f"{session}-r1-*.csv"))
    assert sealed
    with sealed[0].open(newline="") as handle:
        assert next(csv.reader(handle)) == list(READING_COLUMNS)
    unknown = captaflow("replay", "--session", "nope", "--model", str(tiny_bundle),
                        tmp_path=cli_home)  # fmt: skip
    assert "no session 'nope'" in assert_one_line_error(unknown, 2)


def test_bad_input_gives_one_line_that_says_what_to_do(tmp_path: Path, tiny_bundle: Path) -> None:
    no_channel = captaflow("run", "--model", str(tiny_bundle), tmp_path=tmp_path)
    assert "--channel" in assert_one_line_error(no_channel, 2)

    bad_channel = captaflow("run", "--channel", "../etc", "--model", str(tiny_bundle),
                            tmp_path=tmp_path)  # fmt: skip
    assert "channel name" in assert_one_line_error(bad_channel, 2)

    no_model = captaflow("run", "--channel", "x", "--model", str(tmp_path / "none"),
                         tmp_path=tmp_path)  # fmt: skip
    assert "captaflow export-model" in assert_one_line_error(no_model, 1)

    (tmp_path / "config.toml").write_text("[window]\nmessages = -3\n", encoding="utf-8")
    bad_setting = captaflow("score", "hi", "--model", str(tiny_bundle), tmp_path=tmp_path)
    assert "window.messages" in assert_one_line_error(bad_setting, 2)
    (tmp_path / "config.toml").write_text("[window\n", encoding="utf-8")
    broken = captaflow("score", "hi", "--model", str(tiny_bundle), tmp_path=tmp_path)
    assert "config.toml" in assert_one_line_error(broken, 2)
    (tmp_path / "config.toml").unlink()

    tampered = tmp_path / "tampered"
    import shutil

    shutil.copytree(tiny_bundle, tampered)
    with (tampered / "model.onnx").open("r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    refused = captaflow("score", "hi", "--model", str(tampered), tmp_path=tmp_path)
    assert "sha256" in assert_one_line_error(refused, 1)

    bad_file = captaflow("run", "--source", "replay", "--file", str(tmp_path / "missing.jsonl"),
                         "--model", str(tiny_bundle), tmp_path=tmp_path)  # fmt: skip
    assert "missing.jsonl" in assert_one_line_error(bad_file, 2)


@pytest.mark.network
@pytest.mark.timeout(180)
def test_readings_reach_s3_with_the_designed_keys(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    s3.create_bucket(Bucket="agent-e2e")
    result = captaflow(
        "demo", "--model", str(tiny_bundle), "--quiet", "--bucket", "agent-e2e",
        "--prefix", "streams", tmp_path=tmp_path, env=s3_server,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    synced = captaflow("sync", "--bucket", "agent-e2e", "--prefix", "streams",
                       tmp_path=tmp_path, env=s3_server)  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="agent-e2e")["Contents"]]
    assert keys and all(
        k.startswith("streams/platform=twitch/channel=captaflow_demo/dt=2025-11-24/") for k in keys
    )
    assert not list((tmp_path / "data" / "spool" / "sealed").rglob("*.csv"))
    body = s3.get_object(Bucket="agent-e2e", Key=keys[0])["Body"].read().decode()
    assert body.splitlines()[0] == ",".join(READING_COLUMNS)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.timeout(120)
def test_ctrl_c_stops_cleanly_sealing_the_part_and_printing_the_summary(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    import signal

    env = {
        **os.environ,
        "CAPTAFLOW_CONFIG": str(tmp_path / "config.toml"),
        "CAPTAFLOW_DATA_DIR": str(tmp_path / "data"),
        "CAPTAFLOW_NO_KEYRING": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--source", "replay", "--file", str(DEMO),
         "--speed", "5", "--model", str(tiny_bundle), "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        status = tmp_path / "data" / "status.json"
        wait_for(lambda: status.is_file() and json.loads(status.read_text())["readings_total"], 60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "READINGS SUMMARY" in out and "Traceback" not in err
    spool = tmp_path / "data" / "spool"
    assert list((spool / "sealed").rglob("*.csv")), "Ctrl-C must seal the open part"
    assert not list((spool / "open").glob("*"))
