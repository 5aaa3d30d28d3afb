"""`captaflow markers` and `captaflow login twitch` as a user runs them; live moments to
Twitch stream markers through the hub, against the loopback fake of Twitch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_settings
from agent.twitch_api import MarkerPoster, MarkerSettings, RateLimiter, login_twitch
from agent.webui import LiveHub, wait_for
from tests.test_live_moments import BURSTS, SPIKES, readings, write_spool
from tests.test_markers import parse_edl
from tests.twitch_fakes import CLIENT_ID, LOGIN, TOKEN, USER_ID, FakeTwitch


def captaflow(tmp_path: Path, *args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "config.toml").write_text(config, encoding="utf-8")
    env = {
        **os.environ,
        "CAPTAFLOW_CONFIG": str(tmp_path / "config.toml"),
        "CAPTAFLOW_DATA_DIR": str(tmp_path / "data"),
        "CAPTAFLOW_NO_KEYRING": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, env=env, timeout=120
    )
    # Bytes decoded as they are: no newline translation (an EDL's lines end in CR LF).
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@pytest.fixture
def spooled(tmp_path: Path) -> Path:
    write_spool(tmp_path / "data" / "spool", readings(minutes=60, spikes=SPIKES, bursts=BURSTS))
    return tmp_path


def test_markers_command_writes_each_format(spooled: Path) -> None:
    edl = captaflow(spooled, "markers", "--session", "s1", "--format", "edl")
    assert edl.returncode == 0, edl.stderr
    events = parse_edl(edl.stdout, 30)
    assert len(events) == 4  # joy, anger, surprise, chat rate

    chapters = captaflow(spooled, "markers", "--format", "chapters")
    assert chapters.returncode == 0, chapters.stderr
    assert chapters.stdout.splitlines()[0] == "0:00 Stream start"
    assert "\r" not in chapters.stdout
    assert len(chapters.stdout.splitlines()) == 5

    out = spooled / "moments.csv"
    csv = captaflow(spooled, "markers", "--session", "s1", "--format", "csv", "--out", str(out))
    assert csv.returncode == 0, csv.stderr
    assert out.read_text().splitlines()[0].startswith("vod_time,vod_seconds,")

    bad = captaflow(spooled, "markers", "--session", "nope")
    assert bad.returncode == 2 and "no session 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_login_needs_a_client_id(tmp_path: Path) -> None:
    result = captaflow(tmp_path, "login", "twitch")
    assert result.returncode == 1
    assert "client id" in result.stderr and "dev.twitch.tv/console" in result.stderr
    assert "Traceback" not in result.stderr


def test_login_twitch_shows_the_code_and_stores_the_token(tmp_path: Path) -> None:
    with FakeTwitch(interval=1) as twitch:
        config = f'[twitch]\nclient_id = "{CLIENT_ID}"\nauth_url = "{twitch.url}/oauth2"\n'
        result = captaflow(tmp_path, "login", "twitch", config=config)
        # The keyring is off in tests: the command says so (and never prints the token).
        assert "www.twitch.tv/activate" in result.stderr and "ABCDEFGH" in result.stderr
        assert TOKEN not in result.stderr + result.stdout
        assert result.returncode == 2 and "CAPTAFLOW_TWITCH_TOKEN" in result.stderr

        twitch.pending_polls = 1
        stored: dict[str, str] = {}
        said: list[str] = []
        settings = load_settings(tmp_path / "config.toml", {"data_dir": str(tmp_path / "d")})
        login_twitch(
            settings,
            say=said.append,
            store=lambda name, value: stored.update({name: value}),
            sleep=lambda seconds: None,
        )
    assert stored == {"twitch_token": TOKEN}
    assert any("ABCDEFGH" in line for line in said) and not any(TOKEN in s for s in said)


def test_live_moments_become_twitch_stream_markers() -> None:
    with FakeTwitch() as twitch:
        clock = [1_800_000_000.0]
        poster = MarkerPoster(
            MarkerSettings(CLIENT_ID, TOKEN, f"{twitch.url}/helix", f"{twitch.url}/oauth2"),
            clock=lambda: clock[0],
            limiter=RateLimiter(burst=3, refill_seconds=30, min_gap_seconds=10),
        )
        hub = LiveHub(displayed=("joy", "anger", "surprise"), markers=poster)
        # Two spikes 5 s apart (one must be held back by the rate limit), two far apart.
        spikes = [
            ("joy", 1200.0, 30.0, 0.4),
            ("anger", 1205.0, 30.0, 0.4),
            ("surprise", 2400.0, 20.0, 0.3),
        ]
        for reading in readings(minutes=50, spikes=spikes, channel=LOGIN):
            clock[0] = reading.window_end
            hub.on_reading(reading)
        poster.join_idle()
        assert wait_for(lambda: len(twitch.markers) == 2, 5)
        poster.stop()
    created = [json.loads(s.body) for s in twitch.seen if s.path == "/helix/streams/markers"]
    assert [c["user_id"] for c in created] == [USER_ID, USER_ID]
    assert created[0]["description"].startswith("CaptaFlow: joy up ")
    assert created[1]["description"].startswith("CaptaFlow: surprise up ")
    assert all(len(c["description"]) <= 140 for c in created)
    headers: list[dict[str, Any]] = [
        s.headers for s in twitch.seen if s.path == "/helix/streams/markers"
    ]
    assert all(
        h["authorization"] == f"Bearer {TOKEN}" and h["client-id"] == CLIENT_ID for h in headers
    )
    assert poster.dropped == 1


def test_no_marker_for_someone_elses_channel() -> None:
    with FakeTwitch() as twitch:
        poster = MarkerPoster(
            MarkerSettings(CLIENT_ID, TOKEN, f"{twitch.url}/helix", f"{twitch.url}/oauth2"),
            limiter=RateLimiter(min_gap_seconds=0),
        )
        hub = LiveHub(displayed=("joy", "surprise"), markers=poster)
        spikes = [("joy", 1200.0, 30.0, 0.4), ("surprise", 2400.0, 20.0, 0.3)]
        for reading in readings(minutes=50, spikes=spikes, channel="someone_else"):
            hub.on_reading(reading)
        poster.join_idle()
        poster.stop()
    assert not [s for s in twitch.seen if s.path == "/helix/streams/markers"]
    assert poster.state == f"on: markers go to #{LOGIN} only, not #someone_else"
