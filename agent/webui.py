"""The local web UI: a live dashboard, an OBS overlay, a JSON API and a WebSocket of live pushes.

Served by the agent on 127.0.0.1 only (setting ``ui.port``, default 8730; 0 turns it off), with
the WebSocket library the agent already uses: its asyncio server answers plain HTTP requests in
``process_request`` and upgrades ``/live`` to a WebSocket.

    /                  the dashboard (the tray opens it with the install's token after ``#``)
    /overlay           the OBS browser-source overlay (no token: it only reads)
    /api/status        the agent's status snapshot (JSON)
    /api/readings      readings with ``seq > since`` (``?since=SEQ&limit=N``, or ``?last=N``)
    /api/moments       the session's live moments so far
    /live              WebSocket: pushes {"type": "reading" | "moment" | "status" | "session"}
    /report            the full HTML report of the session (built on request)
    /static/...        the pages' scripts and styles (package data in agent/web/)

Security (guarantee 9 of DESIGN.md):

- the server binds 127.0.0.1 and answers only peers at 127.0.0.1 or ::1 (`client_allowed`);
- the Host header must name the loopback with this port: ``127.0.0.1:PORT``, ``localhost:PORT``
  or ``[::1]:PORT`` (`host_allowed`); anything else (a DNS-rebinding page, whose Host is its own
  name) gets 403 before any data;
- a WebSocket's Origin, when the client sends one (browsers do), must be such a loopback origin
  too (`origin_allowed`): a page on the web cannot read the live feed;
- what changes state (start, stop, twitch markers on/off) is a message on ``/live`` that carries
  the per-install token (`ui_token`: random, in the data folder, readable by the user only);
  the server compares it in constant time and never serves it; no page or answer holds a
  secret (the status holds no token, key or password by construction).

The agent's thread calls the `LiveHub` listener (``on_reading``, ``on_status``); the hub runs
the live moments (`agent.moments.LiveMoments`), hands new moments to the Twitch marker poster
when that is on, and forwards everything to the web server's own event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import json
import logging
import math
import os
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from agent.moments import (
    LiveMoments,
    Moment,
    MomentEvent,
    MomentEventKind,
    describe,
    kind_name,
)
from agent.vocab import DEFAULT_DISPLAYED, LABELS, AgentStatus, Reading

log = logging.getLogger("captaflow.webui")

DEFAULT_PORT = 8730
TOKEN_FILE = "ui_token"
MAX_READINGS = 50_000  # kept for the whole-session chart (a day at one reading every 2 s)
MAX_LIMIT = 100_000
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
ACTIONS = ("start", "stop", "markers_on", "markers_off")


# ------------------------------------------------------------------------------ the rules


def client_allowed(peer: object) -> bool:
    """Only this PC's loopback address may talk to the UI (127.0.0.2... is refused too)."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    return isinstance(host, str) and host in LOOPBACK_PEERS


def host_allowed(host: str | None, port: int) -> bool:
    """The Host header names the loopback and this port (no DNS rebinding)."""
    if not host:
        return False
    return host.strip().lower() in {f"{name}:{port}" for name in LOOPBACK_NAMES}


def origin_allowed(origin: str | None, port: int) -> bool:
    """No Origin (not a browser), or a page of this UI itself."""
    if origin is None:
        return True
    return origin.strip().lower() in {f"http://{name}:{port}" for name in LOOPBACK_NAMES}


def token_ok(given: object, expected: str) -> bool:
    return isinstance(given, str) and bool(given) and hmac.compare_digest(given, expected)


def ui_token(data_dir: Path) -> str:
    """The per-install token: made once (random, 256 bits), kept in the data folder."""
    path = Path(data_dir) / TOKEN_FILE
    with contextlib.suppress(OSError):
        existing = path.read_text(encoding="ascii").strip()
        if len(existing) >= 32:
            return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    os.replace(tmp, path)
    return token


def dashboard_url(port: int, token: str | None = None) -> str:
    """What the tray opens: the token rides after '#', so it never reaches a request line."""
    return f"http://127.0.0.1:{port}/" + (f"#token={token}" if token else "")


def overlay_url(
    port: int,
    *,
    layout: str = "bars",
    emotions: Iterable[str] = ("joy", "anger", "surprise"),
    theme: str = "dark",
    smoothing: float = 0.3,
) -> str:
    query = urllib.parse.urlencode(
        {
            "layout": layout,
            "emotions": ",".join(emotions),
            "theme": theme,
            "smoothing": f"{smoothing:g}",
        }
    )
    return f"http://127.0.0.1:{port}/overlay?{query}"


# ------------------------------------------------------------------------------ payloads


def _finite(value: float, digits: int = 4) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def reading_json(reading: Reading, seq: int, stream_start: float) -> dict[str, Any]:
    duration = max(reading.window_end - reading.window_start, 1.0)
    return {
        "seq": seq,
        "session_id": reading.session_id,
        "platform": reading.platform,
        "channel": reading.channel,
        "reading_seq": reading.seq,
        "start": round(reading.window_start, 3),
        "end": round(reading.window_end, 3),
        "vod_seconds": round(reading.window_start - stream_start, 3),
        "messages": reading.message_count,
        "scored": reading.scored_count,
        "rate_per_min": round(60.0 * reading.message_count / duration, 2),
        "scores": {label: round(s, 4) for label, s in zip(LABELS, reading.scores, strict=True)},
        "dominant": reading.dominant,
    }


def moment_json(moment: Moment, state: str) -> dict[str, Any]:
    return {
        "id": f"{moment.session_id}/{moment.platform}/{moment.kind}/{moment.start:.3f}",
        "state": state,  # "started" (still rising), "updated", "ended"
        "session_id": moment.session_id,
        "platform": moment.platform,
        "channel": moment.channel,
        "kind": moment.kind,
        "name": kind_name(moment.kind),
        "label": describe(moment),
        "vod_time": moment.vod_time,
        "vod_seconds": round(moment.start_offset, 3),
        "peak_vod_time": moment.peak_vod_time,
        "start": round(moment.start, 3),
        "end": round(moment.end, 3),
        "value": _finite(moment.value),
        "baseline": _finite(moment.baseline),
        "ratio": _finite(moment.ratio) if moment.ratio is not None else None,
        "z": _finite(moment.z, 2),
        "readings": moment.readings,
    }


def model_json(model_dir: Path | str | None) -> dict[str, Any] | None:
    """The model the readings come from: its id and, for a stand-in, the bundle manifest's
    `test_model` label ("tiny random model"; None for the real export). No path goes out."""
    if model_dir is None:
        return None
    from agent.bundle import MANIFEST_FILE, Manifest

    try:
        data = json.loads((Path(model_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
        manifest = Manifest.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the agent itself says what is wrong with the bundle
    return {"id": manifest.source_model_id, "test_model": manifest.test_model}


def duplicates_note(
    status: Mapping[str, Any], readings: int, earlier_session: str | None = None
) -> str | None:
    """Why the dashboard shows no readings: the chat so far was recorded before (a second
    replay of the same file). None unless duplicates dominate and no reading came."""
    new = int(status.get("messages_total") or 0)  # new messages: duplicates not counted
    dups = int(status.get("duplicates_total") or 0)
    if readings or int(status.get("readings_total") or 0) or dups == 0 or dups < new:
        return None
    what = f"all {dups}" if new == 0 else f"{dups} of {dups + new}"
    session = earlier_session or "ID"
    return (
        f"{what} messages so far were already recorded (duplicates) — re-score with "
        f"captaflow replay --session {session}"
    )


def status_json(status: AgentStatus) -> dict[str, Any]:
    """The snapshot as plain data; AgentStatus holds no secret, and only these fields go out.
    The chat rate has one definition: messages arriving in the last 10 s (the agent's
    `messages_per_second`), also given per minute for the dashboard's card."""
    return {
        "state": str(status.state),
        "source": {"state": str(status.source.state), "detail": status.source.detail},
        "session_id": status.session_id,
        "channel": status.channel,
        "messages_per_second": round(status.messages_per_second, 2),
        "messages_per_minute": round(60.0 * status.messages_per_second, 1),
        "messages_total": status.messages_total,
        "duplicates_total": status.duplicates_total,
        "readings_total": status.readings_total,
        "parts_waiting": status.parts_waiting,
        "upload_state": status.upload_state,
        "dominant": status.dominant,
        "problem": status.problem,
    }


# --------------------------------------------------------------------------------- state


@dataclass
class LiveState:
    """What the web UI knows: the session's readings and moments, the last status. Owned by
    the web server's loop thread."""

    displayed: tuple[str, ...] = DEFAULT_DISPLAYED
    session_id: str | None = None
    stream_start: float | None = None
    seq: int = 0
    readings: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_READINGS))
    moments: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=lambda: status_json(AgentStatus()))
    markers: str = "off"
    model: dict[str, Any] | None = None
    earlier_session: str | None = None  # where the duplicates were recorded first

    def add_reading(self, reading: Reading) -> list[dict[str, Any]]:
        """The pushes this reading makes: maybe a new session, then the reading."""
        pushes: list[dict[str, Any]] = []
        if reading.session_id != self.session_id:
            self.session_id = reading.session_id
            self.stream_start = reading.window_start
            self.readings.clear()
            self.moments.clear()
            pushes.append({"type": "session", "session_id": self.session_id})
        self.seq += 1
        item = reading_json(reading, self.seq, self.stream_start or reading.window_start)
        self.readings.append(item)
        pushes.append({"type": "reading", "reading": item})
        return pushes

    def add_moment(self, event: MomentEvent) -> dict[str, Any]:
        item = moment_json(event.moment, str(event.kind))
        self.moments[item["id"]] = item
        return {"type": "moment", "moment": item}

    def since(self, seq: int, limit: int) -> list[dict[str, Any]]:
        if not self.readings or seq >= self.seq:
            return []
        first = self.readings[0]["seq"]
        skip = max(0, seq - first + 1)
        out = []
        for i in range(skip, len(self.readings)):
            out.append(self.readings[i])
            if len(out) >= limit:
                break
        return out

    def last(self, count: int) -> list[dict[str, Any]]:
        count = max(0, min(count, len(self.readings)))
        return list(self.readings)[len(self.readings) - count :]

    def status_payload(self) -> dict[str, Any]:
        return {
            **self.status,
            "session_id": self.status.get("session_id") or self.session_id,
            "stream_start": self.stream_start,
            "last_seq": self.seq,
            "displayed": list(self.displayed),
            "moments": len(self.moments),
            "twitch_markers": self.markers,
            "model": self.model,
            "duplicates_note": duplicates_note(
                self.status, len(self.readings), self.earlier_session
            ),
        }


# ---------------------------------------------------------------------------------- hub


class AgentLike(Protocol):
    """What the web UI needs of the agent (agent.runtime.Agent)."""

    on_reading: list[Callable[[Reading], None]]
    on_status: list[Callable[[AgentStatus], None]]

    def start(self) -> None: ...
    def stop(self, timeout: float = 30.0) -> None: ...
    def status(self) -> AgentStatus: ...


Push = Callable[[str, Any], None]


class LiveHub:
    """The agent-side listener: live moments, Twitch markers, forwarding to the web UI."""

    def __init__(
        self,
        *,
        displayed: Iterable[str] = DEFAULT_DISPLAYED,
        markers: Any | None = None,
        push: Push | None = None,
    ) -> None:
        self.moments = LiveMoments(displayed=displayed)
        self.markers = markers  # agent.twitch_api.MarkerPoster or None
        self.push = push
        self.markers_note = "off"  # why markers are off, when they are
        self._sessions: set[str] = set()
        # The session the duplicates were first recorded in (the agent's run stats).
        self.duplicate_sessions: Callable[[], str | None] | None = None

    def on_reading(self, reading: Reading) -> None:
        self._forward("reading", reading)
        try:
            events = self.moments.add(reading)
        except Exception:  # a bad reading never stops the readings themselves
            log.warning("live moments: reading %s skipped", reading.batch_id, exc_info=True)
            return
        self._sessions.add(reading.session_id)
        for event in events:
            self._forward("moment", event)
            if event.kind is MomentEventKind.STARTED:
                log.info("moment at %s: %s", event.moment.vod_time, describe(event.moment))
                if self.markers is not None and event.moment.platform in ("twitch", ""):
                    from agent.markers import twitch_description

                    channel = event.moment.channel or None
                    self.markers.submit(twitch_description(event.moment), channel)

    def on_status(self, status: AgentStatus) -> None:
        if str(status.state) in ("stopped", "stopping") and self._sessions:
            for event in self.moments.finish():
                self._forward("moment", event)
            self._sessions.clear()
        if status.duplicates_total and self.duplicate_sessions is not None:
            try:
                self._forward("earlier_session", self.duplicate_sessions())
            except Exception:
                log.debug("web UI: no duplicates' session", exc_info=True)
        self._forward("status", status)

    def markers_state(self) -> str:
        return self.markers_note if self.markers is None else str(self.markers.state)

    def _forward(self, kind: str, payload: Any) -> None:
        if self.push is not None:
            self.push(kind, payload)


# ------------------------------------------------------------------------------- server


def _static(name: str) -> bytes | None:
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    try:
        return resources.files("agent").joinpath("web", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, OSError):
        return None


class WebUI:
    """The HTTP + WebSocket server, on its own event loop thread."""

    def __init__(
        self,
        agent: AgentLike | None,
        *,
        port: int,
        token: str,
        displayed: Iterable[str] = DEFAULT_DISPLAYED,
        report: Callable[[str], Path] | None = None,
        hub: LiveHub | None = None,
        markers_toggle: Callable[[bool], str] | None = None,
    ) -> None:
        self.agent = agent
        self.port = port
        self._token = token
        self.state = LiveState(displayed=tuple(displayed))
        self._report = report
        self._markers_toggle = markers_toggle
        self.hub = hub
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._clients: set[Any] = set()

    def __repr__(self) -> str:  # never the token
        return f"WebUI(port={self.port})"

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def follow(
        self,
        agent: AgentLike,
        *,
        hub: LiveHub,
        report: Callable[[str], Path] | None,
        markers_toggle: Callable[[bool], str] | None,
        displayed: tuple[str, ...],
    ) -> None:
        """Serve this agent from now on (the tray's next Start makes a new one)."""
        self.agent = agent
        self.hub = hub
        self._report = report
        self._markers_toggle = markers_toggle
        self.state.displayed = displayed

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Bind and serve in a daemon thread; raises OSError when the port is taken."""
        self._thread = threading.Thread(target=self._main, name="captaflow-webui", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def push(self, kind: str, payload: Any) -> None:
        """Called on any thread (the agent's): hand the item to the server's loop."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._take, kind, payload)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._live,
            "127.0.0.1",
            self.port,
            process_request=self._process_request,
            server_header=None,
            max_size=64 * 1024,
            logger=logging.getLogger("captaflow.webui.ws"),
        ) as server:
            sockets = list(server.sockets)
            if sockets and self.port == 0:
                self.port = int(sockets[0].getsockname()[1])
            log.info("web UI on %s", dashboard_url(self.port))
            self._ready.set()
            await self._stop.wait()

    # ---- agent items, on the loop --------------------------------------------------------

    def _take(self, kind: str, payload: Any) -> None:
        pushes: list[dict[str, Any]]
        if kind == "reading":
            pushes = self.state.add_reading(payload)
        elif kind == "moment":
            pushes = [self.state.add_moment(payload)]
        elif kind == "earlier_session":
            self.state.earlier_session = payload if isinstance(payload, str) else None
            return
        elif kind == "model":
            self.state.model = payload
            return
        elif kind == "status":
            self.state.status = status_json(payload)
            if self.hub is not None:
                self.state.markers = self.hub.markers_state()
            pushes = [{"type": "status", "status": self.state.status_payload()}]
        else:
            return
        for item in pushes:
            self._broadcast(item)

    def _broadcast(self, item: Mapping[str, Any]) -> None:
        if not self._clients:
            return
        from websockets.asyncio.server import broadcast

        broadcast(self._clients, json.dumps(item))

    # ---- HTTP --------------------------------------------------------------------------

    def _process_request(self, connection: Any, request: Any) -> Any:
        if not client_allowed(connection.remote_address):
            peer = connection.remote_address
            log.warning("web UI: refused a client at %s", peer[0] if peer else "?")
            return self._response(403, "text/plain", b"only this PC may use CaptaFlow's UI\n")
        if not host_allowed(request.headers.get("Host"), self.port):
            return self._response(403, "text/plain", b"forbidden Host header\n")
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query)
        path = url.path
        if path == "/live":
            if not origin_allowed(request.headers.get("Origin"), self.port):
                return self._response(403, "text/plain", b"forbidden Origin\n")
            return None  # go on with the WebSocket handshake
        if path in ("/", "/index.html"):
            return self._page("dashboard.html")
        if path == "/overlay":
            return self._page("overlay.html")
        if path.startswith("/static/"):
            return self._page(path.removeprefix("/static/"))
        if path == "/api/status":
            return self._json(self.state.status_payload())
        if path == "/api/readings":
            return self._readings(query)
        if path == "/api/moments":
            moments = sorted(self.state.moments.values(), key=lambda m: m["start"])
            return self._json({"session_id": self.state.session_id, "moments": moments})
        if path == "/report":
            return self._report_page()
        return self._response(404, "text/plain", b"not found\n")

    def _readings(self, query: Mapping[str, list[str]]) -> Any:
        try:
            if "last" in query:
                count = int(query["last"][0])
                if count < 0:
                    raise ValueError
                items = self.state.last(min(count, MAX_LIMIT))
            else:
                since = int(query.get("since", ["0"])[0])
                limit = int(query.get("limit", [str(MAX_LIMIT)])[0])
                if since < 0 or limit < 1:
                    raise ValueError
                items = self.state.since(since, min(limit, MAX_LIMIT))
        except ValueError:
            return self._json({"error": "since, limit and last are whole numbers >= 0"}, 400)
        return self._json(
            {
                "session_id": self.state.session_id,
                "stream_start": self.state.stream_start,
                "last_seq": self.state.seq,
                "readings": items,
            }
        )

    def _report_page(self) -> Any:
        session = self.state.session_id
        if self._report is None or session is None:
            return self._response(404, "text/plain", b"no session yet: no report\n")
        try:
            path = self._report(session)
            body = Path(path).read_bytes()
        except Exception as exc:  # the report's own errors say what to do
            log.warning("web UI: report failed: %s", exc)
            return self._response(503, "text/plain", f"no report yet: {exc}\n".encode())
        return self._response(200, STATIC_TYPES[".html"], body, report=True)

    def _page(self, name: str) -> Any:
        body = _static(name)
        suffix = Path(name).suffix
        if body is None or suffix not in STATIC_TYPES:
            return self._response(404, "text/plain", b"not found\n")
        return self._response(200, STATIC_TYPES[suffix], body)

    def _json(self, payload: object, status: int = 200) -> Any:
        return self._response(status, "application/json", json.dumps(payload).encode())

    def _response(self, status: int, content_type: str, body: bytes, report: bool = False) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        # The report page has its own inline script and style; the UI's pages have none.
        script = "'self' 'unsafe-inline'" if report else "'self'"
        headers = Headers(
            {
                "Content-Type": content_type,
                "Content-Length": str(len(body)),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": (
                    f"default-src 'self'; script-src {script}; style-src {script}; "
                    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'self'"
                ),
                "Connection": "close",
            }
        )
        return Response(status, http.HTTPStatus(status).phrase, headers, body)

    # ---- the WebSocket -------------------------------------------------------------------

    async def _live(self, connection: Any) -> None:
        self._clients.add(connection)
        try:
            await connection.send(json.dumps({"type": "hello", **self._hello()}))
            async for message in connection:
                reply = await self._control(message)
                await connection.send(json.dumps(reply))
        except Exception:  # a client that vanished mid-send: nothing to do
            log.debug("web UI: a live client went away", exc_info=True)
        finally:
            self._clients.discard(connection)

    def _hello(self) -> dict[str, Any]:
        return {"status": self.state.status_payload(), "last_seq": self.state.seq}

    async def _control(self, message: object) -> dict[str, Any]:
        try:
            request = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            request = None
        if not isinstance(request, dict) or request.get("type") != "control":
            return {
                "type": "error",
                "error": 'send {"type": "control", "action": ..., "token": ...}',
            }
        action = request.get("action")
        if not token_ok(request.get("token"), self._token):
            log.warning("web UI: refused %r without the right token", str(action)[:20])
            return {"type": "error", "action": action, "error": "the install's token is needed"}
        if action not in ACTIONS:
            return {"type": "error", "action": action, "error": f"actions: {', '.join(ACTIONS)}"}
        detail = await asyncio.to_thread(self._act, str(action))
        if action.startswith("markers") and self.hub is not None:
            self.state.markers = self.hub.markers_state()
            self._broadcast({"type": "status", "status": self.state.status_payload()})
        return {"type": "control", "action": action, "ok": True, "detail": detail}

    def _act(self, action: str) -> str:
        if action in ("start", "stop"):
            if self.agent is None:
                return "no agent here"
            running = str(self.agent.status().state) in ("starting", "running", "trouble")
            if action == "start" and not running:
                self.agent.start()
            elif action == "stop" and running:
                self.agent.stop()
            return str(self.agent.status().state)
        if self._markers_toggle is None:
            return "twitch markers are not available"
        return self._markers_toggle(action == "markers_on")


# ---------------------------------------------------------------------------- assembly


def _setting(settings: Any, dotted: str, default: Any) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return default
    return value


@dataclass
class LiveServices:
    """What `attach` set up for an agent: the hub (always), the web UI (unless off)."""

    hub: LiveHub
    web: WebUI | None
    token: str | None

    @property
    def dashboard(self) -> str | None:
        return dashboard_url(self.web.port, self.token) if self.web is not None else None

    def close(self) -> None:
        """Stop the markers and the web UI (the end of a headless run)."""
        if self.hub.markers is not None:
            self.hub.markers.stop()
        if self.web is not None:
            with _SERVERS_LOCK:
                if _SERVERS.get(self.web.port) is self.web:
                    del _SERVERS[self.web.port]
            self.web.stop()


# One web UI per port and process: the tray makes a fresh agent for each Start, and the
# dashboard (with its history) follows the newest one.
_SERVERS: dict[int, WebUI] = {}
_SERVERS_LOCK = threading.Lock()


def open_markers(settings: Any, *, force: bool = False) -> Any | None:
    """The Twitch marker poster when `twitch.markers` is on (or `force`) and a token is
    there, else None."""
    if not force and not _setting(settings, "twitch.markers", False):
        return None
    from agent.secrets import read_secret
    from agent.sources.twitch import TOKEN_SECRET
    from agent.twitch_api import (
        DEFAULT_API_URL,
        DEFAULT_AUTH_URL,
        MarkerPoster,
        MarkerSettings,
    )

    client_id = str(_setting(settings, "twitch.client_id", ""))
    token = read_secret(TOKEN_SECRET)
    if not client_id or not token:
        log.warning(
            "twitch markers are on but %s: run `captaflow login twitch`",
            "no client id is set" if not client_id else "there is no Twitch token",
        )
        return None
    return MarkerPoster(
        MarkerSettings(
            client_id=client_id,
            token=token.removeprefix("oauth:"),
            api_url=str(_setting(settings, "twitch.api_url", DEFAULT_API_URL)),
            auth_url=str(_setting(settings, "twitch.auth_url", DEFAULT_AUTH_URL)),
        )
    )


def attach(agent: AgentLike, settings: Any) -> LiveServices:
    """Live moments (and Twitch markers when on) for `agent`, and the web UI unless
    ``ui.port`` is 0. A taken port is logged and the agent runs on without the UI."""
    displayed = tuple(_setting(settings, "display.emotions", DEFAULT_DISPLAYED))
    hub = LiveHub(displayed=displayed, markers=open_markers(settings))
    agent.on_reading.append(hub.on_reading)
    agent.on_status.append(hub.on_status)

    def earlier_session() -> str | None:
        counts = getattr(getattr(agent, "stats", None), "duplicate_sessions", None)
        top = counts.most_common(1) if counts else []
        return str(top[0][0]) if top else None

    hub.duplicate_sessions = earlier_session
    port = int(_setting(settings, "ui.port", DEFAULT_PORT))
    if port == 0:
        return LiveServices(hub, None, None)
    data_dir = Path(_setting(settings, "data_dir", Path(".")))
    try:
        token = ui_token(data_dir)
    except OSError as exc:
        # A full or read-only disk must not stop the agent: this run gets a token of its
        # own (the tray's link, which reads the file, then opens a dashboard without control).
        log.warning("web UI: cannot keep its token in %s (%s)", data_dir, exc.strerror or exc)
        token = secrets.token_urlsafe(32)

    def report(session_id: str) -> Path:
        from agent.journal import sample_source
        from agent.report import build_report

        out = Path(_setting(settings, "reports_dir", data_dir / "reports")) / f"{session_id}.html"
        return build_report(
            Path(_setting(settings, "spool.dir", data_dir / "spool")),
            session_id=session_id,
            displayed=displayed,
            samples=sample_source(Path(_setting(settings, "journal_path", data_dir / "j.db"))),
            out=out,
        )

    def toggle(on: bool) -> str:
        if not on:
            if hub.markers is not None:
                hub.markers.stop()
            hub.markers = None
            hub.markers_note = "off"
        elif hub.markers is None:
            hub.markers = open_markers(settings, force=True)
            if hub.markers is None:
                hub.markers_note = (
                    "off: set twitch.client_id and run `captaflow login twitch` first"
                )
        return hub.markers_state()

    with _SERVERS_LOCK:
        web = _SERVERS.get(port)
        if web is None or not web.alive:
            web = WebUI(agent, port=port, token=token, displayed=displayed)
            try:
                web.start()
            except OSError as exc:
                log.warning(
                    "web UI off: cannot listen on 127.0.0.1:%d (%s): set ui.port to a free port",
                    port,
                    exc.strerror or exc,
                )
                return LiveServices(hub, None, None)
            _SERVERS[web.port] = web
        web.follow(agent, hub=hub, report=report, markers_toggle=toggle, displayed=displayed)
    hub.push = web.push
    web.push("model", model_json(_setting(settings, "model.dir", None)))
    web.push("status", agent.status())
    return LiveServices(hub, web, token)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll `predicate` until true or `timeout` (tests and the tray)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
