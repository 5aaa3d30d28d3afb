"""The dashboard and the OBS overlay in headless Chromium during a real replay run.

`python3 -m agent run --source replay --file F --ui-port N` with the tiny model replays a
constructed chat: six calm minutes (2 messages a second), thirty seconds of hype (20 a
second), three calm minutes. The known answer: a message-rate moment at VOD time 00:06:00. The
browser must see readings arrive, then that moment, live; the overlay's background must be
transparent in the screenshot's pixels; the moments the live path announced must be the ones
the after-stream report finds in the spool.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.moments import MESSAGE_RATE, all_moments
from agent.report import load_readings
from tests.cdp import CHROMIUM, Browser

NOTES = Path("/work/notes")
SPEED = 12
T0 = 1_764_000_000.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} is absent: install Debian's chromium (`apt-get install chromium`)",
    ),
]

TEXTS = [
    "hello chat",
    "how was your day",
    "I think he goes left",
    "nice play",
    "what game is next",
    "that was close",
    "lol",
    "good morning everyone",
]
HYPE = ["LETS GOOO", "POG", "NO WAY", "insane clip it", "W", "HOLY"]


def chat_recording(path: Path) -> None:
    lines = []
    n = 0

    def say(at: float, text: str) -> None:
        nonlocal n
        lines.append(
            json.dumps(
                {
                    "platform": "twitch",
                    "channel": "webui_test",
                    "id": f"m{n:05d}",
                    "author": f"viewer{n % 97:03d}",
                    "text": f"{text} {n % 13}",
                    "sent_at": T0 + at,
                }
            )
        )
        n += 1

    for i in range(720):  # 0:00-6:00, 2 a second
        say(i * 0.5, TEXTS[i % len(TEXTS)])
    for i in range(600):  # 6:00-6:30, 20 a second
        say(360 + i * 0.05, HYPE[i % len(HYPE)])
    for i in range(360):  # 6:30-9:30, calm again (time for the browser to look)
        say(390 + i * 0.5, TEXTS[i % len(TEXTS)])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return dict(json.loads(answer.read()))


def alpha_stats(png: Path) -> tuple[int, int, int]:
    """(fully transparent, partly, opaque) pixel counts of a screenshot."""
    image = Image.open(io.BytesIO(png.read_bytes()))
    assert image.mode == "RGBA", f"the screenshot has no alpha channel ({image.mode})"
    alpha = np.asarray(image.getchannel("A"))
    clear = int((alpha == 0).sum())
    opaque = int((alpha == 255).sum())
    return clear, alpha.size - clear - opaque, opaque


def test_dashboard_and_overlay_live_during_a_replay(tiny_bundle: Path, tmp_path: Path) -> None:
    recording = tmp_path / "chat.jsonl"
    chat_recording(recording)
    port = free_port()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "CAPTAFLOW_CONFIG": str(tmp_path / "config.toml"),
        "CAPTAFLOW_DATA_DIR": str(data),
        "CAPTAFLOW_NO_KEYRING": "1",
    }
    command = [
        sys.executable, "-m", "agent", "run", "--source", "replay", "--file", str(recording),
        "--speed", str(SPEED), "--model", str(tiny_bundle), "--quiet", "--ui-port", str(port),
    ]  # fmt: skip
    log = tmp_path / "run.log"
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the agent
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    browser: Browser | None = None
    shots: dict[str, Path] = {}
    last_moments: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(port, "/api/status")
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the web UI never answered: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        token = (data / "ui_token").read_text().strip()

        browser = Browser(tmp_path / "profile")
        dashboard = browser.page(1400, 1100)
        dashboard.goto(f"http://127.0.0.1:{port}/#token={token}")
        overlay = browser.page(400, 220, transparent=True)
        overlay.goto(
            f"http://127.0.0.1:{port}/overlay?layout=bars&emotions=joy,anger,surprise"
            "&theme=dark&smoothing=0.3"
        )

        # Readings arrive while the replay runs (the hype starts 30 s in at this speed).
        first = int(dashboard.wait("+document.getElementById('reading-count').dataset.count", 60))
        assert first > 0
        assert dashboard.eval("location.hash") == "", "the token must leave the address bar"
        assert dashboard.eval("document.getElementById('start').disabled") is True  # running
        assert dashboard.eval("document.getElementById('stop').disabled") is False
        assert dashboard.eval("document.getElementById('control-hint').textContent") == "running"
        # The tiny model's readings are labelled wherever they are shown (its manifest says
        # "tiny random model"): a banner on the dashboard, a marker on the overlay's preview.
        banner = dashboard.wait(
            "!document.getElementById('test-model').hidden"
            " && document.getElementById('test-model').textContent",
            30,
        )
        assert banner == "TEST MODEL: tiny random model — these emotions are random"
        assert get_json(port, "/api/status")["model"] == {
            "id": json.loads((tiny_bundle / "manifest.json").read_text())["source_model"]["id"],
            "test_model": "tiny random model",
        }
        assert "label=1" in str(dashboard.eval("document.getElementById('preview').src"))
        assert "label=1" not in str(dashboard.eval("document.getElementById('overlay-url').value"))
        shots["dashboard-readings"] = dashboard.screenshot(tmp_path / "dashboard-readings.png")
        overlay.wait("document.querySelector('.row .value').textContent !== ''", 30)
        assert overlay.eval("document.querySelector('.test-model') === null")  # goes on stream
        shots["overlay"] = overlay.screenshot(tmp_path / "overlay.png")

        # The moment, live: announced while the replay is still running.
        kind = dashboard.wait(
            "(document.querySelector('#moments li[data-kind=message_rate]') || {}).textContent",
            90,
        )
        assert proc.poll() is None, "the moment must show before the replay ends"
        assert str(kind).startswith("00:06:0") and "chat rate up" in str(kind)
        later = int(dashboard.eval("+document.getElementById('reading-count').dataset.count"))
        assert later > first
        shots["dashboard-moment"] = dashboard.screenshot(tmp_path / "dashboard-moment.png")
        # The dashboard's "Full report" link: the session's report, built on request.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=60) as answer:
            report = answer.read().decode()
        assert answer.status == 200 and "webui_test" in report and token not in report

        # OBS refreshes a source when its scene becomes active: state survives a reload.
        before = overlay.eval("[...document.querySelectorAll('.row .value')].length")
        overlay.call("Page.reload")
        overlay.wait("document.readyState === 'complete'", 20)
        assert overlay.eval("document.querySelector('.row .value').textContent") != ""
        assert overlay.eval("[...document.querySelectorAll('.row .value')].length") == before
        meter = browser.page(400, 220, transparent=True)
        meter.goto(f"http://127.0.0.1:{port}/overlay?layout=meter&emotions=joy,anger&theme=light")
        meter.wait("document.querySelector('.word').textContent !== ''", 30)
        shots["overlay-meter"] = meter.screenshot(tmp_path / "overlay-meter.png")

        for page in (dashboard, overlay, meter):
            assert page.errors() == []

        # Follow the live moments to the end of the run.
        while proc.poll() is None:
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                last_moments = list(get_json(port, "/api/moments")["moments"])  # type: ignore[arg-type]
            time.sleep(0.2)
        proc.wait(60)
    finally:
        if browser is not None:
            browser.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-3000:]

    # The overlay's background is transparent: its corners are clear, its bars are not.
    clear, partly, opaque = alpha_stats(shots["overlay"])
    assert clear > 0.5 * (400 * 220), (clear, partly, opaque)
    assert opaque + partly > 500
    image = Image.open(shots["overlay"])
    for corner in ((0, 0), (399, 0), (0, 219), (399, 219)):
        assert image.getpixel(corner)[3] == 0
    assert alpha_stats(shots["overlay-meter"])[0] > 0.5 * (400 * 220)

    # Live and after-stream moments agree.
    after = all_moments(load_readings(data / "spool"))
    live = {(m["kind"], m["vod_time"], m["start"]) for m in last_moments}
    assert {(m.kind, m.vod_time, round(m.start, 3)) for m in after} == live
    assert any(m.kind == MESSAGE_RATE and m.vod_time.startswith("00:06:0") for m in after)

    if NOTES.is_dir():
        for name, path in shots.items():
            shutil.copyfile(path, NOTES / f"webui-{name}.png")
