"""Fakes of the chat platforms' servers, built from their published protocols.

Each is a real server on 127.0.0.1 in a thread of its own (so an in-process test and a
`python -m agent run` subprocess can both talk to it), playing the peer as its documentation
or official client describes it. Where a frame comes from is cited beside it:

* `FakeStreamerbot`: Streamer.bot's WebSocket server. Handshake and requests from
  https://docs.streamer.bot/api/websocket (guide/authentication: Hello with `info` and, with
  Authentication on, `authentication.{salt,challenge}`; Authenticate; reference "Requests":
  Subscribe / GetInfo and the `{"status": "ok"|"error", "id"}` replies) and the official client
  github.com/Streamerbot/client (StreamerbotClient.ts handshake()/authenticate(): without a
  password it sends GetInfo, whose "ok" means authentication is not enforced; response types
  `{id, status, error}` in streamerbot-response.types.ts). Docs "Configuration": Enforce off
  (default) = only privileged requests need authentication. It sends only the events a client
  subscribed to, as the docs warn ("Events are not sent unless a subscription is requested"),
  and grants only names in the client's event list (events.const.ts).
* `FakeSsnRelay`: Social Stream Ninja's relay at wss://io.socialstream.ninja, per
  github.com/steveseguin/social_stream api.md ("Connecting to the API Server": join by URL
  `/join/SESSION/IN/OUT` or by message `{"join": SESSION, "in": IN, "out": OUT}`; chat goes out
  on channel 4) and README "Message structure" / docs/event-reference.html for the rows.
* `FakeTwitchIrc`: Twitch chat over WebSocket (https://dev.twitch.tv/docs/chat/irc/:
  CAP REQ / PASS oauth:<token> / NICK, `:tmi.twitch.tv 001 <nick> :Welcome, GLHF!`, JOIN
  answered with JOIN, 353/366 and ROOMSTATE; a bad token gets
  `:tmi.twitch.tv NOTICE * :Login authentication failed`; PRIVMSG tags `id`, `user-id`,
  `tmi-sent-ts` from "IRC Tags Reference").
* `FakeTwitchValidate`: https://id.twitch.tv/oauth2/validate, per
  https://dev.twitch.tv/docs/authentication/validate-tokens/ (`GET` with `Authorization:
  OAuth <token>`; 200 `{"client_id", "login", "scopes", "user_id", "expires_in"}`; 401
  `{"status": 401, "message": "invalid access token"}`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection, serve


def iso_now(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset, tz=UTC).isoformat()


class ThreadedWebSocketServer:
    """A websockets server on 127.0.0.1 with its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        assert self._ready.wait(10), "fake server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._serve, "127.0.0.1", 0, max_size=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()

    async def _serve(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            await self.handle(ws, self.connections)
        except Exception:  # a client that goes away mid-script is no failure of the fake
            return

    async def handle(self, ws: ServerConnection, n: int) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------------------ Streamer.bot

# events.const.ts of github.com/Streamerbot/client (the part CaptaFlow can ask for).
STREAMERBOT_EVENTS: dict[str, set[str]] = {
    "Twitch": {
        "ChatMessage", "ChatMessageDeleted", "UserTimedOut", "UserBanned", "Announcement",
        "Follow", "Cheer", "Sub", "Raid", "ChatCleared",
    },
    "YouTube": {"Message", "MessageDeleted", "UserBanned", "SuperChat", "SuperSticker"},
    "Kick": {"ChatMessage", "UserTimedOut", "UserBanned", "Follow"},
    "Trovo": {"ChatMessage", "Follow"},
}  # fmt: skip

INFO = {
    "instanceId": "a3f2c1d0-1b2c-4d5e-8f90-123456789abc",
    "name": "Streamer.bot",
    "version": "0.2.5",
    "os": "windows",
    "osVersion": "10.0.19045.0",
    "mode": "ui",
    "darkMode": True,
    "source": "websocketServer",
}


def sb_event(source: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The event envelope of docs guide "Receiving Events"."""
    return {"timeStamp": iso_now(), "event": {"source": source, "type": kind}, "data": data}


def sb_twitch_chat(mid: str, text: str, user_id: str, login: str) -> dict[str, Any]:
    # Streamer.bot 0.2.5+ Twitch.ChatMessage (as read by overlays built on it, e.g. ChatRD:
    # data.messageId, data.text, data.user.{login,name,id,role,badges}, data.meta.isMe).
    return sb_event("Twitch", "ChatMessage", {
        "messageId": mid, "text": text,
        "user": {"id": user_id, "login": login, "name": login.title(), "role": 1, "badges": []},
        "meta": {"isMe": False, "firstMessage": False, "isHighlighted": False},
        "parts": [{"type": "text", "text": text}], "isReply": False, "isTest": False,
    })  # fmt: skip


def sb_youtube(kind: str, event_id: str, text: str, user_id: str, name: str) -> dict[str, Any]:
    # YouTubeMessage of youtube.types.ts (eventId, message, publishedAt, user: YouTubeUser);
    # SuperChat adds the docs' trigger variables amount, microAmount, currencyCode, tier.
    data: dict[str, Any] = {
        "eventId": event_id, "message": text, "publishedAt": iso_now(-0.5),
        "user": {"id": user_id, "name": name, "url": f"https://www.youtube.com/channel/{user_id}",
                 "profileImageUrl": "", "isModerator": False, "isOwner": False,
                 "isSponsor": False, "isVerified": False},
        "broadcast": {"id": "b1", "channelId": "UCstreamer", "tags": []},
    }  # fmt: skip
    if kind == "SuperChat":
        data.update(amount="$5.00", microAmount=5_000_000, currencyCode="USD", tier=2)
    return sb_event("YouTube", kind, data)


def sb_kick_chat(mid: str, text: str, user_id: str, login: str) -> dict[str, Any]:
    # Kick.ChatMessage: docs variables KickChat (messageId, message) and KickUser (user,
    # userName, userId); over WebSocket as data.messageId, data.text, data.user.{id,login,name}.
    return sb_event("Kick", "ChatMessage", {
        "messageId": mid, "text": text,
        "user": {"id": user_id, "login": login, "name": login.title(), "role": 1,
                 "badges": [], "profilePicture": ""},
        "isReply": False, "isTest": False,
    })  # fmt: skip


def sb_kick_banned(user_id: str, login: str) -> dict[str, Any]:
    # Kick.UserBanned: docs trigger variables (createdAt, createdById, createdByUsername,
    # createdByDisplayName, reason) plus the KickUser of the banned viewer.
    return sb_event("Kick", "UserBanned", {
        "user": {"id": user_id, "login": login, "name": login.title()},
        "createdAt": iso_now(), "createdById": "11088894", "createdByUsername": "kickmod123",
        "createdByDisplayName": "KickMod123", "reason": "You were being rude in chat",
    })  # fmt: skip


def sb_twitch_banned(user_id: str, login: str) -> dict[str, Any]:
    # TwitchUserBanned of twitch.types.ts.
    return sb_event("Twitch", "UserBanned", {
        "target_user_display": login.title(), "target_user_id": user_id,
        "target_user_login": login, "created_at": iso_now(), "created_by_user_id": "1",
        "created_by": "mod", "moderation_action": "ban", "type": "ban", "duration": 0,
        "reason": "", "isTest": False,
    })  # fmt: skip


def authentication_answer(password: str, salt: str, challenge: str) -> str:
    """The recipe of docs guide/authentication, steps 1-5, written out again here on purpose
    (not imported from CaptaFlow), as the server side computes it."""
    secret = base64.b64encode(hashlib.sha256((password + salt).encode("utf-8")).digest())
    return base64.b64encode(hashlib.sha256(secret + challenge.encode("utf-8")).digest()).decode()


class FakeStreamerbot(ThreadedWebSocketServer):
    def __init__(
        self,
        *,
        password: str | None = None,
        enforce: bool = False,
        events: list[list[dict[str, Any]]] | None = None,
        subscribe_error: str | None = None,
        send_hello: bool = True,
        hold_open: bool = True,
    ) -> None:
        super().__init__()
        self.password = password
        self.enforce = enforce
        self.events = events or []
        self.subscribe_error = subscribe_error
        self.send_hello = send_hello
        self.hold_open = hold_open
        self.requests: list[dict[str, Any]] = []
        self.granted: dict[str, list[str]] = {}

    async def handle(self, ws: ServerConnection, n: int) -> None:
        salt = base64.b64encode(uuid.uuid4().bytes).decode()
        challenge = base64.b64encode(uuid.uuid4().bytes).decode()
        if self.send_hello:
            hello: dict[str, Any] = {
                "timestamp": iso_now(),
                "session": str(uuid.uuid4()),
                "request": "Hello",
                "info": INFO,
            }
            if self.password is not None:
                hello["authentication"] = {"salt": salt, "challenge": challenge}
            await ws.send(json.dumps(hello))
        authenticated = False
        script = self.events[n - 1] if n - 1 < len(self.events) else []
        async for frame in ws:
            request = json.loads(frame)
            self.requests.append(request)
            rid = request.get("id", "")
            kind = request.get("request")
            if kind == "Authenticate":
                answer = authentication_answer(self.password or "", salt, challenge)
                authenticated = request.get("authentication") == answer
                reply: dict[str, Any] = {"status": "ok" if authenticated else "error", "id": rid}
                if not authenticated:
                    reply["error"] = "Authentication failed"
                await ws.send(json.dumps(reply))
            elif self.enforce and not authenticated:
                error = {"status": "error", "id": rid, "error": "Authentication required"}
                await ws.send(json.dumps(error))
            elif kind == "GetInfo":
                await ws.send(json.dumps({"info": INFO, "status": "ok", "id": rid}))
            elif kind == "Subscribe":
                if self.subscribe_error is not None:
                    await ws.send(
                        json.dumps({"status": "error", "id": rid, "error": self.subscribe_error})
                    )
                    continue
                asked = request.get("events") or {}
                self.granted = {
                    source: [k for k in kinds if k in STREAMERBOT_EVENTS.get(source, set())]
                    for source, kinds in asked.items()
                    if source in STREAMERBOT_EVENTS
                }
                reply = {"status": "ok", "id": rid, "events": self.granted}
                await ws.send(json.dumps(reply))
                for item in script:
                    if isinstance(item, dict) and "event" in item:
                        source, kind = item["event"]["source"], item["event"]["type"]
                        if kind not in self.granted.get(source, []):
                            continue  # not subscribed: Streamer.bot does not send it
                    await ws.send(item if isinstance(item, str | bytes) else json.dumps(item))
                if not self.hold_open:
                    ws.transport.abort()  # a network failure: no close frame
                    return


# ---------------------------------------------------------------------------- Social Stream


def ssn_row(n: int, text: str, *, type_: str = "youtube", **extra: Any) -> dict[str, Any]:
    # README "Message structure" keys; timestamp in ms as the extension sends it.
    row: dict[str, Any] = {
        "chatname": f"Viewer {n}", "chatmessage": text, "chatimg": "", "type": type_,
        "userid": f"UC{n:04d}", "id": n, "timestamp": int(time.time() * 1000),
        "hasDonation": "", "membership": "", "textonly": False,
    }  # fmt: skip
    row.update(extra)
    return row


class FakeSsnRelay(ThreadedWebSocketServer):
    """Sends `rows` to a client joined to `session` on IN channel 4, by either style."""

    def __init__(self, session: str, rows: list[Any]) -> None:
        super().__init__()
        self.session = session
        self.rows = rows
        self.joins: list[Any] = []  # ("path", path) or ("message", the join object)

    async def handle(self, ws: ServerConnection, n: int) -> None:
        path = ws.request.path if ws.request is not None else "/"
        parts = [p for p in path.split("/") if p]
        joined: tuple[str, int] | None = None
        if len(parts) >= 2 and parts[0] == "join":
            self.joins.append(("path", path))
            joined = (parts[1], int(parts[2]) if len(parts) > 2 else 1)
        else:
            message = json.loads(await ws.recv())
            self.joins.append(("message", message))
            joined = (str(message.get("join")), int(message.get("in", 1)))
        if joined != (self.session, 4):
            await ws.wait_closed()  # another room or channel: nothing ever arrives
            return
        for row in self.rows:
            await ws.send(row if isinstance(row, str | bytes) else json.dumps(row))
        await ws.wait_closed()


# ------------------------------------------------------------------------------------ Twitch


def irc_privmsg(n: int, text: str, channel: str = "streamer", *, ts_ms: int | None = None) -> str:
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    return (
        f"@badge-info=;badges=;color=;display-name=Viewer{n};emotes=;id=msg-{n};mod=0;"
        f"room-id=1;subscriber=0;tmi-sent-ts={ts};turbo=0;user-id={1000 + n};user-type= "
        f":viewer{n}!viewer{n}@viewer{n}.tmi.twitch.tv PRIVMSG #{channel} :{text}\r\n"
    )


class FakeTwitchIrc(ThreadedWebSocketServer):
    def __init__(self, channel: str, lines: list[str], tokens: dict[str, str]) -> None:
        super().__init__()
        self.channel = channel
        self.lines = lines
        self.tokens = tokens  # accepted token (without "oauth:") -> its login
        self.received: list[list[str]] = []

    async def handle(self, ws: ServerConnection, n: int) -> None:
        seen: list[str] = []
        self.received.append(seen)
        token: str | None = None
        nick = ""
        async for frame in ws:
            for line in str(frame).split("\r\n"):
                if not line:
                    continue
                seen.append(line)
                if line.startswith("CAP REQ"):
                    caps = line.split(":", 1)[1]
                    await ws.send(f":tmi.twitch.tv CAP * ACK :{caps}\r\n")
                elif line.startswith("PASS "):
                    token = line[5:].removeprefix("oauth:")
                elif line.startswith("NICK "):
                    nick = line[5:]
                    anonymous = token is None and nick.startswith("justinfan")
                    if not anonymous and self.tokens.get(token or "") != nick:
                        await ws.send(":tmi.twitch.tv NOTICE * :Login authentication failed\r\n")
                        await ws.close()
                        return
                    await ws.send(f":tmi.twitch.tv 001 {nick} :Welcome, GLHF!\r\n")
                elif line.startswith("JOIN #"):
                    c = self.channel
                    await ws.send(
                        f":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #{c}\r\n"
                        f":{nick}.tmi.twitch.tv 353 {nick} = #{c} :{nick}\r\n"
                        f":{nick}.tmi.twitch.tv 366 {nick} #{c} :End of /NAMES list\r\n"
                        f"@emote-only=0;room-id=1 :tmi.twitch.tv ROOMSTATE #{c}\r\n"
                    )
                    for chat in self.lines:
                        await ws.send(chat)
                elif line.startswith("PING"):
                    await ws.send("PONG :tmi.twitch.tv\r\n")


class FakeTwitchValidate:
    """https://id.twitch.tv/oauth2/validate on 127.0.0.1 (http.server in a thread)."""

    def __init__(self, tokens: dict[str, dict[str, Any]], fail_first: int = 0) -> None:
        self.tokens = tokens  # valid token -> {"login", "scopes", "expires_in"}
        self.calls: list[str] = []
        self.fail_first = fail_first  # answer this many requests 503, as an outage would
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                fake.calls.append(auth)
                token = auth.removeprefix("OAuth ")
                info = fake.tokens.get(token) if auth.startswith("OAuth ") else None
                if len(fake.calls) <= fake.fail_first:
                    body: dict[str, Any] = {"status": 503, "message": "Service Unavailable"}
                    status = 503
                elif info is None:
                    body = {"status": 401, "message": "invalid access token"}
                    status = 401
                else:
                    body = {"client_id": "wbmytr93xzw8zbg0p1izqyzzc5mbiz", "user_id": "141981764",
                            **info}  # fmt: skip
                    status = 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/validate"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeTwitchValidate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
