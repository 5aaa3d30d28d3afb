"""The tray: its menu and icon as pure functions of a status, then the real thing under Xvfb."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.config import Settings, load_settings
from agent.icons import EMOTION_COLOURS, STATE_COLOURS, IconState, render_icon, write_icon_files
from agent.tray import (
    NO_MODEL_DOWNLOAD_LINE,
    NO_MODEL_LINE,
    TOOLTIP_MAX,
    Action,
    MenuEntry,
    TrayApp,
    icon_for,
    menu_model,
    model_present,
    tooltip_for,
)
from agent.vocab import AgentState, AgentStatus, SourceState, SourceStatus

ROOT = Path(__file__).resolve().parents[1]
# Screenshots for a person to look at: the pytest tmp dir, and a copy in reports/ (ignored by
# git) so they are easy to find after a run.
SHOTS = ROOT / "reports" / "tray"

RUNNING = AgentStatus(
    state=AgentState.RUNNING,
    source=SourceStatus(SourceState.CONNECTED),
    session_id="s1",
    channel="xqcow",
    messages_per_second=12.34,
    messages_total=500,
    readings_total=48,
    parts_waiting=2,
    upload_state="uploading 2 parts",
    dominant="joy",
)


def by_action(entries: list[MenuEntry]) -> dict[Action, MenuEntry]:
    return {entry.action: entry for entry in entries if entry.action is not None}


def info_lines(entries: list[MenuEntry]) -> list[str]:
    return [e.text for e in entries if e.action is None and not e.separator]


# --- the menu ------------------------------------------------------------------------------------


def test_stopped_with_a_model_offers_start_only() -> None:
    entries = menu_model(AgentStatus(), has_model=True)
    actions = by_action(entries)
    assert list(actions) == [
        Action.START,
        Action.STOP,
        Action.OPEN_STATUS,
        Action.OPEN_REPORT,
        Action.OPEN_DATA_FOLDER,
        Action.OPEN_SETTINGS,
        Action.QUIT,
    ]
    assert actions[Action.START].enabled and not actions[Action.STOP].enabled
    assert info_lines(entries) == ["Stopped", "Nothing waiting for upload", "Chat mood: —"]
    assert all(not e.enabled for e in entries if e.action is None and not e.separator)
    # A left click (the default entry) opens the status page.
    assert [e.action for e in entries if e.default] == [Action.OPEN_STATUS]


def test_running_shows_link_rate_readings_uploads_and_mood() -> None:
    entries = menu_model(RUNNING, has_model=True)
    actions = by_action(entries)
    assert not actions[Action.START].enabled and actions[Action.STOP].enabled
    assert info_lines(entries) == [
        "Connected to #xqcow",
        "12.3 messages/s · 48 readings this session",
        "2 parts waiting for upload (uploading 2 parts)",
        "Chat mood: joy",
    ]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        (SourceStatus(SourceState.RECONNECTING, "lost link", retry_in=4.2), "Reconnecting in 4 s"),
        (SourceStatus(SourceState.RECONNECTING, "lost link", retry_in=0.2), "Reconnecting in 1 s"),
        (SourceStatus(SourceState.RECONNECTING), "Reconnecting…"),
        (SourceStatus(SourceState.FAILED, "login refused"), "Offline: login refused"),
        (SourceStatus(SourceState.CONNECTING), "Connecting to #xqcow…"),
        (SourceStatus(SourceState.FINISHED), "Replay finished"),
    ],
)
def test_the_link_line_follows_the_source(source: SourceStatus, line: str) -> None:
    status = AgentStatus(state=AgentState.RUNNING, source=source, channel="xqcow")
    assert info_lines(menu_model(status, has_model=True))[0] == line


def test_first_run_without_a_model_says_how_and_disables_start() -> None:
    entries = menu_model(AgentStatus(), has_model=False)
    assert not by_action(entries)[Action.START].enabled
    assert info_lines(entries)[0] == NO_MODEL_LINE
    assert "captaflow export-model" in NO_MODEL_LINE and "500 MB" in NO_MODEL_LINE
    assert icon_for(AgentStatus(), has_model=False) == (IconState.SETUP, None)
    assert "model not exported" in tooltip_for(AgentStatus(), has_model=False)


def test_without_a_model_a_slim_build_offers_the_download() -> None:
    entries = menu_model(AgentStatus(), has_model=False, can_download=True)
    assert entries[0].action is Action.DOWNLOAD_MODEL and entries[0].enabled
    assert info_lines(entries)[0] == NO_MODEL_DOWNLOAD_LINE
    busy = menu_model(
        AgentStatus(), has_model=False, can_download=True, downloading="Downloading… 42 %"
    )
    assert not busy[0].enabled and info_lines(busy)[0] == "Downloading… 42 %"
    assert not by_action(busy)[Action.START].enabled


def test_a_test_model_says_so_in_the_menu_and_the_tooltip() -> None:
    lines = info_lines(menu_model(RUNNING, has_model=True, test_model="tiny random model"))
    assert lines[0] == "⚠ Test model (tiny random model): the emotions are random"
    tip = tooltip_for(RUNNING, True, "tiny random model")
    assert tip.startswith("CaptaFlow (TEST MODEL: tiny random model) - ")
    long = AgentStatus(state=AgentState.RUNNING, source=SourceStatus(SourceState.FAILED, "x" * 300))
    assert "TEST MODEL" in tooltip_for(long, True, "tiny random model")
    assert len(tooltip_for(long, True, "tiny random model")) <= TOOLTIP_MAX


def test_a_setup_problem_blocks_start_and_is_shown() -> None:
    problem = "No channel set: open Settings and set channel"
    entries = menu_model(AgentStatus(), has_model=True, setup_problem=problem)
    assert not by_action(entries)[Action.START].enabled
    assert problem in info_lines(entries)
    assert icon_for(AgentStatus(), True, problem) == (IconState.SETUP, None)


def test_while_starting_or_stopping_neither_button_is_enabled() -> None:
    for state in (AgentState.STARTING, AgentState.STOPPING):
        actions = by_action(menu_model(AgentStatus(state=state), has_model=True, busy=True))
        assert not actions[Action.START].enabled and not actions[Action.STOP].enabled


def test_problems_and_notices_are_shown_last_with_a_warning_sign() -> None:
    status = AgentStatus(state=AgentState.TROUBLE, problem="disk nearly full: free space")
    lines = info_lines(menu_model(status, has_model=True, notice="cannot open x"))
    assert lines[-2:] == ["⚠ disk nearly full: free space", "⚠ cannot open x"]


# --- the icon ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (AgentStatus(), (IconState.STOPPED, None)),
        (AgentStatus(state=AgentState.STOPPING), (IconState.STOPPED, None)),
        (RUNNING, (IconState.RUNNING, "joy")),
        (AgentStatus(state=AgentState.STARTING), (IconState.RUNNING, None)),
        (
            AgentStatus(
                state=AgentState.RUNNING,
                source=SourceStatus(SourceState.RECONNECTING, retry_in=3),
                dominant="anger",
            ),
            (IconState.TROUBLE, "anger"),
        ),
        (AgentStatus(state=AgentState.TROUBLE, dominant="fear"), (IconState.TROUBLE, "fear")),
        (
            AgentStatus(state=AgentState.RUNNING, source=SourceStatus(SourceState.FAILED)),
            (IconState.FAILED, None),
        ),
    ],
)
def test_icon_for_each_state(status: AgentStatus, expected: tuple[IconState, str | None]) -> None:
    assert icon_for(status) == expected


def test_the_drawn_icons_carry_their_state_colour_and_emotion_dot() -> None:
    for state, colour in STATE_COLOURS.items():
        image = render_icon(state, None, size=64)
        assert image.size == (64, 64) and image.mode == "RGBA"
        # The bubble's centre-left (between the wave's crests) is the state colour.
        assert _close(image.getpixel((9, 26)), colour), state
        assert image.getpixel((0, 63))[3] == 0  # transparent around the bubble
    dotted = render_icon(IconState.RUNNING, "sadness")
    assert _close(dotted.getpixel((52, 52)), EMOTION_COLOURS["sadness"])
    plain = render_icon(IconState.RUNNING, None)
    assert not _close(plain.getpixel((52, 52)), EMOTION_COLOURS["sadness"])


def test_icon_files_for_the_executable(tmp_path: Path) -> None:
    ico, png = write_icon_files(tmp_path)
    with Image.open(ico) as image:
        assert (256, 256) in image.info["sizes"] and (16, 16) in image.info["sizes"]
    with Image.open(png) as image:
        assert image.size == (256, 256)


def test_the_tooltip_fits_windows_limit() -> None:
    long = AgentStatus(state=AgentState.RUNNING, source=SourceStatus(SourceState.FAILED, "x" * 300))
    assert len(tooltip_for(long)) <= TOOLTIP_MAX
    assert tooltip_for(RUNNING) == "CaptaFlow - Connected to #xqcow · joy"
    # X11 titles are Latin-1: whatever the status says must encode.
    tooltip_for(AgentStatus(state=AgentState.STARTING)).encode("latin-1")
    tooltip_for(long).encode("latin-1")


def _close(pixel: tuple[int, ...], colour: str, tolerance: int = 40) -> bool:
    rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], rgb, strict=True))


# --- TrayApp with the real agent, no display ----------------------------------------------------


def replay_settings(tmp_path: Path, model: Path, speed: str) -> Settings:
    demo = resources.files("agent") / "data" / "demo_chat.jsonl"
    return load_settings(
        tmp_path / "config.toml",
        {
            "data_dir": tmp_path / "data",
            "model.dir": str(model),
            "source.kind": "replay",
            "source.file": str(demo),
            "source.speed": speed,
            "sync.enabled": False,
        },
    )


def sealed_parts(settings: Settings) -> list[Path]:
    return sorted((settings.spool.dir / "sealed").rglob("*.csv"))


@pytest.fixture
def agent_class() -> type:
    runtime = pytest.importorskip("agent.runtime", reason="the agent runtime is not there yet")
    return runtime.Agent


def test_start_and_stop_drive_the_agent_and_seal_its_part(
    tmp_path: Path, tiny_bundle: Path, agent_class: type
) -> None:
    settings = replay_settings(tmp_path, tiny_bundle, "20")
    first_reading = threading.Event()

    def on_status(status: AgentStatus) -> None:
        if status.readings_total > 0:
            first_reading.set()

    made: list[object] = []

    def factory() -> object:
        made.append(agent_class(settings, on_status=on_status))
        return made[-1]

    opened: list[str] = []
    app = TrayApp(
        factory,  # type: ignore[arg-type]
        open_report=lambda: opened.append("report"),
        open_data_folder=lambda: opened.append("data"),
        open_settings=lambda: opened.append("settings"),
        has_model=lambda: model_present(settings.model.dir),
    )
    assert by_action(app.entries())[Action.START].enabled
    starting = app.start_agent()
    assert starting is not None
    assert app.start_agent() is None  # a second click while starting does nothing
    starting.join(timeout=60)
    assert first_reading.wait(timeout=120), "no reading from the replay"
    entries = by_action(app.entries())
    assert entries[Action.STOP].enabled and not entries[Action.START].enabled

    stopping = app.stop_agent()
    assert stopping is not None
    stopping.join(timeout=60)
    status = app.snapshot()
    assert status.state is AgentState.STOPPED
    assert status.readings_total > 0
    assert sealed_parts(settings), "Stop must seal the open part"
    assert not list((settings.spool.dir / "open").glob("*.open"))
    assert by_action(app.entries())[Action.START].enabled

    app.dispatch(Action.OPEN_SETTINGS)
    app.quit().join(timeout=30)
    assert app.stopped.is_set() and "settings" in opened
    assert len(made) == 1


# --- the real tray under Xvfb ---------------------------------------------------------------------

DRIVER = r"""
import faulthandler, json, sys, threading
from pathlib import Path
faulthandler.dump_traceback_later(120)  # a hang shows where it hangs, on stderr
import agent.tray
from agent.config import load_settings
from agent.runtime import Agent
from agent.tray import TrayApp, model_present

settings = load_settings(Path(sys.argv[1]), json.loads(sys.argv[2]))
first_reading = threading.Event()

def on_status(status):
    if status.readings_total > 0:
        first_reading.set()

# No web UI in this test: a left click must fall back to the report.
agent.tray.status_page_up = lambda *args, **kwargs: False

def say(event):
    status = app.snapshot()
    print(json.dumps({"event": event, "state": str(status.state),
                      "readings": status.readings_total,
                      "menu": [e.text for e in app.entries() if not e.separator]}), flush=True)

app = TrayApp(
    lambda: Agent(settings, on_status=on_status),
    open_report=lambda: say("report"), open_data_folder=lambda: None, open_settings=lambda: None,
    has_model=lambda: model_present(settings.model.dir),
)

def drive():
    app.ready.wait(30)
    say("ready")
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "start":
                app.start_agent().join(60)
                first_reading.wait(90)
                app.refresh()
                say("started")
            elif command == "stop":
                app.stop_agent().join(60)
                app.refresh()
                say("stopped")
            elif command == "quit":
                app.quit()
                return
        except Exception as error:
            print(json.dumps({"event": "error", "error": repr(error)}), flush=True)

threading.Thread(target=drive, daemon=True).start()
app.run()
print(json.dumps({"event": "quit"}), flush=True)
"""

SCREEN = (480, 360)  # room below the tray bar for the menu
BAR = (0, 0, 160, 32)  # trayer's bar at the top left; the icon sits in its first 32 px slot
SLOT = (0, 0, 32, 32)


@contextlib.contextmanager
def xvfb() -> Iterator[dict[str, str]]:
    """A bare X display (Xvfb), its environment without any session bus."""
    missing = [t for t in ("Xvfb", "import", "xdotool") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install xvfb imagemagick xdotool)")
    with subprocess.Popen(
        ["Xvfb", "-displayfd", "1", "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
         "-nolisten", "tcp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:  # fmt: skip
        try:
            assert server.stdout is not None
            number = server.stdout.readline().strip()
            assert number.isdigit(), "Xvfb did not report its display"
            env = dict(os.environ, DISPLAY=f":{number}")
            env.pop("PYSTRAY_BACKEND", None)
            env.pop("DBUS_SESSION_BUS_ADDRESS", None)  # no session bus: like a bare X desktop
            yield env
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture
def xserver(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Xvfb with trayer docked at the top: an X display with a system tray (XEmbed)."""
    if shutil.which("trayer") is None:
        pytest.skip("needs trayer (apt-get install trayer)")
    pytest.importorskip("Xlib", reason="pystray's xorg backend needs python-xlib")
    import Xlib.display

    with xvfb() as env:
        trayer = subprocess.Popen(
            # One 32-pixel-high bar: trayer gives each icon a square slot of its height.
            ["trayer", "--edge", "top", "--align", "left", "--widthtype", "pixel",
             "--width", str(BAR[2]), "--heighttype", "pixel", "--height", str(BAR[3]),
             "--SetDockType", "true"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            display = Xlib.display.Display(env["DISPLAY"])
            selection = display.intern_atom("_NET_SYSTEM_TRAY_S0")
            owned = threading.Event()
            # The tray manager takes the selection once it is up; bounded wait.
            for _ in range(200):
                if display.get_selection_owner(selection) != 0:
                    owned.set()
                    break
                owned.wait(0.05)
            display.close()
            assert owned.is_set(), "trayer did not become the system tray"
            yield env
        finally:
            trayer.terminate()
            trayer.wait(timeout=10)


def screenshot(env: dict[str, str], out: Path) -> Image.Image:
    subprocess.run(["import", "-window", "root", str(out)], env=env, check=True, timeout=30)
    with Image.open(out) as image:
        shot = image.convert("RGB")
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot.save(SHOTS / out.name)
    return shot


def colour_share(image: Image.Image, colour: str, tolerance: int = 30) -> float:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16).reshape(-1, 3)
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return float(np.mean(np.all(np.abs(pixels - rgb) <= tolerance, axis=1)))


def icon_box(shot: Image.Image) -> tuple[int, int, int, int] | None:
    """The bounding box of what is drawn in the icon's slot (what differs from the bar)."""
    slot = np.asarray(shot.crop(SLOT), dtype=np.int16)
    background = np.asarray(shot.crop(BAR), dtype=np.int16)[BAR[3] // 2, -2]
    drawn = np.any(np.abs(slot - background) > 24, axis=2)
    ys, xs = np.nonzero(drawn)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def assert_whole_icon(shot: Image.Image, state: IconState, what: str) -> None:
    """The icon fills its slot as a square in the state's colour, its corners see-through."""
    bar = shot.crop(BAR)
    assert colour_share(bar, STATE_COLOURS[state]) > 0.02, what
    box = icon_box(shot)
    assert box is not None, f"{what}: no icon drawn"
    width, height = box[2] - box[0], box[3] - box[1]
    # The bubble fills about 7/8 x 13/16 of its square; the broken one was a 1x30 sliver.
    assert width >= 14 and height >= 14, f"{what}: the icon collapsed to {width}x{height} px"
    corner = shot.getpixel((SLOT[0] + 1, SLOT[1] + 1))
    assert sum(corner) > 3 * 60, f"{what}: the transparent corner drew {corner} (black)"


def save_sheet(shots: list[Image.Image], name: str, tmp_path: Path, crop: tuple | None = None):
    """One picture of several moments side by side, enlarged, for a person to look at."""
    parts = [shot.crop(crop) if crop else shot for shot in shots]
    width, height = parts[0].size
    sheet = Image.new("RGB", (width * len(parts) + 10 * (len(parts) - 1), height), "white")
    for index, part in enumerate(parts):
        sheet.paste(part, (index * (width + 10), 0))
    if crop:
        sheet = sheet.resize((sheet.width * 3, sheet.height * 3), Image.Resampling.NEAREST)
    sheet.save(tmp_path / name)
    SHOTS.mkdir(parents=True, exist_ok=True)
    sheet.save(SHOTS / name)


def xdotool(env: dict[str, str], *args: str) -> None:
    subprocess.run(["xdotool", *args], env=env, check=True, timeout=30)


def wait_until(check: object, seconds: float, what: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.gui
def test_the_xorg_fallback_docks_keeps_its_size_and_a_left_click_opens_the_report(
    tmp_path: Path, tiny_bundle: Path, agent_class: type, xserver: dict[str, str]
) -> None:
    """pystray's bare X11 backend (no PyGObject): no menu, so the driver presses Start/Stop;
    the icon must keep its size and transparency in every state, a left click open the page."""
    demo = resources.files("agent") / "data" / "demo_chat.jsonl"
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "model.dir": str(tiny_bundle),
        "source.kind": "replay",
        "source.file": str(demo),
        "source.speed": "20",
        "sync.enabled": False,
        "ui.port": 0,  # no web UI: its port may be taken on a shared machine
    }
    env = dict(xserver, PYSTRAY_BACKEND="xorg")
    errors = tmp_path / "driver.err"
    with (
        errors.open("w") as error_file,
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(tmp_path / "config.toml"), json.dumps(overrides)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=error_file,
            text=True,
        ) as tray,
    ):
        assert tray.stdin is not None and tray.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x) for x in tray.stdout], daemon=True)
        reader.start()

        def ask(command: str | None) -> dict:
            if command:
                tray.stdin.write(command + "\n")
                tray.stdin.flush()
            try:
                answer = json.loads(lines.get(timeout=150))
            except (queue.Empty, ValueError):
                pytest.fail(f"the tray gave no answer to {command!r}: {errors.read_text()[-2000:]}")
            assert answer["event"] != "error", answer
            return answer

        try:
            ready = ask(None)
            assert ready["event"] == "ready" and ready["state"] == "stopped"
            shots = [screenshot(xserver, tmp_path / "xorg-stopped.png")]
            for command, state in (("start", IconState.RUNNING), ("stop", IconState.STOPPED)) * 2:
                answer = ask(command)
                assert answer["event"] == ("started" if command == "start" else "stopped")
                shots.append(screenshot(xserver, tmp_path / f"xorg-{len(shots)}-{command}.png"))
                assert_whole_icon(shots[-1], state, f"after {command} #{len(shots) // 2}")
            assert_whole_icon(shots[0], IconState.STOPPED, "at start")

            # No menu here: a left click is the way in (the status page, else the report).
            xdotool(xserver, "mousemove", "16", "16", "click", "1")
            assert ask(None)["event"] == "report"
            ask("quit")
            assert tray.wait(timeout=60) == 0
        finally:
            if tray.poll() is None:
                tray.kill()
    settings = load_settings(tmp_path / "config.toml", overrides)
    assert sealed_parts(settings), "Stop from the tray must seal the part"
    save_sheet(shots, "tray-xorg.png", tmp_path, crop=(0, 0, 64, 32))


# The menu through the real command line, driven by clicks, on both kinds of Linux tray host:
# an XEmbed tray (trayer: pystray's GTK status icon, no D-Bus) and a StatusNotifier host
# (gtk-sni-tray-standalone with its own watcher on a private session bus: AppIndicator).

SNI_HOST = "gtk-sni-tray-standalone"  # Debian: haskell-gtk-sni-tray-utils


@pytest.fixture(params=["gtk", "appindicator"])
def menu_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple]:
    """(environment, the backend the tray must pick) for each kind of tray host."""
    import time

    if request.param == "gtk":
        yield request.getfixturevalue("xserver"), "gtk"
        return
    missing = [t for t in (SNI_HOST, "dbus-daemon") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install haskell-gtk-sni-tray-utils)")
    gi = pytest.importorskip("gi", reason="AppIndicator needs PyGObject")
    try:
        gi.require_version("AyatanaAppIndicator3", "0.1")
    except ValueError:
        pytest.skip("needs gir1.2-ayatanaappindicator3-0.1")
    display = xvfb()
    xserver = display.__enter__()
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    host = None
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()
        assert address, "dbus-daemon gave no address"
        env = dict(xserver, DBUS_SESSION_BUS_ADDRESS=address)
        host_log = open(tmp_path / "sni-host.log", "w")  # noqa: SIM115 (closed below)
        # gtk-sni-tray-standalone sometimes dies at start with "Pattern match failure" when
        # it asks its own, just-started watcher too early (its race, not ours): retry twice.
        for _attempt in range(3):
            host = subprocess.Popen(
                # A light grey bar like trayer's, so the see-through corners can be checked.
                [SNI_HOST, "--top", "--beginning", "--size", "32", "--watcher", "--color",
                 "#dcdad5"],
                env=env,
                stdout=host_log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + 90  # a Haskell program starting on a busy machine
            while not _watcher_up(address) and host.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            if host.poll() is None and _watcher_up(address):
                break
            host.kill()
            host.wait(timeout=10)
        else:
            host_log.flush()
            pytest.fail(
                f"the StatusNotifier host did not come up: "
                f"{(tmp_path / 'sni-host.log').read_text()[-1500:]}"
            )
        yield env, "appindicator"
    finally:
        if host is not None:
            host.terminate()
            host.wait(timeout=10)
            host_log.close()
        bus.terminate()
        bus.wait(timeout=10)
        if bus.stdout is not None:
            bus.stdout.close()
        display.__exit__(None, None, None)


def _watcher_up(address: str) -> bool:
    done = subprocess.run(
        ["dbus-send", f"--bus={address}", "--print-reply", "--dest=org.freedesktop.DBus",
         "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
         "string:org.kde.StatusNotifierWatcher"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return "boolean true" in done.stdout


def open_menu(env: dict[str, str], tmp_path: Path, name: str) -> tuple[Image.Image, list[dict]]:
    """Right-click the icon; returns the screenshot with the menu open and its text rows
    (top to bottom: y of the row's middle, and whether it is drawn enabled)."""
    import time

    before = screenshot(env, tmp_path / f"{name}-before.png")
    xdotool(env, "mousemove", "16", "16", "click", "3")
    deadline = time.monotonic() + 30
    while True:
        time.sleep(0.4)
        shot = screenshot(env, tmp_path / f"{name}.png")
        rows = _menu_rows(shot, before)
        # A menu is there once its lines are drawn (it maps blank first on a busy machine).
        if len(rows) >= 3:
            time.sleep(0.4)
            shot = screenshot(env, tmp_path / f"{name}.png")
            return shot, _menu_rows(shot, before)
        if time.monotonic() > deadline:
            pytest.fail(f"the right click opened no menu (rows {rows})")


def _menu_rows(shot: Image.Image, before: Image.Image) -> list[dict]:
    """The text rows of what appeared below the bar since `before`, top to bottom."""
    changed = np.any(np.asarray(shot) != np.asarray(before), axis=2)
    changed[: BAR[3] + 1, :] = False
    if changed.sum() < 2000:
        return []
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
    lum = np.asarray(shot, dtype=np.float32).mean(axis=2)[y0 : y1 + 1, x0 + 3 : x1 - 2]
    inked = (lum < 200).sum(axis=1)
    rows: list[dict] = []
    start = None
    for offset, count in enumerate([*inked.tolist(), 0]):
        if count and start is None:
            start = offset
        elif not count and start is not None:
            if offset - start >= 5:  # text, not a separator line
                rows.append(
                    {
                        "y": int(y0 + (start + offset) // 2),
                        "x": int(x0 + 40),
                        "enabled": float(lum[start:offset].min()) < 100,
                    }
                )
            start = None
    return rows


def click(env: dict[str, str], row: dict) -> None:
    xdotool(env, "mousemove", str(row["x"]), str(row["y"]), "click", "1")


@pytest.mark.gui
def test_the_tray_menu_starts_stops_and_quits_by_clicking(
    tmp_path: Path, tiny_bundle: Path, agent_class: type, menu_host: tuple
) -> None:
    """`captaflow --model DIR --data-dir D` as a streamer starts it: the menu under a right
    click, Start, Stop and Quit pressed with the mouse, a screenshot of each state."""
    pytest.importorskip("gi", reason="the tray's menu needs PyGObject (pip extra 'tray')")
    xserver, backend = menu_host
    demo = resources.files("agent") / "data" / "demo_chat.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[source]\nkind = "replay"\nfile = "{demo}"\nspeed = "20"\n[ui]\nport = 0\n',
        encoding="utf-8",
    )
    data = tmp_path / "data"
    env = dict(xserver, CAPTAFLOW_NO_KEYRING="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "tray.out"
    with (
        out.open("w") as out_file,
        subprocess.Popen(
            # The common flags the tray must honour: --model, --data-dir, --config.
            [sys.executable, "-m", "agent", "--model", str(tiny_bundle), "--data-dir", str(data),
             "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=out_file,
            stderr=subprocess.STDOUT,
        ) as tray,
    ):  # fmt: skip
        try:
            log = data / "logs" / "captaflow.log"
            wait_until(
                lambda: log.is_file() and f"tray backend: {backend}" in log.read_text(),
                60,
                f"the tray on its {backend} backend",
            )
            wait_until(
                lambda: (
                    colour_share(
                        screenshot(xserver, tmp_path / "docking.png").crop(BAR),
                        STATE_COLOURS[IconState.STOPPED],
                    )
                    > 0.02
                ),
                60,
                "the grey icon to dock",
            )
            stopped_menu, rows = open_menu(xserver, tmp_path, f"{backend}-menu-stopped")
            # Start, Stop, 3 status lines, 4 entries (status page, report, folder, settings), Quit
            assert len(rows) >= 8, rows
            start, stop = rows[0], rows[1]
            assert start["enabled"] and not stop["enabled"], rows
            assert_whole_icon(stopped_menu, IconState.STOPPED, "stopped")
            click(xserver, start)

            wait_until(
                lambda: (
                    colour_share(
                        screenshot(xserver, tmp_path / "running.png").crop(BAR),
                        STATE_COLOURS[IconState.RUNNING],
                    )
                    > 0.02
                ),
                90,
                "the green (running) icon",
            )
            wait_until(lambda: (data / "status.json").is_file(), 60, "the first status")
            wait_until(
                lambda: json.loads((data / "status.json").read_text()).get("readings_total", 0),
                90,
                "the first reading",
            )
            running_menu, rows = open_menu(xserver, tmp_path, f"{backend}-menu-running")
            assert not rows[0]["enabled"] and rows[1]["enabled"], rows
            assert_whole_icon(running_menu, IconState.RUNNING, "running")
            click(xserver, rows[1])  # Stop

            settings = load_settings(config, {"data_dir": data})
            wait_until(lambda: bool(sealed_parts(settings)), 90, "Stop to seal the part")
            wait_until(
                lambda: (
                    colour_share(
                        screenshot(xserver, tmp_path / "stopped-again.png").crop(BAR),
                        STATE_COLOURS[IconState.STOPPED],
                    )
                    > 0.02
                ),
                60,
                "the grey icon again",
            )
            after_menu, rows = open_menu(xserver, tmp_path, f"{backend}-menu-stopped-again")
            assert rows[0]["enabled"] and not rows[1]["enabled"], rows
            assert_whole_icon(after_menu, IconState.STOPPED, "stopped again")
            click(xserver, rows[-1])  # Quit
            assert tray.wait(timeout=60) == 0, out.read_text()[-3000:]
        finally:
            if tray.poll() is None:
                tray.kill()
    assert not list((settings.spool.dir / "open").glob("*.open"))
    assert "Traceback" not in out.read_text()
    save_sheet([stopped_menu, running_menu, after_menu], f"tray-{backend}-menus.png", tmp_path)


@pytest.mark.gui
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_tray_cleanly_and_seals(
    how: str, tmp_path: Path, tiny_bundle: Path, agent_class: type, xserver: dict[str, str]
) -> None:
    """Ctrl-C (SIGINT) and SIGTERM: the running agent stops, its part is sealed, exit 0."""
    import signal

    demo = resources.files("agent") / "data" / "demo_chat.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[source]\nkind = "replay"\nfile = "{demo}"\nspeed = "20"\n[ui]\nport = 0\n',
        encoding="utf-8",
    )
    data = tmp_path / "data"
    env = dict(xserver, CAPTAFLOW_NO_KEYRING="1", PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        [sys.executable, "-m", "agent", "--model", str(tiny_bundle), "--data-dir", str(data),
         "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as tray:  # fmt: skip
        try:
            wait_until(
                lambda: (
                    colour_share(
                        screenshot(xserver, tmp_path / "docked.png").crop(BAR),
                        STATE_COLOURS[IconState.STOPPED],
                    )
                    > 0.02
                ),
                60,
                "the icon to dock",
            )
            _, rows = open_menu(xserver, tmp_path, "menu")
            click(xserver, rows[0])  # Start
            wait_until(
                lambda: (
                    (data / "status.json").is_file()
                    and json.loads((data / "status.json").read_text()).get("readings_total", 0)
                ),
                120,
                "the first reading",
            )
            tray.send_signal(getattr(signal, how))
            output, _ = tray.communicate(timeout=60)
        finally:
            if tray.poll() is None:
                tray.kill()
    assert tray.returncode == 0, output[-3000:]
    settings = load_settings(config, {"data_dir": data})
    assert sealed_parts(settings), f"{how} must seal the part"
    assert not list((settings.spool.dir / "open").glob("*.open"))


# --- backend choice, the status page, the first-run download (no display) ---------------------


def test_the_backend_is_chosen_before_pystray_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import tray

    env: dict[str, str] = {"PYSTRAY_BACKEND": "xorg"}
    if sys.platform.startswith("linux"):
        assert tray.choose_backend(env) == "xorg"  # the user's choice wins
        monkeypatch.setattr(tray, "_linux_backend", lambda: "gtk")
        env = {}
        assert tray.choose_backend(env) == "gtk" and env["PYSTRAY_BACKEND"] == "gtk"
    else:
        assert tray.choose_backend(env) == sys.platform


def test_without_a_display_or_gtk_the_fallback_is_xorg(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import tray

    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    monkeypatch.setitem(sys.modules, "gi", None)  # PyGObject not installed
    assert tray._linux_backend() == "xorg"


def test_the_status_page_falls_back_to_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from agent import tray

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert not tray.status_page_up(f"http://127.0.0.1:{free}/")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert tray.status_page_up(f"http://127.0.0.1:{server.getsockname()[1]}/")
    opened: list[str] = []
    monkeypatch.setattr(tray, "status_page_up", lambda *a, **k: False)
    tray.open_status_page(lambda: opened.append("report"))
    assert opened == ["report"]


def test_the_first_run_download_shows_progress_then_the_model(tmp_path: Path) -> None:
    from agent.errors import ModelBundleError
    from agent.model_download import Progress

    installed: list[bool] = [False]
    seen: list[list[str]] = []
    go_on = threading.Event()

    def fetch(progress: object) -> None:
        progress(Progress(0, 2_000_000))  # type: ignore[operator]
        progress(Progress(1_000_000, 2_000_000))  # type: ignore[operator]
        seen.append(info_lines(app.entries()))
        go_on.wait(10)
        installed[0] = True

    app = TrayApp(
        lambda: None,  # type: ignore[arg-type, return-value]
        open_report=lambda: None,
        open_data_folder=lambda: None,
        open_settings=lambda: None,
        has_model=lambda: installed[0],
        download_model=fetch,
    )
    assert by_action(app.entries())[Action.DOWNLOAD_MODEL].enabled
    worker = app.download()
    assert worker is not None and app.download() is None  # one download at a time
    go_on.set()
    worker.join(10)
    assert seen[0][0] == "Downloading the model… 50 % of 2 MB"
    assert Action.DOWNLOAD_MODEL not in by_action(app.entries())
    assert by_action(app.entries())[Action.START].enabled

    def offline(progress: object) -> None:
        raise ModelBundleError("cannot download the model from example: this machine seems offline")

    installed[0] = False
    failing = TrayApp(
        lambda: None,  # type: ignore[arg-type, return-value]
        open_report=lambda: None,
        open_data_folder=lambda: None,
        open_settings=lambda: None,
        has_model=lambda: False,
        download_model=offline,
    )
    thread = failing.download()
    assert thread is not None
    thread.join(10)
    lines = info_lines(failing.entries())
    assert lines[-1].startswith("⚠ cannot download the model") and "offline" in lines[-1]
    assert by_action(failing.entries())[Action.DOWNLOAD_MODEL].enabled  # try again


@pytest.mark.gui
def test_ctrl_c_stops_the_menuless_xorg_tray_cleanly(
    tmp_path: Path, tiny_bundle: Path, agent_class: type, xserver: dict[str, str]
) -> None:
    """pystray's X11 loop blocks in Xlib; Ctrl-C must still reach the tray and seal the part."""
    import signal

    demo = resources.files("agent") / "data" / "demo_chat.jsonl"
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "model.dir": str(tiny_bundle),
        "source.kind": "replay",
        "source.file": str(demo),
        "source.speed": "20",
        "sync.enabled": False,
        "ui.port": 0,
    }
    env = dict(xserver, PYSTRAY_BACKEND="xorg")
    with subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "config.toml"), json.dumps(overrides)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as tray:  # fmt: skip
        assert tray.stdin is not None and tray.stdout is not None
        try:
            assert json.loads(tray.stdout.readline())["event"] == "ready"
            tray.stdin.write("start\n")
            tray.stdin.flush()
            assert json.loads(tray.stdout.readline())["event"] == "started"
            tray.send_signal(signal.SIGINT)
            rest, errors = tray.communicate(timeout=60)
        finally:
            if tray.poll() is None:
                tray.kill()
    assert tray.returncode == 0, errors[-3000:]
    assert '"event": "quit"' in rest and "Traceback" not in errors
    settings = load_settings(tmp_path / "config.toml", overrides)
    assert sealed_parts(settings), "Ctrl-C must seal the part"
