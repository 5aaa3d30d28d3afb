"""Twitch stream markers and the device code log-in, against loopback fakes of Twitch."""

from __future__ import annotations

import itertools
import json
import logging
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from agent.twitch_api import (
    DEVICE_GRANT,
    LOGIN_SCOPES,
    MARKER_SCOPE,
    DeviceCode,
    MarkerPoster,
    MarkerSettings,
    Pending,
    RateLimiter,
    Token,
    TwitchLoginError,
    device_login,
    marker_request,
    read_poll,
)
from tests.twitch_fakes import CLIENT_ID, TOKEN, USER_CODE, USER_ID, FakeTwitch


@pytest.fixture
def twitch() -> Iterator[FakeTwitch]:
    with FakeTwitch() as fake:
        yield fake


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def poster(twitch: FakeTwitch, clock: Clock, **limits: float) -> MarkerPoster:
    settings = MarkerSettings(
        client_id=CLIENT_ID,
        token=TOKEN,
        api_url=f"{twitch.url}/helix",
        auth_url=f"{twitch.url}/oauth2",
    )
    return MarkerPoster(settings, clock=clock, limiter=RateLimiter(**limits))  # type: ignore[arg-type]


def test_a_marker_reaches_helix_with_the_right_body_and_headers(twitch: FakeTwitch) -> None:
    clock = Clock()
    markers = poster(twitch, clock)
    assert markers.submit("CaptaFlow: joy up 3.0x (0.60 vs 0.20)")
    markers.join_idle()
    markers.stop()

    validate, create = twitch.seen
    assert (validate.method, validate.path) == ("GET", "/oauth2/validate")
    assert validate.headers["authorization"] == f"OAuth {TOKEN}"
    assert (create.method, create.path) == ("POST", "/helix/streams/markers")
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.headers["client-id"] == CLIENT_ID
    assert create.headers["content-type"] == "application/json"
    assert json.loads(create.body) == {
        "user_id": USER_ID,
        "description": "CaptaFlow: joy up 3.0x (0.60 vs 0.20)",
    }
    assert len(twitch.markers) == 1 and markers.created == 1
    assert markers.state == "on: 1 marker(s) made"


def test_the_rate_limit_holds(twitch: FakeTwitch) -> None:
    clock = Clock()
    markers = poster(twitch, clock, burst=3, refill_seconds=30.0, min_gap_seconds=10.0)
    sent = []
    # A moment every second for two minutes: far more than Twitch should get.
    for second in range(120):
        clock.now = 1_800_000_000.0 + second
        if markers.submit(f"moment {second}"):
            sent.append(second)
    markers.join_idle()
    markers.stop()

    # Never two within 10 s; a burst of 3, then one per 30 s.
    assert sent[:3] == [0, 10, 20]
    assert all(b - a >= 10 for a, b in itertools.pairwise(sent))
    for start in range(0, 120):
        window = [s for s in sent if start <= s < start + 60]
        assert len(window) <= 3 + 60 / 30
    assert [m["description"] for m in twitch.markers] == [f"moment {s}" for s in sent]
    assert markers.dropped == 120 - len(sent)


def test_a_429_pauses_markers_until_twitchs_reset(twitch: FakeTwitch) -> None:
    twitch.rate_limit = 1
    clock = Clock(now=time.time())
    markers = poster(twitch, clock, min_gap_seconds=0.0, burst=5)
    assert markers.submit("one")
    markers.join_idle()
    assert markers.submit("two")  # the fake's bucket is empty: 429 with Ratelimit-Reset
    markers.join_idle()
    assert markers.state.startswith("failing: Twitch's rate limit")
    clock.now += 30
    assert not markers.submit("three")  # held until the reset Twitch named (60 s)
    clock.now += 31
    assert markers.submit("four")
    markers.join_idle()
    markers.stop()
    assert len(twitch.markers) == 1


def test_a_token_without_the_scope_stops_the_markers(
    twitch: FakeTwitch, caplog: pytest.LogCaptureFixture
) -> None:
    twitch.scopes = ["chat:read"]
    caplog.set_level(logging.DEBUG)
    markers = poster(twitch, Clock(), min_gap_seconds=0.0)
    assert markers.submit("one")
    markers.join_idle()
    assert MARKER_SCOPE in markers.state and markers.state.startswith("failing")
    assert not markers.submit("two")
    markers.stop()
    assert [s.path for s in twitch.seen] == ["/oauth2/validate"]
    assert TOKEN not in caplog.text and TOKEN not in repr(markers._settings)


def test_not_live_is_reported_and_markers_go_on(twitch: FakeTwitch) -> None:
    twitch.live = False
    markers = poster(twitch, Clock(), min_gap_seconds=0.0)
    markers.submit("one")
    markers.join_idle()
    assert "not live" in markers.state
    twitch.live = True
    assert markers.submit("two")
    markers.join_idle()
    markers.stop()
    assert [m["description"] for m in twitch.markers] == ["two"]


def test_descriptions_are_clipped_to_140() -> None:
    request = marker_request("https://api.example/helix", "c", "SECRET", "1", "x" * 300)
    assert len(json.loads(request.body or b"")["description"]) == 140
    assert "SECRET" not in repr(request)


def test_device_code_login(twitch: FakeTwitch) -> None:
    shown: list[DeviceCode] = []
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    token = device_login(
        CLIENT_ID,
        auth_url=f"{twitch.url}/oauth2",
        show=shown.append,
        sleep=sleep,
        clock=lambda: now[0],
    )

    assert token.access_token == TOKEN and MARKER_SCOPE in token.scopes
    assert TOKEN not in repr(token)
    assert shown[0].user_code == USER_CODE
    assert shown[0].verification_uri.startswith("https://www.twitch.tv/activate")
    assert slept == [5.0, 5.0, 5.0]  # Twitch's interval, two pending answers, then the token
    device, *polls = twitch.seen
    assert device.path == "/oauth2/device"
    assert urllib.parse.parse_qs(device.body.decode()) == {
        "client_id": [CLIENT_ID],
        "scopes": [" ".join(LOGIN_SCOPES)],
    }
    assert [p.path for p in polls] == ["/oauth2/token"] * 3
    form = urllib.parse.parse_qs(polls[0].body.decode())
    assert form["grant_type"] == [DEVICE_GRANT] and form["device_code"] == ["fake-device-code-ZZZZ"]


def test_device_login_gives_up_when_the_code_expires(twitch: FakeTwitch) -> None:
    twitch.pending_polls = 10_000
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(TwitchLoginError, match="expired"):
        device_login(
            CLIENT_ID,
            auth_url=f"{twitch.url}/oauth2",
            show=lambda code: None,
            sleep=sleep,
            clock=lambda: now[0],
        )
    assert len(twitch.seen) == 1 + 1800 // 5


def test_device_login_needs_a_client_id() -> None:
    with pytest.raises(TwitchLoginError, match="client id"):
        device_login("", show=lambda code: None)


def test_bad_client_id_is_refused(twitch: FakeTwitch) -> None:
    with pytest.raises(TwitchLoginError, match="client_id"):
        device_login("wrong", auth_url=f"{twitch.url}/oauth2", show=lambda code: None)


@pytest.mark.parametrize(
    ("status", "data", "outcome"),
    [
        (400, {"status": 400, "message": "authorization_pending"}, Pending()),
        (400, {"status": 400, "message": "slow_down"}, Pending(slow_down=True)),
        (200, {"access_token": "a", "scope": ["x"], "expires_in": 5}, Token("a", "", ("x",), 5.0)),
    ],
)
def test_read_poll(status: int, data: object, outcome: object) -> None:
    assert read_poll(status, data) == outcome


@pytest.mark.parametrize(
    ("message", "match"),
    [("authorization_denied", "declined"), ("invalid device code", "expired"), ("?", "refused")],
)
def test_read_poll_errors(message: str, match: str) -> None:
    with pytest.raises(TwitchLoginError, match=match):
        read_poll(400, {"status": 400, "message": message})
