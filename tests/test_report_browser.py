"""The report in a real browser: headless Chromium draws the chart without script errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.report import build_report
from agent.vocab import LABELS, READING_COLUMNS, Reading

CHROMIUM = Path("/usr/bin/chromium")
NOTES = Path("/work/notes")
T0 = 1_714_500_000.0  # 2024-04-30 18:00:00 UTC

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} is absent: install Debian's chromium (`apt-get install chromium`)",
    ),
]


def stream_readings(session_id: str, start: float, hours: float, step: float) -> list[Reading]:
    """A stream with a shape: a slow swing between moods, a hype moment, an angry one."""
    rng = np.random.default_rng(11)
    count = int(hours * 3600 / step)
    offsets = np.arange(count) * step
    scores = np.clip(0.12 + rng.normal(0, 0.025, (count, len(LABELS))), 0, 1)
    swing = np.sin(offsets / 2400)
    scores[:, LABELS.index("joy")] += 0.18 + 0.08 * swing
    scores[:, LABELS.index("optimism")] += 0.10 - 0.05 * swing
    scores[:, LABELS.index("sadness")] += 0.04 + 0.06 * (offsets / offsets[-1])
    messages = rng.poisson(12 + 6 * (1 + swing))

    def during(at: float, length: float) -> np.ndarray:
        return (offsets >= at) & (offsets < at + length)

    hype = during(2 * 3600 + 13 * 60, 45)
    scores[hype, LABELS.index("joy")] += 0.4
    scores[hype, LABELS.index("surprise")] += 0.25
    messages[hype] *= 4
    scores[during(3600 + 20 * 60, 30), LABELS.index("anger")] += 0.3
    scores[during(40 * 60, 25), LABELS.index("fear")] += 0.2
    scores = np.clip(scores, 0, 1)
    return [
        Reading(
            session_id=session_id,
            platform="twitch",
            channel="xqcow",
            batch_id=f"{session_id}-{i:08d}",
            seq=i,
            window_start=start + offsets[i],
            window_end=start + offsets[i] + step,
            message_count=int(messages[i]),
            scored_count=int(messages[i]),
            scores=tuple(float(s) for s in scores[i]),
            dominant="joy",
            model_id="m",
            agent_version="0.1.0",
        )
        for i in range(count)
    ]


def write_part(path: Path, readings: list[Reading]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(READING_COLUMNS), *(",".join(r.as_row()) for r in readings)]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    spool = root / "spool"
    earlier = stream_readings("sunday-stream", T0 - 86_400, hours=1.5, step=10)
    write_part(
        spool / "uploaded/platform=twitch/channel=xqcow/dt=2024-04-29/sunday-stream-00001.csv",
        earlier,
    )
    live = stream_readings("monday-stream", T0, hours=3, step=2)
    half = len(live) // 2
    write_part(
        spool / "sealed/platform=twitch/channel=xqcow/dt=2024-04-30/monday-stream-00001.csv",
        live[:half],
    )
    write_part(spool / "open/monday-stream-00002.csv.open", live[half:])

    def samples(session_id: str, start: float, end: float, k: int) -> list[str]:
        return ["<script>alert(1)</script>", "PogU PogU PogU", "no way he hit that"][:k]

    return build_report(spool, samples=samples, out=root / "report.html")


def test_chart_renders_without_script_errors(report: Path, tmp_path: Path) -> None:
    result = chromium("--dump-dom", report.resolve().as_uri(), profile=tmp_path / "profile")
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert "data-script-errors" not in html_tag, html_tag
    assert 'data-rendered="ok"' in dom, dom[-3000:]
    # The script really drew: one line per displayed emotion, the band, the moment markers.
    points = int(re.search(r'data-points="(\d+)"', dom).group(1))
    assert 1000 < points <= 2000
    for label in ("anger", "fear", "joy", "optimism", "sadness", "surprise"):
        path = re.search(rf'<g id="series-{label}"><path [^>]*d="([^"]*)"', dom)
        assert path and path.group(1).count("L") > 500, label
    assert len(re.findall(r'<rect [^>]*fill="#', dom.split('id="dominant-band"')[1])) >= 1
    assert dom.count('class="marker"') >= 3
    assert "<script>alert(1)</script>" not in dom


def test_hover_shows_vod_and_wall_clock_time(report: Path, tmp_path: Path) -> None:
    # A copy of the report that moves the mouse over the chart's middle once it is drawn.
    page = report.read_text(encoding="utf-8")
    probe = """<script>
(function () {
  var area = document.getElementById("hover-area");
  var box = area.getBoundingClientRect();
  area.dispatchEvent(new MouseEvent("mousemove", {
    clientX: box.left + box.width / 2, clientY: box.top + 60, bubbles: true }));
  document.body.setAttribute("data-tip", document.getElementById("tip").textContent);
})();
</script>
</body>"""
    hovered = tmp_path / "hovered.html"
    hovered.write_text(page.replace("</body>", probe), encoding="utf-8")

    dom = chromium("--dump-dom", hovered.as_uri(), profile=tmp_path / "profile").stdout
    tip = re.search(r'data-tip="([^"]*)"', dom)
    assert tip, dom[-2000:]
    # The middle of a three-hour stream: about 01:30:00, i.e. 19:30 UTC on the day.
    assert re.search(r"VOD 01:(29|30):\d\d2024-04-30 19:(29|30):\d\d UTC", tip.group(1))
    assert (
        "joy: 0." in tip.group(1) and "messages: " in tip.group(1) and "dominant: " in tip.group(1)
    )

    shot = tmp_path / "report-hover.png"
    chromium(f"--screenshot={shot}", hovered.as_uri(), profile=tmp_path / "profile")
    assert shot.is_file() and shot.stat().st_size > 10_000
    if NOTES.is_dir():
        shutil.copyfile(shot, NOTES / "report-hover.png")


def test_screenshot(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = chromium(f"--screenshot={shot}", report.resolve().as_uri(), profile=tmp_path / "p")
    assert shot.is_file(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")
    if NOTES.is_dir():  # for the lead, who looks at it
        shutil.copyfile(shot, NOTES / "report.png")
