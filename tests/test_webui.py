"""The local web UI: its security rules, the JSON API and the live WebSocket, on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agent.moments import MomentEventKind
from agent.vocab import AgentState, AgentStatus, Reading
from agent.webui import (
    LiveHub,
    WebUI,
    client_allowed,
    dashboard_url,
    host_allowed,
    origin_allowed,
    overlay_url,
    ui_token,
    wait_for,
)
from tests.test_live_moments import SPIKES, readings

TOKEN = "t" * 43


class FakeAgent:
    def __init__(self) -> None:
        self.on_reading: list[Callable[[Reading], None]] = []
        self.on_status: list[Callable[[AgentStatus], None]] = []
        self.state = AgentState.STOPPED
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")
        self.state = AgentState.RUNNING

    def stop(self, timeout: float = 30.0) -> None:
        self.calls.append("stop")
        self.state = AgentState.STOPPED

    def status(self) -> AgentStatus:
        return AgentStatus(state=self.state)


@pytest.fixture
def ui() -> Iterator[tuple[WebUI, FakeAgent]]:
    agent = FakeAgent()
    hub = LiveHub()
    web = WebUI(agent, port=0, token=TOKEN, hub=hub)
    web.start()
    hub.push = web.push
    agent.on_reading.append(hub.on_reading)
    agent.on_status.append(hub.on_status)
    try:
        yield web, agent
    finally:
        web.stop()


def get(
    port: int, path: str, *, host: str | None = None, source: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=(source, 0) if source else None
    )
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8730", True),
        ("localhost:8730", True),
        ("LOCALHOST:8730", True),
        ("[::1]:8730", True),
        ("127.0.0.1", False),  # browsers always send the port when it is not 80
        ("127.0.0.1:8731", False),
        ("evil.example:8730", False),
        ("localhost.evil.example:8730", False),
        ("127.0.0.1.nip.io:8730", False),
        ("", False),
        (None, False),
    ],
)
def test_host_rule(host: str | None, ok: bool) -> None:
    assert host_allowed(host, 8730) is ok


@pytest.mark.parametrize(
    ("peer", "ok"),
    [
        (("127.0.0.1", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("127.0.0.2", 5000), False),
        (("192.168.1.20", 5000), False),
        (None, False),
    ],
)
def test_client_rule(peer: object, ok: bool) -> None:
    assert client_allowed(peer) is ok


def test_origin_rule() -> None:
    assert origin_allowed(None, 8730)
    assert origin_allowed("http://127.0.0.1:8730", 8730)
    assert origin_allowed("http://localhost:8730", 8730)
    assert not origin_allowed("https://evil.example", 8730)
    assert not origin_allowed("http://127.0.0.1:9999", 8730)
    assert not origin_allowed("null", 8730)


def test_the_token_is_made_once_and_private(tmp_path: Path) -> None:
    token = ui_token(tmp_path)
    assert len(token) >= 40 and ui_token(tmp_path) == token
    if sys.platform != "win32":
        assert stat.S_IMODE((tmp_path / "ui_token").stat().st_mode) == 0o600
    assert dashboard_url(8730, token) == f"http://127.0.0.1:8730/#token={token}"
    assert overlay_url(8730).startswith("http://127.0.0.1:8730/overlay?layout=bars&emotions=")


# --------------------------------------------------------------------- served over HTTP


def test_pages_and_api_are_served(ui: tuple[WebUI, FakeAgent]) -> None:
    web, _ = ui
    for path, kind in [
        ("/", "text/html"),
        ("/overlay?layout=meter", "text/html"),
        ("/static/live.js", "text/javascript"),
        ("/static/dashboard.js", "text/javascript"),
        ("/static/overlay.css", "text/css"),
        ("/api/status", "application/json"),
    ]:
        status, headers, body = get(web.port, path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(kind)
        assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
        assert TOKEN.encode() not in body
    assert get(web.port, "/static/../webui.py")[0] == 404
    assert get(web.port, "/nope")[0] == 404
    status = json.loads(get(web.port, "/api/status")[2])
    assert status["state"] == "stopped" and status["last_seq"] == 0


def test_a_foreign_host_header_is_refused(ui: tuple[WebUI, FakeAgent]) -> None:
    web, _ = ui
    for host in ("evil.example", f"evil.example:{web.port}", "127.0.0.1:1", ""):
        status, _, body = get(web.port, "/api/status", host=host)
        assert status == 403 and b"Host" in body
    assert get(web.port, "/api/status", host=f"localhost:{web.port}")[0] == 200


def test_a_non_loopback_client_is_refused(ui: tuple[WebUI, FakeAgent]) -> None:
    web, _ = ui
    # Bound to the loopback only: no other interface reaches it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: just picks the outgoing IP
            outside = probe.getsockname()[0]
        except OSError:
            outside = "127.0.0.1"
    if not outside.startswith("127."):
        with pytest.raises(OSError), socket.create_connection((outside, web.port), timeout=2):
            pass
    # A peer at another loopback address (not this PC's 127.0.0.1) is refused.
    try:
        status, _, body = get(web.port, "/api/status", source="127.0.0.2")
    except OSError as exc:  # pragma: no cover - systems without the whole 127/8
        pytest.skip(f"cannot bind 127.0.0.2: {exc}")
    assert status == 403 and b"only this PC" in body


def test_a_foreign_origin_cannot_open_the_live_socket(ui: tuple[WebUI, FakeAgent]) -> None:
    web, _ = ui
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(
            f"ws://127.0.0.1:{web.port}/live",
            additional_headers={"Origin": "https://evil.example"},
            open_timeout=5,
        ),
    ):
        pass
    assert refused.value.response.status_code == 403


def test_control_needs_the_token(ui: tuple[WebUI, FakeAgent]) -> None:
    web, agent = ui
    origin = {"Origin": f"http://127.0.0.1:{web.port}"}
    with connect(f"ws://127.0.0.1:{web.port}/live", additional_headers=origin) as ws:
        assert json.loads(ws.recv(5))["type"] == "hello"
        for message in (
            {"type": "control", "action": "start"},
            {"type": "control", "action": "start", "token": ""},
            {"type": "control", "action": "start", "token": "x" * 43},
            {"type": "control", "action": "start", "token": 12},
        ):
            ws.send(json.dumps(message))
            reply = json.loads(ws.recv(5))
            assert reply["type"] == "error" and "token" in reply["error"]
        ws.send("not json")
        assert json.loads(ws.recv(5))["type"] == "error"
        assert agent.calls == []

        ws.send(json.dumps({"type": "control", "action": "start", "token": TOKEN}))
        reply = json.loads(ws.recv(5))
        assert reply == {"type": "control", "action": "start", "ok": True, "detail": "running"}
        assert agent.calls == ["start"]
        ws.send(json.dumps({"type": "control", "action": "reboot", "token": TOKEN}))
        assert json.loads(ws.recv(5))["type"] == "error"


# -------------------------------------------------------------------------- live data


def test_readings_and_moments_reach_the_api_and_the_socket(ui: tuple[WebUI, FakeAgent]) -> None:
    web, agent = ui
    rows = readings(minutes=25, spikes=SPIKES[:1])  # joy at 20:00
    got: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with connect(f"ws://127.0.0.1:{web.port}/live") as ws:
            ready.set()
            while True:
                try:
                    item = json.loads(ws.recv(10))
                except TimeoutError:
                    return
                got.append(item)
                if item["type"] == "moment" and item["moment"]["state"] == "started":
                    return

    listener = threading.Thread(target=listen)
    listener.start()
    assert ready.wait(5)
    assert wait_for(lambda: len(web._clients) == 1, 5)
    for reading in rows:
        for callback in agent.on_reading:
            callback(reading)
    listener.join(15)

    kinds = [item["type"] for item in got]
    assert kinds[0] == "hello" and kinds[1] == "session"
    moment = next(item["moment"] for item in got if item["type"] == "moment")
    assert moment["kind"] == "joy" and moment["vod_time"] == "00:20:00"
    assert moment["label"].startswith("joy up ")
    seen = [item["reading"]["seq"] for item in got if item["type"] == "reading"]
    assert seen == list(range(1, len(seen) + 1))
    # The moment was pushed with the reading after its onset's: within one window.
    assert len(seen) == 20 * 12 + 2

    assert wait_for(lambda: web.state.seq == len(rows), 5)
    answer = json.loads(get(web.port, "/api/readings?since=290")[2])
    assert [r["seq"] for r in answer["readings"]] == list(range(291, len(rows) + 1))
    first = json.loads(get(web.port, "/api/readings?since=0&limit=2")[2])["readings"]
    assert [r["seq"] for r in first] == [1, 2]
    assert first[0]["vod_seconds"] == 0 and set(first[0]["scores"]) >= {"joy", "anger"}
    last = json.loads(get(web.port, "/api/readings?last=3")[2])["readings"]
    assert [r["seq"] for r in last] == [len(rows) - 2, len(rows) - 1, len(rows)]
    assert get(web.port, "/api/readings?since=-1")[0] == 400
    assert get(web.port, "/api/readings?since=abc")[0] == 400
    moments = json.loads(get(web.port, "/api/moments")[2])["moments"]
    assert [m["vod_time"] for m in moments] == ["00:20:00"]

    # The stream stops: open moments end, and the dashboard hears of it.
    for callback in agent.on_status:
        callback(AgentStatus(state=AgentState.STOPPED))
    assert wait_for(lambda: web.state.status["state"] == "stopped", 5)
    ended = json.loads(get(web.port, "/api/moments")[2])["moments"]
    assert [m["state"] for m in ended] == [str(MomentEventKind.ENDED)]


def test_a_taken_port_is_an_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web = WebUI(None, port=taken.getsockname()[1], token=TOKEN)
        with pytest.raises(OSError):
            web.start()


def test_attach_serves_one_ui_per_port_that_follows_the_newest_agent(tmp_path: Path) -> None:
    from agent.config import load_settings
    from agent.webui import attach

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(
        tmp_path / "config.toml", {"data_dir": str(tmp_path / "data"), "ui.port": port}
    )
    first, second = FakeAgent(), FakeAgent()
    live = attach(first, settings)
    try:
        assert live.web is not None and live.web.port == port
        token = (tmp_path / "data" / "ui_token").read_text().strip()
        assert live.dashboard == f"http://127.0.0.1:{port}/#token={token}"
        again = attach(second, settings)  # the tray's next Start: a fresh agent
        assert again.web is live.web and live.web.agent is second
        assert first.on_reading and second.on_reading

        with connect(f"ws://127.0.0.1:{port}/live") as ws:
            ws.recv(5)
            ws.send(json.dumps({"type": "control", "action": "markers_on", "token": token}))
            reply = json.loads(ws.recv(5))
            while reply["type"] != "control":
                reply = json.loads(ws.recv(5))
            assert reply["detail"].startswith("off: set twitch.client_id")
            ws.send(json.dumps({"type": "control", "action": "start", "token": token}))
            reply = json.loads(ws.recv(5))
            while reply["type"] != "control":
                reply = json.loads(ws.recv(5))
        assert second.calls == ["start"] and first.calls == []
    finally:
        live.close()
    assert not live.web.alive
    off = attach(FakeAgent(), load_settings(tmp_path / "config.toml", {"ui.port": 0}))
    assert off.web is None and off.dashboard is None


def test_a_disk_that_cannot_keep_the_token_does_not_stop_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.webui as webui
    from agent.config import load_settings

    def full(data_dir: Path) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(webui, "ui_token", full)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(
        tmp_path / "config.toml", {"data_dir": str(tmp_path / "data"), "ui.port": port}
    )
    live = webui.attach(FakeAgent(), settings)
    try:
        assert live.web is not None and live.token and len(live.token) >= 40
    finally:
        live.close()


def _manifest_dir(tmp_path: Path, test_model: str | None) -> Path:
    from agent.bundle import BUNDLE_FILES, MANIFEST_FILE, Manifest
    from agent.vocab import LABELS

    manifest = Manifest(
        source_model_id="cardiffnlp/twitter-roberta-base-emotion-multilabel-latest",
        source_revision="r1",
        labels=LABELS,
        max_length=128,
        pad_token_id=1,
        files={name: {"sha256": "0" * 64, "bytes": 1} for name in BUNDLE_FILES},
        test_model=test_model,
    )
    folder = tmp_path / ("test" if test_model else "real")
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_json()), encoding="utf-8")
    return folder


def test_the_status_says_which_model_and_whether_it_is_a_test_model(
    ui: tuple[WebUI, FakeAgent], tmp_path: Path
) -> None:
    from agent.webui import model_json

    web, _ = ui
    assert json.loads(get(web.port, "/api/status")[2])["model"] is None
    real = model_json(_manifest_dir(tmp_path, None))
    assert real == {
        "id": "cardiffnlp/twitter-roberta-base-emotion-multilabel-latest",
        "test_model": None,
    }
    assert model_json(tmp_path / "nowhere") is None
    web.push("model", model_json(_manifest_dir(tmp_path, "tiny random model")))
    assert wait_for(lambda: web.state.model is not None, 5)
    status = json.loads(get(web.port, "/api/status")[2])
    assert status["model"]["test_model"] == "tiny random model"
    assert str(tmp_path) not in json.dumps(status)  # no path goes out


def test_a_replay_of_recorded_chat_says_why_there_are_no_readings(
    ui: tuple[WebUI, FakeAgent],
) -> None:
    web, agent = ui
    hub = web.hub
    assert hub is not None
    hub.duplicate_sessions = lambda: "twitch-webui_test-20251124"
    for callback in agent.on_status:
        callback(AgentStatus(state=AgentState.RUNNING, messages_total=0, duplicates_total=40))
    assert wait_for(lambda: web.state.status["duplicates_total"] == 40, 5)
    note = json.loads(get(web.port, "/api/status")[2])["duplicates_note"]
    assert note == (
        "all 40 messages so far were already recorded (duplicates) — re-score with "
        "captaflow replay --session twitch-webui_test-20251124"
    )
    from agent.webui import duplicates_note

    mostly = {"messages_total": 10, "duplicates_total": 30, "readings_total": 0}
    assert str(duplicates_note(mostly, 0, "S")).startswith("30 of 40 messages so far")
    assert duplicates_note({**mostly, "messages_total": 31}, 0, "S") is None
    # New chat, readings: no note.
    for callback in agent.on_status:
        callback(
            AgentStatus(
                state=AgentState.RUNNING,
                messages_total=100,
                duplicates_total=40,
                readings_total=3,
            )
        )
    assert wait_for(lambda: web.state.status["readings_total"] == 3, 5)
    assert json.loads(get(web.port, "/api/status")[2])["duplicates_note"] is None


def test_the_chat_rate_has_one_definition(ui: tuple[WebUI, FakeAgent]) -> None:
    web, agent = ui
    for callback in agent.on_status:
        callback(AgentStatus(state=AgentState.RUNNING, messages_per_second=6.5))
    assert wait_for(lambda: web.state.status["state"] == "running", 5)
    status = json.loads(get(web.port, "/api/status")[2])
    assert status["messages_per_second"] == 6.5 and status["messages_per_minute"] == 390.0
