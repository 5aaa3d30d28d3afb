"""Loopback fakes of Twitch's Helix stream markers and OAuth device code endpoints.

Built from Twitch's published API reference, not from CaptaFlow's client:
- Create Stream Marker, https://dev.twitch.tv/docs/api/reference/#create-stream-marker
  (POST /helix/streams/markers; Authorization: Bearer, Client-Id; JSON {user_id, description};
  description at most 140 characters; scope channel:manage:broadcast; 404 when not live;
  429 with Ratelimit-Limit / Ratelimit-Remaining / Ratelimit-Reset,
  https://dev.twitch.tv/docs/api/guide/#twitch-rate-limits).
- Device code grant flow,
  https://dev.twitch.tv/docs/authentication/getting-tokens-oauth/#device-code-grant-flow
  (POST /oauth2/device with client_id and scopes; POST /oauth2/token with client_id, scopes,
  device_code, grant_type=urn:ietf:params:oauth:grant-type:device_code; 400
  {"status": 400, "message": "authorization_pending"} until approved).
- Validating tokens, https://dev.twitch.tv/docs/authentication/validate-tokens/
  (GET /oauth2/validate with Authorization: OAuth <token>).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CLIENT_ID = "fakeclientid0123456789abcdef"
TOKEN = "faketoken0123456789abcdefghij"
USER_ID = "141981764"
LOGIN = "twitchdev"
DEVICE_CODE = "fake-device-code-ZZZZ"
USER_CODE = "ABCDEFGH"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class FakeTwitch:
    """One server for both hosts: /helix/... (api.twitch.tv) and /oauth2/... (id.twitch.tv)."""

    scopes: list[str] = field(default_factory=lambda: ["channel:manage:broadcast", "chat:read"])
    live: bool = True
    pending_polls: int = 2  # answers of authorization_pending before the token
    interval: int = 5  # the polling interval Twitch asks for
    rate_limit: int = 800  # points a minute (Twitch's default bucket)
    seen: list[Seen] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    _spent: list[float] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeTwitch:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(
                self, status: int, body: object, headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> Seen:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.time(),
                )
                with fake._lock:
                    fake.seen.append(seen)
                return seen

            def do_GET(self) -> None:
                seen = self._record()
                if seen.path != "/oauth2/validate":
                    self._answer(404, {"status": 404, "message": "not found"})
                elif seen.headers.get("authorization") != f"OAuth {TOKEN}":
                    self._answer(401, {"status": 401, "message": "invalid access token"})
                else:
                    self._answer(
                        200,
                        {
                            "client_id": CLIENT_ID,
                            "login": LOGIN,
                            "scopes": fake.scopes,
                            "user_id": USER_ID,
                            "expires_in": 5520838,
                        },
                    )

            def do_POST(self) -> None:
                seen = self._record()
                if seen.path == "/helix/streams/markers":
                    self._marker(seen)
                elif seen.path == "/oauth2/device":
                    self._device(seen)
                elif seen.path == "/oauth2/token":
                    self._token(seen)
                else:
                    self._answer(404, {"status": 404, "message": "not found"})

            def _marker(self, seen: Seen) -> None:
                now = time.time()
                with fake._lock:
                    fake._spent = [t for t in fake._spent if now - t < 60]
                    over = len(fake._spent) >= fake.rate_limit
                    if not over:
                        fake._spent.append(now)
                    remaining = fake.rate_limit - len(fake._spent)
                limits = {
                    "Ratelimit-Limit": str(fake.rate_limit),
                    "Ratelimit-Remaining": str(max(0, remaining)),
                    "Ratelimit-Reset": str(int(now) + 60),
                }
                if over:
                    self._answer(429, {"error": "Too Many Requests", "status": 429}, limits)
                    return
                if seen.headers.get("authorization") != f"Bearer {TOKEN}":
                    self._answer(401, {"error": "Unauthorized", "status": 401}, limits)
                    return
                if seen.headers.get("client-id") != CLIENT_ID:
                    self._answer(401, {"error": "Unauthorized", "status": 401}, limits)
                    return
                if "channel:manage:broadcast" not in fake.scopes:
                    self._answer(401, {"error": "Unauthorized", "status": 401}, limits)
                    return
                try:
                    body = json.loads(seen.body)
                except ValueError:
                    self._answer(400, {"error": "Bad Request", "status": 400}, limits)
                    return
                description = body.get("description", "")
                if body.get("user_id") != USER_ID or len(description) > 140:
                    self._answer(400, {"error": "Bad Request", "status": 400}, limits)
                    return
                if not fake.live:
                    self._answer(
                        404, {"error": "Not Found", "status": 404, "message": "user not live"}
                    )
                    return
                marker = {
                    "id": f"{len(fake.markers) + 1:032x}",
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                    "position_seconds": int(now - fake.started),
                    "description": description,
                }
                with fake._lock:
                    fake.markers.append(marker)
                self._answer(200, {"data": [marker]}, limits)

            def _device(self, seen: Seen) -> None:
                form = urllib.parse.parse_qs(seen.body.decode())
                if form.get("client_id") != [CLIENT_ID]:
                    self._answer(400, {"status": 400, "message": "invalid client"})
                    return
                self._answer(
                    200,
                    {
                        "device_code": DEVICE_CODE,
                        "expires_in": 1800,
                        "interval": fake.interval,
                        "user_code": USER_CODE,
                        "verification_uri": (
                            f"https://www.twitch.tv/activate?public=true&device-code={USER_CODE}"
                        ),
                    },
                )

            def _token(self, seen: Seen) -> None:
                form = urllib.parse.parse_qs(seen.body.decode())
                grant = "urn:ietf:params:oauth:grant-type:device_code"
                if form.get("grant_type") != [grant] or form.get("client_id") != [CLIENT_ID]:
                    self._answer(400, {"status": 400, "message": "invalid grant"})
                    return
                if form.get("device_code") != [DEVICE_CODE]:
                    self._answer(400, {"status": 400, "message": "invalid device code"})
                    return
                with fake._lock:
                    if fake.pending_polls > 0:
                        fake.pending_polls -= 1
                        pending = True
                    else:
                        pending = False
                if pending:
                    self._answer(400, {"status": 400, "message": "authorization_pending"})
                    return
                self._answer(
                    200,
                    {
                        "access_token": TOKEN,
                        "expires_in": 14124,
                        "refresh_token": "fakerefresh",
                        "scope": form.get("scopes", [""])[0].split(),
                        "token_type": "bearer",
                    },
                )

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
