"""The OBS overlay in headless Chromium: it reconnects by itself when the agent goes away and
comes back, and catches up on the readings it missed; every layout has a clear background."""

from __future__ import annotations

import io
import math
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.vocab import LABELS
from agent.webui import LiveHub, WebUI
from tests.cdp import CHROMIUM, Browser
from tests.test_live_moments import readings

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} is absent: install Debian's chromium (`apt-get install chromium`)",
    ),
]


def serve(port: int) -> tuple[WebUI, LiveHub]:
    hub = LiveHub()
    web = WebUI(None, port=port, token="t" * 43, hub=hub)
    web.start()
    hub.push = web.push
    return web, hub


def test_the_overlay_reconnects_and_catches_up(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rows = readings(minutes=4)
    web, hub = serve(port)
    browser = Browser(tmp_path / "profile")
    try:
        page = browser.page(400, 220, transparent=True)
        page.goto(f"http://127.0.0.1:{port}/overlay?layout=bars&emotions=joy&smoothing=0")
        page.wait("document.querySelector('.fill') !== null", 20)
        for reading in rows[:10]:
            hub.on_reading(reading)
        page.wait("document.querySelector('.row .value').textContent !== ''", 20)

        web.stop()  # the agent quits (OBS keeps the page open)
        page.wait("document.querySelector('.offline') !== null", 20)
        web, hub = serve(port)  # ... and starts again: a new session
        last = rows[-1]
        for reading in rows[10:]:
            hub.on_reading(reading)
        page.wait("document.querySelector('.offline') === null", 30)
        # smoothing=0: the last reading's joy, as the API rounds it and JavaScript rounds it.
        joy = round(last.scores[LABELS.index("joy")], 4)
        expected = f"{math.floor(100 * joy + 0.5)}%"
        page.wait(f"document.querySelector('.row .value').textContent === {expected!r}", 30)
        assert page.errors() == []

        for layout in ("bars", "meter", "line"):
            page.goto(f"http://127.0.0.1:{port}/overlay?layout={layout}&theme=light")
            page.wait("document.readyState === 'complete'", 20)
            page.wait("performance.now() > 1500", 20)
            shot = page.screenshot(tmp_path / f"overlay-{layout}.png")
            alpha = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).getchannel("A"))
            assert alpha[0, 0] == 0 and alpha[-1, -1] == 0, layout
            assert (alpha == 0).mean() > 0.5 and (alpha > 0).sum() > 200, layout
    finally:
        browser.close()
        web.stop()
