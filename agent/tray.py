"""The tray app: the streamer's whole interface, on the main thread.

Split in two so the logic is tested without a display:

* pure functions from an `AgentStatus` snapshot to what the tray shows: `menu_model()` (the
  list of `MenuEntry`), `icon_for()` (which icon) and `tooltip_for()`;
* `TrayApp`, a thin pystray shell that renders those, refreshes them once a second from a
  timer thread, and runs every slow call (start, stop, opening files) off the UI thread so the
  menu never freezes.

pystray is imported only inside `TrayApp.run()`: on Linux importing it connects to the X
display, and the command line must work on a machine without one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from agent.bundle import model_present
from agent.errors import CaptaFlowError
from agent.icons import IconState, render_icon
from agent.model_download import Progress, bundle_test_label
from agent.vocab import AgentState, AgentStatus, SourceState

if TYPE_CHECKING:
    from agent.config import Settings

log = logging.getLogger(__name__)

APP_TITLE = "CaptaFlow"
NO_MODEL_LINE = (
    "Model not exported yet — run `captaflow export-model` once "
    "(about 500 MB download, needs internet once)"
)
NO_MODEL_DOWNLOAD_LINE = "No model yet — choose Download the model (checked before use)"
# Windows cuts tray tooltips at 127 characters.
TOOLTIP_MAX = 120
# The local status page (agent/webui.py serves it while the app runs).
STATUS_PAGE_URL = "http://127.0.0.1:8730/"


class AgentLike(Protocol):
    """What the tray needs of `agent.runtime.Agent`."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def status(self) -> AgentStatus: ...
    def sync_now(self) -> None: ...


class Action(StrEnum):
    START = "start"
    STOP = "stop"
    OPEN_STATUS = "open_status"
    DOWNLOAD_MODEL = "download_model"
    OPEN_REPORT = "open_report"
    OPEN_DATA_FOLDER = "open_data_folder"
    OPEN_SETTINGS = "open_settings"
    QUIT = "quit"


@dataclass(frozen=True, slots=True)
class MenuEntry:
    """One menu line. Lines without an action are information and shown disabled."""

    text: str
    action: Action | None = None
    enabled: bool = True
    separator: bool = False
    default: bool = False  # what a left click does (bold in GTK menus)


SEPARATOR = MenuEntry("", separator=True)


# ---------------------------------------------------------------------------------------------
# Pure: status snapshot → what the tray shows.


def source_line(status: AgentStatus) -> str:
    """The link's state in a few words: connected, reconnecting in N s, offline..."""
    if status.state is AgentState.STOPPED:
        return "Stopped"
    if status.state is AgentState.STARTING:
        return "Starting…"
    if status.state is AgentState.STOPPING:
        return "Stopping — saving the last readings…"
    source = status.source
    channel = f" to #{status.channel}" if status.channel else ""
    if source.state is SourceState.CONNECTED:
        return f"Connected{channel}"
    if source.state is SourceState.CONNECTING:
        return f"Connecting{channel}…"
    if source.state is SourceState.RECONNECTING:
        if source.retry_in is not None and source.retry_in > 0:
            return f"Reconnecting in {max(1, round(source.retry_in))} s"
        return "Reconnecting…"
    if source.state is SourceState.FINISHED:
        return "Replay finished"
    if source.state is SourceState.FAILED:
        return f"Offline: {source.detail}" if source.detail else "Offline"
    return "Offline"


def activity_line(status: AgentStatus) -> str:
    readings = status.readings_total
    noun = "reading" if readings == 1 else "readings"
    return f"{status.messages_per_second:.1f} messages/s · {readings} {noun} this session"


def upload_line(status: AgentStatus) -> str:
    waiting = status.parts_waiting
    if waiting == 0:
        text = "Nothing waiting for upload"
    else:
        text = f"{waiting} part{'s' if waiting != 1 else ''} waiting for upload"
    upload = status.upload_state.strip()
    if upload and upload != "idle":
        # "off (no bucket set)" reads as "…: off, no bucket set", not as nested brackets.
        text += ": " + upload.replace(" (", ", ").rstrip(")") if "(" in upload else f" ({upload})"
    return text


def mood_line(status: AgentStatus) -> str:
    return f"Chat mood: {status.dominant}" if status.dominant else "Chat mood: —"


def test_model_line(label: str) -> str:
    return f"⚠ Test model ({label}): the emotions are random"


def menu_model(
    status: AgentStatus,
    has_model: bool,
    *,
    setup_problem: str | None = None,
    busy: bool = False,
    notice: str | None = None,
    test_model: str | None = None,
    can_download: bool = False,
    downloading: str | None = None,
) -> list[MenuEntry]:
    """The whole menu for one status snapshot.

    `setup_problem` is a line saying what the settings still lack (e.g. no channel),
    `busy` is True while a start or stop is under way, `notice` the last thing that went
    wrong in the tray itself (a file that would not open). `test_model` is the label of a
    test bundle in use; `can_download` offers the model download when there is no model,
    `downloading` is the download's progress line while one runs.
    """
    stopped = status.state is AgentState.STOPPED
    can_start = stopped and has_model and setup_problem is None and not busy
    can_stop = (
        status.state in (AgentState.STARTING, AgentState.RUNNING, AgentState.TROUBLE) and not busy
    )
    entries = [
        MenuEntry("Start", Action.START, enabled=can_start),
        MenuEntry("Stop", Action.STOP, enabled=can_stop),
        SEPARATOR,
    ]
    if not has_model and can_download:
        entries.insert(
            0, MenuEntry("Download the model", Action.DOWNLOAD_MODEL, enabled=downloading is None)
        )
    info: list[str] = []
    if downloading:
        info.append(downloading)
    elif not has_model:
        info.append(NO_MODEL_DOWNLOAD_LINE if can_download else NO_MODEL_LINE)
    if has_model and test_model:
        info.append(test_model_line(test_model))
    if setup_problem:
        info.append(setup_problem)
    info.append(source_line(status))
    if not stopped or status.readings_total or status.messages_total:
        info.append(activity_line(status))
    info.append(upload_line(status))
    info.append(mood_line(status))
    if status.problem:
        info.append(f"⚠ {status.problem}")
    if notice:
        info.append(f"⚠ {notice}")
    entries.extend(MenuEntry(line, enabled=False) for line in info)
    entries += [
        SEPARATOR,
        MenuEntry("Open dashboard", Action.OPEN_STATUS, default=True),
        MenuEntry("Open report", Action.OPEN_REPORT),
        MenuEntry("Open data folder", Action.OPEN_DATA_FOLDER),
        MenuEntry("Settings", Action.OPEN_SETTINGS),
        SEPARATOR,
        MenuEntry("Quit", Action.QUIT),
    ]
    return entries


def icon_for(
    status: AgentStatus, has_model: bool = True, setup_problem: str | None = None
) -> tuple[IconState, str | None]:
    """Which icon to show: (state colour, emotion dot or None)."""
    if not has_model or setup_problem:
        return IconState.SETUP, None
    if status.state in (AgentState.STOPPED, AgentState.STOPPING):
        return IconState.STOPPED, None
    if status.source.state is SourceState.FAILED:
        return IconState.FAILED, None
    if status.state is AgentState.TROUBLE or status.source.state is SourceState.RECONNECTING:
        return IconState.TROUBLE, status.dominant
    return IconState.RUNNING, status.dominant


def tooltip_for(status: AgentStatus, has_model: bool = True, test_model: str | None = None) -> str:
    """The hover text; a test model says so first, so it is never cut off."""
    if not has_model:
        text = f"{APP_TITLE} - model not exported yet"
    else:
        parts = [source_line(status)]
        if status.dominant and status.state in (AgentState.RUNNING, AgentState.TROUBLE):
            parts.append(status.dominant)
        title = f"{APP_TITLE} (TEST MODEL: {test_model})" if test_model else APP_TITLE
        text = f"{title} - " + " · ".join(parts)
    # X11 window titles (pystray's xorg backend) are Latin-1 only.
    text = text.replace("—", "-").replace("…", "...").encode("latin-1", "replace").decode("latin-1")
    return text if len(text) <= TOOLTIP_MAX else text[: TOOLTIP_MAX - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Opening files with the OS.


def open_with_default_app(path: Path) -> None:
    """Open a file or folder the way a double-click would."""
    if not path.exists():
        raise CaptaFlowError(f"{path} does not exist yet; start CaptaFlow once to create it")
    try:
        if sys.platform == "win32":
            os.startfile(path)  # type: ignore[attr-defined]  # Windows only
        elif sys.platform == "darwin":
            subprocess.Popen(["open", str(path)])
        else:
            subprocess.Popen(
                ["xdg-open", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
    except OSError as error:
        raise CaptaFlowError(
            f"cannot open {path} ({error.strerror or error}); open it yourself"
        ) from None


# ---------------------------------------------------------------------------------------------
# The pystray shell.


class TrayApp:
    """The tray icon around one agent at a time (a fresh one from `agent_factory` per Start)."""

    def __init__(
        self,
        agent_factory: Callable[[], AgentLike],
        *,
        open_report: Callable[[], object],
        open_data_folder: Callable[[], object],
        open_settings: Callable[[], object],
        has_model: Callable[[], bool] = lambda: True,
        setup_problem: Callable[[], str | None] = lambda: None,
        test_model: Callable[[], str | None] = lambda: None,
        download_model: Callable[[Callable[[Progress], None]], object] | None = None,
        open_status: Callable[[], object] | None = None,
        refresh_seconds: float = 1.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._agent_factory = agent_factory
        self._handlers: Mapping[Action, Callable[[], object]] = {
            Action.OPEN_STATUS: open_status or (lambda: open_status_page(open_report)),
            Action.OPEN_REPORT: open_report,
            Action.OPEN_DATA_FOLDER: open_data_folder,
            Action.OPEN_SETTINGS: open_settings,
        }
        self._has_model = has_model
        self._setup_problem = setup_problem
        self._test_model = test_model
        self._download_model = download_model
        self._downloading: str | None = None
        self._refresh_seconds = refresh_seconds
        self._stop_timeout = stop_timeout

        self._lock = threading.Lock()
        self._agent: AgentLike | None = None
        self._busy: AgentState | None = None  # STARTING or STOPPING while a worker runs
        self._notice: str | None = None
        self._quitting = threading.Event()
        # pystray's X11 backend shares one Xlib display between threads: a refresh racing
        # icon.stop() can swallow the stop, so refreshes are serialised and Quit retries.
        self._refresh_lock = threading.Lock()
        self._loop_ended = threading.Event()
        self._workers: list[threading.Thread] = []
        self._icon: Any = None  # pystray.Icon once run() has started
        self._icon_cache: dict[tuple[IconState, str | None], Image.Image] = {}
        self._shown_icon: tuple[IconState, str | None] | None = None
        self.ready = threading.Event()  # set once the icon is shown
        self.stopped = threading.Event()  # set once Quit has stopped the agent and the loop

    # -- state ------------------------------------------------------------------------------

    def snapshot(self) -> AgentStatus:
        """The agent's status, with the tray's own start/stop progress laid over it."""
        with self._lock:
            agent, busy = self._agent, self._busy
        status = AgentStatus()
        if agent is not None:
            try:
                status = agent.status()
            except Exception:
                log.exception("the agent's status() failed")
        if busy is not None:
            status = replace(status, state=busy)
        return status

    def _checks(self) -> tuple[bool, str | None]:
        try:
            has_model = bool(self._has_model())
            problem = self._setup_problem()
        except CaptaFlowError as error:
            return True, str(error)
        return has_model, problem

    def _label(self) -> str | None:
        try:
            return self._test_model()
        except Exception:
            log.debug("reading the test-model label failed", exc_info=True)
            return None

    def entries(self) -> list[MenuEntry]:
        has_model, problem = self._checks()
        with self._lock:
            busy, notice = self._busy is not None, self._notice
            downloading = self._downloading
        return menu_model(
            self.snapshot(),
            has_model,
            setup_problem=problem,
            busy=busy or downloading is not None,
            notice=notice,
            test_model=self._label(),
            can_download=self._download_model is not None,
            downloading=downloading,
        )

    def tooltip(self) -> str:
        has_model, _ = self._checks()
        with self._lock:
            downloading = self._downloading
        if downloading:
            return tooltip_for(AgentStatus(), True).split(" - ")[0] + " - " + downloading
        return tooltip_for(self.snapshot(), has_model, self._label())

    # -- actions (each returns the worker thread so tests and Quit can wait for it) ---------

    def _spawn(self, name: str, work: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=work, name=f"tray-{name}", daemon=True)
        with self._lock:
            self._workers = [w for w in self._workers if w.is_alive()] + [thread]
        thread.start()
        return thread

    def start_agent(self) -> threading.Thread | None:
        with self._lock:
            running = self._agent is not None and self._agent.status().state not in (
                AgentState.STOPPED,
            )
            if self._busy is not None or running or self._quitting.is_set():
                return None
            self._busy = AgentState.STARTING
            self._notice = None

        def work() -> None:
            agent: AgentLike | None = None
            try:
                agent = self._agent_factory()
                agent.start()
            except CaptaFlowError as error:
                self._set_notice(str(error))
            except Exception as error:
                log.exception("starting the agent failed")
                self._set_notice(f"could not start: {error}; see the log file")
            with self._lock:
                if agent is not None:
                    self._agent = agent
                self._busy = None
            self.refresh()

        return self._spawn("start", work)

    def stop_agent(self) -> threading.Thread | None:
        with self._lock:
            agent = self._agent
            if agent is None or self._busy is not None:
                return None
            self._busy = AgentState.STOPPING

        def work() -> None:
            try:
                # The agent seals the open window and part before returning.
                agent.stop(timeout=self._stop_timeout)
            except Exception as error:
                log.exception("stopping the agent failed")
                self._set_notice(f"stop failed: {error}; see the log file")
            with self._lock:
                self._busy = None
            self.refresh()

        return self._spawn("stop", work)

    def download(self) -> threading.Thread | None:
        """Download the model bundle (first run of a slim build), showing its progress."""
        fetch = self._download_model
        with self._lock:
            if fetch is None or self._downloading is not None or self._quitting.is_set():
                return None
            self._downloading = "Downloading the model…"
            self._notice = None

        def on_progress(step: Progress) -> None:
            if step.total:
                line = (
                    f"Downloading the model… {step.done * 100 // step.total} % "
                    f"of {step.total / 1e6:.0f} MB"
                )
            else:
                line = f"Downloading the model… {step.done / 1e6:.1f} MB"
            with self._lock:
                changed = line != self._downloading
                self._downloading = line
            if changed:
                self.refresh()

        def work() -> None:
            try:
                fetch(on_progress)
            except CaptaFlowError as error:
                self._set_notice(str(error))
            except Exception as error:
                log.exception("downloading the model failed")
                self._set_notice(f"model download failed: {error}; see the log file")
            with self._lock:
                self._downloading = None
            self.refresh()

        return self._spawn("download", work)

    def quit(self) -> threading.Thread:
        """Stop the agent (sealing its part), then end the tray loop."""
        self._quitting.set()

        def work() -> None:
            for worker in list(self._workers):
                if worker is not threading.current_thread():
                    worker.join()
            with self._lock:
                agent = self._agent
            if agent is not None and agent.status().state is not AgentState.STOPPED:
                try:
                    agent.stop(timeout=self._stop_timeout)
                except Exception:
                    log.exception("stopping the agent on quit failed")
            self.stopped.set()
            with self._refresh_lock:  # no refresh in flight from here on (quitting is set)
                pass
            icon = self._icon
            if icon is not None:
                icon.stop()
                if not self._loop_ended.wait(3.0):
                    _unblock_x11_loop(icon)

        return self._spawn("quit", work)

    def _open(self, action: Action) -> None:
        handler = self._handlers[action]

        def work() -> None:
            try:
                handler()
            except CaptaFlowError as error:
                self._set_notice(str(error))
            except Exception as error:
                log.exception("%s failed", action)
                self._set_notice(f"{action.value.replace('_', ' ')} failed: {error}")
            self.refresh()

        self._spawn(action.value, work)

    def _set_notice(self, text: str) -> None:
        with self._lock:
            self._notice = text
        log.warning("%s", text)

    def dispatch(self, action: Action) -> None:
        """What a click on a menu entry does (never blocks the caller)."""
        if action is Action.START:
            self.start_agent()
        elif action is Action.STOP:
            self.stop_agent()
        elif action is Action.DOWNLOAD_MODEL:
            self.download()
        elif action is Action.QUIT:
            self.quit()
        else:
            self._open(action)
        self.refresh()

    # -- pystray ----------------------------------------------------------------------------

    def _image(self, key: tuple[IconState, str | None]) -> Image.Image:
        if key not in self._icon_cache:
            self._icon_cache[key] = render_icon(*key)
        return self._icon_cache[key]

    def _menu_items(self) -> Iterator[Any]:
        import pystray

        for entry in self.entries():
            if entry.separator:
                yield pystray.Menu.SEPARATOR
            elif entry.action is None:
                yield pystray.MenuItem(entry.text, None, enabled=False)
            else:
                # A partial, not a lambda: pystray counts a function's parameters to decide
                # how to call it and refuses one with a default argument (three of them).
                yield pystray.MenuItem(
                    entry.text,
                    functools.partial(self._on_menu_item, entry.action),
                    enabled=entry.enabled,
                    default=entry.default,
                )

    def _on_menu_item(self, action: Action, _icon: object = None, _item: object = None) -> None:
        self.dispatch(action)

    def refresh(self) -> None:
        """Bring icon, tooltip and menu up to date with the agent (any thread)."""
        with self._refresh_lock:
            if self._quitting.is_set() and self.stopped.is_set():
                return
            self._refresh_unlocked()

    def _refresh_unlocked(self) -> None:
        icon = self._icon
        if icon is None:
            return
        status = self.snapshot()
        has_model, problem = self._checks()
        key = icon_for(status, has_model, problem)
        try:
            if key != self._shown_icon:
                icon.icon = self._image(key)
                self._shown_icon = key
            title = self.tooltip()
            if title != icon.title:
                icon.title = title
            icon.update_menu()
        except Exception:
            # The tray host can vanish (Explorer restarting); the next tick tries again.
            log.debug("tray refresh failed", exc_info=True)

    def _refresh_loop(self) -> None:
        while not self._quitting.wait(self._refresh_seconds):
            self.refresh()

    def _on_ready(self, icon: Any) -> None:
        icon.visible = True
        _stop_on_signals_in_glib(icon, self.quit)
        threading.Thread(target=self._refresh_loop, name="tray-refresh", daemon=True).start()
        has_model, problem = self._checks()
        if not has_model and self._download_model is not None:
            # First run of a build without a model: fetch the published one right away.
            self.download()
        message = (
            (NO_MODEL_DOWNLOAD_LINE if self._download_model else NO_MODEL_LINE)
            if not has_model
            else problem
        )
        if message and getattr(icon, "HAS_NOTIFICATION", False):
            try:
                icon.notify(message, APP_TITLE)
            except Exception:
                log.debug("notification failed", exc_info=True)
        self.refresh()
        self.ready.set()

    def run(self) -> None:
        """Show the icon and block until Quit (call on the main thread).

        SIGINT (Ctrl-C) and SIGTERM quit the same way the menu's Quit does: the agent
        stops and seals its part first.
        """
        backend = choose_backend()
        import pystray

        from agent.tray_backends import adapt_icon

        log.info("tray backend: %s", backend)
        has_model, problem = self._checks()
        key = icon_for(self.snapshot(), has_model, problem)
        self._shown_icon = key
        self._icon = adapt_icon(
            pystray.Icon(
                "captaflow",
                icon=self._image(key),
                title=self.tooltip(),
                menu=pystray.Menu(self._menu_items),
            )
        )
        self.has_menu = bool(getattr(self._icon, "HAS_MENU", True))
        restore = _stop_on_signals(self.quit)
        try:
            self._icon.run(setup=self._on_ready)
        finally:
            self._quitting.set()
            self._loop_ended.set()
            restore()


# ---------------------------------------------------------------------------------------------
# Backends, signals, the status page.


def choose_backend(env: dict[str, str] | None = None) -> str:
    """Pick pystray's backend before pystray is imported (it picks at import time).

    Windows and macOS have one each. On Linux, pystray tries AppIndicator, then GTK, then
    its bare X11 backend, which has no menu. AppIndicator is right where a StatusNotifier
    host runs (KDE, GNOME with the AppIndicator extension, most panels); elsewhere (an
    XEmbed tray such as trayer, stalonetray, xfce4-panel's systray) GTK's status icon shows
    the menu on a right click. `PYSTRAY_BACKEND` set by the user always wins.
    """
    environ = os.environ if env is None else env
    if sys.platform in ("win32", "darwin"):
        return sys.platform
    chosen = environ.get("PYSTRAY_BACKEND")
    if chosen:
        return chosen
    chosen = _linux_backend()
    environ["PYSTRAY_BACKEND"] = chosen
    return chosen


def _linux_backend() -> str:
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk
    except (ImportError, ValueError):
        log.info(
            "PyGObject/GTK is not available: the tray has no menu (left click opens the "
            "status page)"
        )
        return "xorg"
    if not Gtk.init_check()[0]:
        return "xorg"
    if _status_notifier_host() and _has_appindicator():
        return "appindicator"
    return "gtk"


def _has_appindicator() -> bool:
    import gi

    for name in ("AyatanaAppIndicator3", "AppIndicator3"):
        try:
            gi.require_version(name, "0.1")
            return True
        except ValueError:
            continue
    return False


def _status_notifier_host() -> bool:
    """Whether a StatusNotifierWatcher owns its name on the session bus (a tray that shows
    AppIndicator icons)."""
    try:
        from gi.repository import Gio, GLib

        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        reply = bus.call_sync(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            GLib.Variant("(s)", ("org.kde.StatusNotifierWatcher",)),
            GLib.VariantType("(b)"),
            Gio.DBusCallFlags.NONE,
            1000,
            None,
        )
        return bool(reply.unpack()[0])
    except Exception:
        return False


def _quit_signals() -> list[int]:
    import signal

    names = ["SIGINT", "SIGTERM", "SIGBREAK"]  # SIGBREAK: Ctrl-Break on Windows
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def _stop_on_signals(quit_app: Callable[[], object]) -> Callable[[], None]:
    """SIGINT and SIGTERM call `quit_app` (main thread only); returns the undo."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %s: quitting", signum)
        quit_app()

    for number in _quit_signals():
        try:
            previous[number] = signal.signal(number, handler)
        except (OSError, ValueError):
            continue

    def restore() -> None:
        for number, old in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(number, old)

    return restore


def _stop_on_signals_in_glib(icon: Any, quit_app: Callable[[], object]) -> None:
    """GTK backends: pystray resets SIGINT to the default (kill) when its loop starts, and
    a Python handler only runs once GLib's loop wakes; GLib's own signal source does both."""
    if "pystray._gtk" not in type(icon).__module__ and "appindicator" not in type(icon).__module__:
        return
    try:
        from gi.repository import GLib
    except ImportError:
        return

    def on_signal(*_args: object) -> bool:
        log.info("signal: quitting")
        quit_app()
        return True  # keep the source: a second Ctrl-C while stopping is harmless

    for number in _quit_signals():
        with contextlib.suppress(Exception):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, number, on_signal)


def status_page_up(url: str = STATUS_PAGE_URL, timeout: float = 0.3) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout):
            return True
    except OSError:
        return False


def open_status_page(open_report: Callable[[], object], url: str = STATUS_PAGE_URL) -> None:
    """The status page (agent/webui.py, served while the agent runs), else the latest report."""
    if status_page_up(url):
        import webbrowser

        if webbrowser.open(url):
            return
        shown = url.split("#", 1)[0]
        raise CaptaFlowError(f"no browser opened; open {shown} yourself")
    open_report()


def dashboard_for(settings: Settings) -> str | None:
    """The web UI's dashboard address for these settings (with the install's token after
    '#'), or None when the web UI is off (ui.port = 0)."""
    ui = getattr(settings, "ui", None)
    port = getattr(ui, "port", None)
    if not port:
        return None
    try:
        from agent.webui import dashboard_url, ui_token

        return dashboard_url(int(port), ui_token(settings.paths.data_dir))
    except (ImportError, OSError):
        return f"http://127.0.0.1:{port}/"


# ---------------------------------------------------------------------------------------------
# The app as `captaflow` (no arguments) starts it.


def _unblock_x11_loop(icon: Any) -> None:
    """End pystray's X11 loop when `stop()` did not.

    Its loop waits for the DestroyNotify of its own window; once a tray manager has
    reparented the window that event does not always arrive, and `stop()` then leaves the
    main thread blocked in `next_event()` for good. Closing the display connection makes
    that call fail, which pystray's loop catches and returns from. Other backends have no
    `_display` and never need this.
    """
    display = getattr(icon, "_display", None)
    if display is None:
        return
    log.debug("the X11 tray loop did not stop; closing its display connection")
    # pystray's loop logs the closed connection as "An error occurred in the main loop" with
    # a traceback; here that is the way out, not an error, so keep it off the console.
    pystray_log = getattr(icon, "_log", None)
    if isinstance(pystray_log, logging.Logger):
        pystray_log.disabled = True
    # The icon closes its display again when it is garbage-collected (`Icon.__del__`); a
    # second close raises, which Python would print at exit as "Exception ignored in".
    close = display.close

    def close_once() -> None:
        with contextlib.suppress(Exception):
            close()

    try:
        display.close = close_once
        close()
    except Exception:
        log.debug("closing the X11 display failed", exc_info=True)


def run_tray(
    settings: Settings,
    *,
    debug: bool = False,
    open_report: Callable[[], object] | None = None,
    overrides: Mapping[str, Any] | None = None,
    agent_factory: Callable[[], AgentLike] | None = None,
) -> int:
    """Lock, log, show the tray until Quit. Returns the exit status.

    Each Start re-reads the settings file (with the same command-line `overrides`), so what
    the streamer changed through Settings applies on the next Start without a restart.
    `open_report` defaults to building the latest session's report and opening it.
    """
    from agent.config import load_settings, setup_problem, write_default_config
    from agent.logs import setup_logging
    from agent.single_instance import acquire_or_explain, agent_folders

    # The spool and journal folders too: one owner each, even when spool.dir is elsewhere.
    lock, message = acquire_or_explain(settings.paths.lock_file, also=agent_folders(settings))
    if lock is None:
        print(message, file=sys.stderr)
        return 0
    hide_own_console()
    with lock:
        setup_logging(settings, debug=debug)
        write_default_config(settings.config_path)
        again = {"data_dir": settings.paths.data_dir, **(overrides or {})}
        current = {"settings": settings}

        def fresh_settings() -> Settings:
            current["settings"] = load_settings(settings.config_path, again)
            return current["settings"]

        def default_factory() -> AgentLike:
            from agent.runtime import Agent

            return Agent(fresh_settings())

        def problem() -> str | None:
            try:
                return setup_problem(fresh_settings())
            except CaptaFlowError as error:
                return str(error)

        report_opener = open_report or (lambda: open_latest_report(current["settings"]))

        def open_status() -> None:
            url = dashboard_for(current["settings"])
            if url is None:
                report_opener()
            else:
                open_status_page(report_opener, url)

        app = TrayApp(
            agent_factory or default_factory,
            open_report=report_opener,
            open_data_folder=lambda: open_with_default_app(
                _made(current["settings"].paths.data_dir)
            ),
            open_settings=lambda: open_with_default_app(
                write_default_config(current["settings"].config_path)
            ),
            has_model=lambda: model_present(current["settings"].model.dir),
            setup_problem=problem,
            test_model=lambda: bundle_test_label(current["settings"].model.dir),
            open_status=open_status,
            download_model=lambda progress: _download_model(fresh_settings(), progress),
        )
        log.info("tray starting; settings %s", current["settings"].redacted())
        app.run()
    return 0


def _download_model(settings: Settings, progress: Callable[[Progress], None]) -> Path:
    """The slim build's first run: the bundle pinned in the settings, checked, installed."""
    from agent.model_download import download_bundle, model_destination

    bundle = download_bundle(
        settings.model.bundle_url,
        model_destination(settings),
        sha256=settings.model.bundle_sha256,
        progress=progress,
    )
    log.info("model downloaded to %s", bundle.path)
    return bundle.path


def open_latest_report(settings: Settings) -> Path:
    """Build the report of the latest session into the reports folder and open it."""
    from agent.journal import sample_source
    from agent.model_download import model_labels
    from agent.report import build_report

    out = build_report(
        settings.spool.dir,
        latest=True,
        displayed=tuple(settings.display.emotions),
        samples=sample_source(settings.journal_path),
        out=_made(settings.paths.reports_dir) / "latest.html",
        model_labels=model_labels(settings.model.dir),
    )
    open_with_default_app(out)
    return out


def hide_own_console() -> bool:
    """On Windows, hide the console window when it exists only for this process.

    The executable is built with a console so the command line works from a terminal; a
    double-click on it opens a console of its own, which the tray does not need. A console
    shared with a terminal (more than one process attached) is left alone.
    """
    if sys.platform != "win32":
        return False
    import ctypes

    windll = getattr(ctypes, "windll")  # noqa: B009 (Windows-only attribute)
    kernel32 = windll.kernel32
    window = kernel32.GetConsoleWindow()
    processes = (ctypes.c_uint * 2)()
    if not window or kernel32.GetConsoleProcessList(processes, 2) != 1:
        return False
    windll.user32.ShowWindow(window, 0)  # SW_HIDE
    return True


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
