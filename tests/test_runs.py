"""Runs as a user makes them: a settings file and the environment, `python -m agent ...` in a
subprocess, a loopback S3 server. What a run leaves on disk and in S3 is what is checked."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.spool import iter_readings
from agent.vocab import Reading

T0 = 1_764_000_000.0


def captaflow(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "CAPTAFLOW_CONFIG": str(home / "config.toml"),
        "CAPTAFLOW_DATA_DIR": str(home / "data"),
        "CAPTAFLOW_NO_KEYRING": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True,
        env=environment, timeout=300,
    )  # fmt: skip


def write_chat(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def chat_line(n: int, **fields: Any) -> dict[str, Any]:
    return {"platform": "twitch", "channel": "streamer", "id": f"m{n}", "author": f"viewer{n}",
            "text": f"message {n} PogU", "sent_at": T0 + n, **fields}  # fmt: skip


def status_file(home: Path) -> dict[str, Any]:
    data = json.loads((home / "data" / "status.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def no_nulls(value: object) -> bool:
    if isinstance(value, dict):
        return all(no_nulls(v) for v in value.values())
    return value is not None


def spool_readings(home: Path) -> list[Reading]:
    return list(iter_readings(home / "data" / "spool"))


@pytest.mark.timeout(300)
def test_a_poisoned_message_never_stops_the_readings_nor_a_restart(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    good = [chat_line(n) for n in range(40)]
    # JSON numbers past a float (1e400 is inf) and a time in the year 3170843.
    boom = (
        '{"platform": "twitch", "channel": "streamer", "id": "%s", "text": "boom", "sent_at": %s}'
    )
    poisoned = [
        *good[:13],
        boom % ("p1", "1e400"),
        *good[13:27],
        boom % ("p2", "1e300"),
        *good[27:],
    ]
    chat = write_chat(tmp_path / "chat.jsonl", poisoned)
    run = ("run", "--source", "replay", "--file", str(chat), "--speed", "max",
           "--model", str(tiny_bundle), "--quiet")  # fmt: skip
    first = captaflow(*run, home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    # Exactly what survives: every good message is in a written reading. (A source that
    # re-times an impossible time at entry may also file the two poisoned ones.)
    readings = spool_readings(tmp_path)
    journal = sqlite3.connect(tmp_path / "data" / "journal.sqlite3")
    batch_of = dict(journal.execute("SELECT key, batch_id FROM messages").fetchall())
    aside = {
        b for (b,) in journal.execute("SELECT batch_id FROM batches WHERE state = 'set_aside'")
    }
    journal.close()
    written = {r.batch_id for r in readings}
    assert all(batch_of[f"m{n}"] in written for n in range(40))
    snapshot = status_file(tmp_path)
    assert snapshot["set_aside_total"] == len(aside) and len(aside) in (0, 2)
    assert {batch_of["p1"], batch_of["p2"]} == aside or not aside
    assert sum(r.message_count for r in readings) == 42 - len(aside)
    assert snapshot["problem"] == ""  # counted, not a problem: the readings went on

    # A restart on the same file: nothing new, nothing dies, and it says how to re-score.
    again = captaflow(*run, home=tmp_path)
    assert again.returncode == 0, again.stderr
    session = readings[0].session_id
    assert "already recorded (42 duplicates" in again.stderr
    assert f"captaflow replay --session {session}" in again.stderr
    assert len(spool_readings(tmp_path)) == len(readings)
    snapshot = status_file(tmp_path)
    assert snapshot["state"] == "stopped" and no_nulls(snapshot)
    assert snapshot["source"]["state"] == "finished"
    # The second run re-read the file: its two impossible times were replaced again (counted).
    assert snapshot["source"]["times_replaced"] == "2"


@pytest.mark.timeout(300)
def test_the_readme_demo_twice_shows_the_same_readings_twice(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    def demo() -> list[Reading]:
        before = {r.session_id for r in spool_readings(tmp_path)}
        result = captaflow("demo", "--model", str(tiny_bundle), "--quiet", home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "duplicates dropped" in result.stderr and "(0 duplicates" in result.stderr
        return [r for r in spool_readings(tmp_path) if r.session_id not in before]

    first, second = demo(), demo()
    assert first and {r.session_id for r in first}.isdisjoint(r.session_id for r in second)

    def shown(readings: list[Reading]) -> list[tuple[object, ...]]:
        return [(r.seq, r.window_start, r.window_end, r.message_count, r.scored_count,
                 r.scores, r.dominant) for r in readings]  # fmt: skip

    assert shown(first) == shown(second)
    snapshot = status_file(tmp_path)
    assert snapshot["state"] == "stopped" and no_nulls(snapshot)
    assert snapshot["session_id"] == second[0].session_id


@pytest.mark.network
@pytest.mark.timeout(300)
def test_a_multistream_bridge_feed_gives_two_timelines_and_two_s3_partitions(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    from tests.s3server import s3_client

    s3 = s3_client(s3_server)
    s3.create_bucket(Bucket="multistream")
    mixed = [chat_line(n, platform="youtube" if n % 3 == 0 else "twitch") for n in range(60)]
    chat = write_chat(tmp_path / "mixed.jsonl", mixed)
    result = captaflow(
        "run", "--source", "replay", "--file", str(chat), "--speed", "max", "--quiet",
        "--model", str(tiny_bundle), "--bucket", "multistream", "--prefix", "ms",
        home=tmp_path, env=s3_server,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    readings = spool_readings(tmp_path)
    by_platform = {p: [r for r in readings if r.platform == p] for p in ("twitch", "youtube")}
    assert sum(r.message_count for r in by_platform["youtube"]) == 20
    assert sum(r.message_count for r in by_platform["twitch"]) == 40
    sessions = [{r.session_id for r in rs} for rs in by_platform.values()]
    assert all(len(s) == 1 for s in sessions) and sessions[0] != sessions[1]
    synced = captaflow("sync", "--bucket", "multistream", "--prefix", "ms",
                       home=tmp_path, env=s3_server)  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="multistream")["Contents"]]
    partitions = sorted({"/".join(k.split("/")[1:3]) for k in keys})
    assert partitions == ["platform=twitch/channel=streamer", "platform=youtube/channel=streamer"]


@pytest.mark.timeout(300)
def test_listeners_hear_every_reading_and_a_restarted_agent_counts_afresh(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    from agent.config import load_settings
    from agent.runtime import Agent
    from agent.vocab import AgentState, AgentStatus

    chat = write_chat(tmp_path / "chat.jsonl", [chat_line(n) for n in range(25)])
    settings = load_settings(
        tmp_path / "config.toml",
        {"data_dir": str(tmp_path / "data"), "model.dir": str(tiny_bundle),
         "source.kind": "replay", "source.file": str(chat), "source.speed": "max"},
    )  # fmt: skip
    heard: list[Reading] = []
    states: list[AgentState] = []

    def broken(status: AgentStatus) -> None:
        raise RuntimeError("the web page went away")

    agent = Agent(settings, on_status=broken)
    agent.on_status.append(lambda status: states.append(status.state))
    agent.on_reading.append(heard.append)

    def run_to_the_end() -> None:
        # A replay stops the agent by itself at the end of the file.
        agent.start()
        deadline = time.monotonic() + 120
        while agent.status().state is not AgentState.STOPPED and time.monotonic() < deadline:
            time.sleep(0.05)
        agent.stop(timeout=30)

    run_to_the_end()
    run_to_the_end()  # the tray's Start after Stop: the same file again, all duplicates
    assert agent.error is None
    assert [r.batch_id for r in heard] == [r.batch_id for r in spool_readings(tmp_path)]
    assert sum(r.message_count for r in heard) == 25
    final = agent.status()
    assert final.state is AgentState.STOPPED and states[-1] is AgentState.STOPPED
    assert (final.messages_total, final.duplicates_total, final.readings_total) == (0, 25, 0)
    assert status_file(tmp_path)["duplicates_total"] == 25


def irc_privmsg(n: int, login: str) -> str:
    user_id = 777 if login == "troll" else 1000 + n
    ms = int((T0 + n) * 1000)
    tags = f"@id=msg-{n};user-id={user_id};tmi-sent-ts={ms}"
    return f"{tags} :{login}!{login}@{login}.tmi.twitch.tv PRIVMSG #streamer :message {n} KEKW"


@pytest.mark.timeout(300)
def test_replay_of_a_session_follows_the_live_moderation_rule(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    # The troll writes before and after his ban; the ban comes while a window is open.
    lines = [irc_privmsg(n, "troll" if n % 4 == 1 else f"viewer{n}") for n in range(14)]
    ban = f"@room-id=1;target-user-id=777;tmi-sent-ts={int((T0 + 5.5) * 1000)} " \
          ":tmi.twitch.tv CLEARCHAT #streamer :troll"  # fmt: skip
    chat = write_chat(tmp_path / "chat.irc", [*lines[:6], ban, *lines[6:]])
    live = captaflow("run", "--source", "replay", "--file", str(chat), "--speed", "max",
                     "--model", str(tiny_bundle), "--quiet", home=tmp_path)  # fmt: skip
    assert live.returncode == 0, live.stderr
    [session] = {r.session_id for r in spool_readings(tmp_path)}
    again = captaflow("replay", "--session", session, "--model", str(tiny_bundle), "--quiet",
                      home=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr

    def counts(session_id: str) -> list[int]:
        return [r.message_count for r in spool_readings(tmp_path) if r.session_id == session_id]

    # Windows of ten: the first is still open at the ban, so the troll's lines before the ban
    # and after it are out of it (10 - 3), and of every later one (4 - 1). The old re-score
    # rule (only lines sent before the ban) gave [8, 4].
    assert counts(session) == counts(f"{session}-r1") == [7, 3]


@pytest.mark.timeout(300)
def test_a_window_an_older_agent_died_on_is_set_aside_once_and_never_retried(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    from agent.journal import Journal
    from agent.vocab import ChatMessage
    from agent.windows import batch_id_for

    # What an older agent left when it died on a window ending in the year 3170843: the
    # window assigned in the journal, its reading never written, the session never ended.
    now = time.time()
    with Journal.open(tmp_path / "data" / "journal.sqlite3") as journal:
        session, _ = journal.begin_session("twitch", "streamer", now=now)
        keys = ["old-1", "old-2", "old-3"]
        for n, key in enumerate(keys):
            sent = 1e14 if n == 2 else T0 - 10 + n
            journal.add(ChatMessage("twitch", "streamer", key, f"u{n}", "old chat", sent, now),
                        session_id=session, scorable=True)  # fmt: skip
        journal.assign(session, batch_id_for(keys), 0, keys)
    chat = write_chat(tmp_path / "chat.jsonl", [chat_line(n) for n in range(20)])
    run = ("run", "--source", "replay", "--file", str(chat), "--speed", "max",
           "--model", str(tiny_bundle), "--quiet")  # fmt: skip
    for attempt in range(2):
        result = captaflow(*run, home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert status_file(tmp_path)["set_aside_total"] == (1 if attempt == 0 else 0)
    with Journal.open(tmp_path / "data" / "journal.sqlite3") as journal:
        [aside] = journal.set_aside_batches()
    assert aside.batch_id == batch_id_for(keys) and "between 1970 and 9999" in aside.reason
    # The good chat of the first run is all in readings, once.
    assert sum(r.message_count for r in spool_readings(tmp_path)) == 20
