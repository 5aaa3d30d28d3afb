"""The tray: its menu and icon as pure functions of a status, then the real thing under Xvfb."""

from __future__ import annotations

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
NOTES = ROOT.parent / "notes"

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
import json, sys, threading
from pathlib import Path
from agent.config import load_settings
from agent.runtime import Agent
from agent.tray import TrayApp, model_present

settings = load_settings(Path(sys.argv[1]), json.loads(sys.argv[2]))
first_reading = threading.Event()

def on_status(status):
    if status.readings_total > 0:
        first_reading.set()

app = TrayApp(
    lambda: Agent(settings, on_status=on_status),
    open_report=lambda: None, open_data_folder=lambda: None, open_settings=lambda: None,
    has_model=lambda: model_present(settings.model.dir),
)

def say(event):
    status = app.snapshot()
    print(json.dumps({"event": event, "state": str(status.state),
                      "readings": status.readings_total,
                      "menu": [e.text for e in app.entries() if not e.separator]}), flush=True)

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


@pytest.fixture
def xserver(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Xvfb with trayer docked at the top: an X display with a system tray."""
    missing = [tool for tool in ("Xvfb", "trayer", "import") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install xvfb trayer imagemagick)")
    pytest.importorskip("Xlib", reason="pystray's xorg backend needs python-xlib")
    import Xlib.display

    with subprocess.Popen(
        ["Xvfb", "-displayfd", "1", "-screen", "0", "160x32x24", "-nolisten", "tcp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as xvfb:
        assert xvfb.stdout is not None
        number = xvfb.stdout.readline().strip()
        assert number.isdigit(), "Xvfb did not report its display"
        env = dict(os.environ, DISPLAY=f":{number}", PYSTRAY_BACKEND="xorg")
        trayer = subprocess.Popen(
            # One 32-pixel-high bar: trayer gives each icon a square slot of its height.
            [
                "trayer",
                "--edge",
                "top",
                "--align",
                "left",
                "--widthtype",
                "pixel",
                "--width",
                "160",
                "--heighttype",
                "pixel",
                "--height",
                "32",
                "--SetDockType",
                "true",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
            xvfb.terminate()
            xvfb.wait(timeout=10)


def screenshot(env: dict[str, str], out: Path) -> Image.Image:
    subprocess.run(["import", "-window", "root", str(out)], env=env, check=True, timeout=30)
    with Image.open(out) as image:
        return image.convert("RGB")


def colour_share(image: Image.Image, colour: str, tolerance: int = 30) -> float:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16).reshape(-1, 3)
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return float(np.mean(np.all(np.abs(pixels - rgb) <= tolerance, axis=1)))


@pytest.mark.gui
def test_the_tray_docks_starts_and_stops_under_xvfb(
    tmp_path: Path, tiny_bundle: Path, agent_class: type, xserver: dict[str, str]
) -> None:
    demo = resources.files("agent") / "data" / "demo_chat.jsonl"
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "model.dir": str(tiny_bundle),
        "source.kind": "replay",
        "source.file": str(demo),
        "source.speed": "20",
        "sync.enabled": False,
    }
    errors = tmp_path / "driver.err"
    with (
        errors.open("w") as error_file,
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(tmp_path / "config.toml"), json.dumps(overrides)],
            cwd=ROOT,
            env=xserver,
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
            assert "Start" in ready["menu"]
            stopped_before = screenshot(xserver, tmp_path / "tray-stopped.png")

            started = ask("start")
            assert started["readings"] > 0 and started["state"] in ("running", "trouble")
            assert any(line.endswith("this session") for line in started["menu"]), started
            running = screenshot(xserver, tmp_path / "tray-running.png")

            stopped = ask("stop")
            assert stopped["state"] == "stopped" and stopped["readings"] >= started["readings"]
            stopped_after = screenshot(xserver, tmp_path / "tray-stopped-after.png")
            ask("quit")
            assert tray.wait(timeout=60) == 0
        finally:
            if tray.poll() is None:
                tray.kill()

    # The docked icon is in the shots: grey before, green while running, grey again after.
    assert colour_share(stopped_before, STATE_COLOURS[IconState.STOPPED]) > 0.01
    assert colour_share(running, STATE_COLOURS[IconState.RUNNING]) > 0.01
    assert colour_share(stopped_after, STATE_COLOURS[IconState.STOPPED]) > 0.01
    settings = load_settings(tmp_path / "config.toml", overrides)
    assert sealed_parts(settings), "Stop from the tray must seal the part"

    # One picture for the notes: the three moments side by side, enlarged.
    width, height = running.size
    sheet = Image.new("RGB", (width * 3 + 20, height), "white")
    for index, shot in enumerate((stopped_before, running, stopped_after)):
        sheet.paste(shot, (index * (width + 10), 0))
    sheet = sheet.resize((sheet.width * 3, sheet.height * 3), Image.Resampling.NEAREST)
    sheet.save(tmp_path / "tray.png")
    if NOTES.is_dir():
        sheet.save(NOTES / "tray.png")
