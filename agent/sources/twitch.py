"""Twitch chat over WebSocket: `irc.TwitchChatProtocol` in the shared link shell.

All chat logic (login, PING/PONG, keepalive deadlines, parsing) lives in the sans-I/O protocol
object; connecting, reading, backpressure and retrying live in `agent.sources.link`. This
module adapts one to the other (`TwitchSession`) and handles the token:

* anonymous read-only login by default (`justinfan<digits>`, no token needed);
* with a token (`CAPTAFLOW_TWITCH_TOKEN` or the keyring's `twitch_token`), before the first
  connection it asks Twitch's validation endpoint (`validate_url`, default
  https://id.twitch.tv/oauth2/validate; a setting so tests point it at 127.0.0.1) who the
  token belongs to, its scopes and its expiry (https://dev.twitch.tv/docs/authentication/
  validate-tokens/: `GET` with `Authorization: OAuth <token>`; 200 gives `{"client_id",
  "login", "scopes", "user_id", "expires_in"}`, 401 `{"status": 401, "message": "invalid
  access token"}`). The login is `source.login` when set, else the token's;
* an expired or revoked token (401 there, or "Login authentication failed" from the chat
  server) is one clear line in `status().problem`, and the source goes on reading the same
  channel anonymously rather than stopping. A token without the `chat:read` scope too. The
  token is checked again every hour while connected, as Twitch asks of apps, so a token
  revoked mid-stream is noticed too.

Failures of the link (unreachable, dropped, close 1009/1007, keepalive timeouts) are retried
by the shell; Twitch's RECONNECT reconnects at once; a suspended channel stops the source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from agent import checks
from agent.errors import SourceError
from agent.sources.base import (
    ChatSource,
    ModerationCallback,
    SecretSpec,
    SettingSpec,
    SourceConfig,
    SourceDescriptor,
    StatusCallback,
)
from agent.sources.irc import (
    DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT,
    Joined,
    JoinFailed,
    LinkDead,
    LoginFailed,
    MalformedLine,
    TwitchChatProtocol,
    mask_secret_line,
)
from agent.sources.irc import Reconnect as IrcReconnect
from agent.sources.link import (
    Dead,
    Fatal,
    LinkedSource,
    Ready,
    Reconnect,
    Skipped,
    WebSocketLink,
    default_delays,
)
from agent.vocab import validate_name

log = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "wss://irc-ws.chat.twitch.tv:443"
VALIDATE_URL = "https://id.twitch.tv/oauth2/validate"
VALIDATE_DEADLINE = 10.0  # seconds for the whole validation request, not per read
CHAT_SCOPE = "chat:read"


# ------------------------------------------------------------------------ token check


@dataclass(frozen=True, slots=True)
class TokenInfo:
    login: str
    scopes: tuple[str, ...]
    expires_in: int  # seconds; 0 = the token does not expire


@dataclass(frozen=True, slots=True)
class TokenRefused:
    reason: str


def read_validation(status: int, body: bytes) -> TokenInfo | TokenRefused | None:
    """Twitch's validation answer as data; None when it says nothing usable (a 5xx, junk)."""
    if status == 401:
        try:
            message = str(json.loads(body).get("message") or "invalid access token")
        except (ValueError, AttributeError):
            message = "invalid access token"
        return TokenRefused(message[:120])
    if status != 200:
        return None
    try:
        data = json.loads(body)
        login = validate_name(str(data["login"]), "Twitch login")
        scopes = tuple(str(scope) for scope in data.get("scopes") or ())
        expires_in = int(data.get("expires_in") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return TokenInfo(login, scopes, max(0, expires_in))


def _get_validation(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, headers={"Authorization": f"OAuth {token}", "User-Agent": "CaptaFlow"}
    )
    try:
        with urllib.request.urlopen(request, timeout=VALIDATE_DEADLINE) as response:
            return response.status, response.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536)


async def validate_token(url: str, token: str) -> TokenInfo | TokenRefused | None:
    """Ask Twitch about a token; None when the endpoint cannot be reached or answers junk.

    The whole request has one deadline (the socket timeout alone restarts on every byte)."""
    bare = token.removeprefix("oauth:")
    try:
        status, body = await asyncio.wait_for(
            asyncio.to_thread(_get_validation, url, bare), VALIDATE_DEADLINE + 1
        )
    except (OSError, TimeoutError, ValueError) as exc:
        log.info("twitch: token check at %s failed: %s", url, type(exc).__name__)
        return None
    return read_validation(status, body)


def say_expiry(seconds: int) -> str:
    if seconds <= 0:
        return "does not expire"
    hours, rest = divmod(seconds, 3600)
    if hours >= 48:
        return f"expires in {hours // 24} days"
    return f"expires in {hours} h {rest // 60} min" if hours else f"expires in {rest // 60} min"


# --------------------------------------------------------------------------- the session


class TwitchSession:
    """A `link.Session` over one `TwitchChatProtocol`: frames in, IRC events translated."""

    def __init__(
        self,
        protocol: TwitchChatProtocol,
        *,
        logged_in_as: str | None,
        on_token_refused: Callable[[str], None],
        stats: dict[str, int],
    ) -> None:
        self.protocol = protocol
        self._logged_in_as = logged_in_as
        self._on_token_refused = on_token_refused
        self._stats = stats
        self._events: list[Any] = []

    @property
    def times_replaced(self) -> int:
        return self.protocol.stats["times_replaced"]

    def data_to_send(self) -> list[str]:
        lines = self.protocol.data_to_send()
        if log.isEnabledFor(logging.DEBUG):
            for line in lines:
                log.debug("twitch > %s", mask_secret_line(line))
        return [line + "\r\n" for line in lines]

    def receive_frame(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            # Twitch sends text frames; a binary one is decoded leniently, not fatal.
            self._stats["binary_frames"] += 1
            frame = frame.decode("utf-8", errors="replace")
        self.protocol.receive_text(frame)
        self._translate()

    def tick(self, now: float) -> None:
        self.protocol.tick(now)
        self._translate()

    def events_received(self) -> list[Any]:
        out, self._events = self._events, []
        return out

    def _translate(self) -> None:
        channel = self.protocol.channel
        for event in self.protocol.events_received():
            if isinstance(event, Joined):
                who = f" as {self._logged_in_as}" if self._logged_in_as else ""
                self._events.append(Ready(f"reading #{event.channel}{who}"))
            elif isinstance(event, IrcReconnect):
                self._events.append(Reconnect("Twitch asked to reconnect (RECONNECT)"))
            elif isinstance(event, LoginFailed):
                if self._logged_in_as:
                    self._on_token_refused(event.reason)
                    self._events.append(Reconnect(f"Twitch refused the token: {event.reason}"))
                else:
                    self._events.append(
                        Fatal(f"Twitch refused the anonymous login: {event.reason}")
                    )
            elif isinstance(event, JoinFailed):
                self._events.append(
                    Fatal(
                        f"cannot read Twitch channel #{event.channel}: {event.reason}; "
                        "check the channel name"
                    )
                )
            elif isinstance(event, LinkDead):
                self._events.append(
                    Dead("no data from Twitch, even after a keepalive PING")
                    if self.protocol.stats["lines"]
                    else Dead(f"Twitch sent nothing after joining #{channel}")
                )
            elif isinstance(event, MalformedLine):
                self._stats["malformed_lines"] += 1
                self._events.append(Skipped(event.error))
            else:  # ChatMessage, ModerationEvent
                self._events.append(event)


# ---------------------------------------------------------------------------- the source


class TwitchSource(LinkedSource):
    """Live Twitch chat of one channel; reconnects by itself until `close()`.

    `server_url` None means Twitch's own server. Anonymous read-only login by default; with
    `token` (an OAuth token with chat:read) the login is `nick` or, when None, the token's own
    (asked of `validate_url`). Iterate `messages()` once; it raises `SourceError` only when
    retrying cannot help (a suspended channel, a refused anonymous login)."""

    name = "twitch"

    def __init__(
        self,
        channel: str,
        *,
        server_url: str | None = None,
        token: str | None = None,
        nick: str | None = None,
        validate_url: str = VALIDATE_URL,
        max_frame_bytes: int = 64 * 1024,
        on_status: StatusCallback | None = None,
        on_moderation: ModerationCallback | None = None,
        delays: Callable[[], Iterator[float]] = default_delays,
        stable_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        pong_timeout: float = DEFAULT_PONG_TIMEOUT,
        tick_interval: float = 1.0,
        open_timeout: float = 10.0,
        queue_size: int = 10_000,
        revalidate_every: float = 3600.0,
    ) -> None:
        try:
            self.channel = validate_name(channel, "Twitch channel")
            self._nick = validate_name(nick, "Twitch login") if nick else None
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        self._token = token.strip() if token and token.strip() else None
        self._validate_url = validate_url or VALIDATE_URL
        self._checked = self._token is None  # the token is asked about once, when present
        server_url = server_url or DEFAULT_SERVER_URL
        try:
            parse_uri(server_url)
        except InvalidURI:
            raise SourceError(
                f"server URL {server_url!r} is not a WebSocket URL: use ws://host:port or "
                f"wss://host:port (the default is {DEFAULT_SERVER_URL})"
            ) from None
        self.server_url = server_url
        self._wall_clock = wall_clock
        self._clock = clock
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        self.token_info: TokenInfo | None = None
        self._logged_in = False  # whether the current link logged in with the token
        self.link = WebSocketLink(
            name="twitch",
            title="Twitch",
            url=server_url,
            new_session=self._new_session,
            on_status=on_status,
            on_moderation=on_moderation,
            prepare=self._check_token,
            # Twitch asks apps to validate a token hourly: a token revoked mid-stream is seen.
            periodic=self._recheck_token,
            periodic_interval=revalidate_every,
            max_size=max_frame_bytes,
            open_timeout=open_timeout,
            ping_interval=None,  # our IRC-level keepalive watches the chat itself
            ping_timeout=None,
            compression=None,
            tick_interval=tick_interval,
            queue_size=queue_size,
            stable_after=stable_after,
            delays=delays,
            clock=clock,
        )
        self.stats = self.link.stats
        self.stats.update(binary_frames=0, malformed_lines=0)

    # -- the token

    def _read_anonymously(self, why: str) -> None:
        self._token = None
        self._checked = True
        self.link.set_problem(
            f"{why}: reading #{self.channel} anonymously; store a new token with "
            "`captaflow secrets set twitch_token` (or set CAPTAFLOW_TWITCH_TOKEN)"
        )

    async def _check_token(self) -> None:
        if self._checked or self._token is None:
            return
        answer = await validate_token(self._validate_url, self._token)
        if isinstance(answer, TokenRefused):
            self._read_anonymously(f"the Twitch token is expired or revoked ({answer.reason})")
            return
        if answer is None:
            if self._nick is None:
                # Without a login there is no logging in; try asking again next connection.
                self.link.set_problem(
                    f"could not check the Twitch token at {self._validate_url}: reading "
                    f"#{self.channel} anonymously until it answers (or set source.login)"
                )
            return
        self._checked = True
        self.token_info = answer
        if CHAT_SCOPE not in answer.scopes:
            self._read_anonymously(f"the Twitch token has no {CHAT_SCOPE} scope")
            return
        if self._nick is not None and self._nick != answer.login:
            log.warning(
                "twitch: source.login is %s but the token belongs to %s; logging in as %s",
                self._nick,
                answer.login,
                answer.login,
            )
        self._nick = answer.login
        log.info(
            "twitch: token of %s, scopes %s, %s",
            answer.login,
            " ".join(answer.scopes) or "none",
            say_expiry(answer.expires_in),
        )
        self.link.set_problem("")

    async def _recheck_token(self) -> str | None:
        """The hourly check (https://dev.twitch.tv/docs/authentication/validate-tokens/);
        a refused token ends this link so the next one reads anonymously."""
        if self._token is None:
            return None
        if not self._checked:
            # The first check found the endpoint unreachable and this link is anonymous: ask
            # again, and log in on a new link once the token is known good.
            await self._check_token()
            if self._checked and self._token is not None and not self._logged_in:
                return f"logging in to Twitch as {self._nick}"
            return None
        answer = await validate_token(self._validate_url, self._token)
        if isinstance(answer, TokenRefused):
            self._read_anonymously(f"the Twitch token is expired or revoked ({answer.reason})")
            return "the Twitch token stopped working"
        if isinstance(answer, TokenInfo):
            self.token_info = answer
        return None

    def _token_refused(self, reason: str) -> None:
        self._read_anonymously(f"Twitch refused the token ({reason})")

    def _new_session(self) -> TwitchSession:
        logged_in = self._token is not None and self._nick is not None
        self._logged_in = logged_in
        protocol = TwitchChatProtocol(
            self.channel,
            nick=self._nick if logged_in else None,
            token=self._token if logged_in else None,
            now=self._wall_clock,
            keepalive_clock=self._clock,
            ping_interval=self._ping_interval,
            pong_timeout=self._pong_timeout,
        )
        return TwitchSession(
            protocol,
            logged_in_as=self._nick if logged_in else None,
            on_token_refused=self._token_refused,
            stats=self.stats,
        )


# ----------------------------------------------------------------------------- descriptor

TOKEN_SECRET = SecretSpec(
    keyring="twitch_token",
    env="CAPTAFLOW_TWITCH_TOKEN",
    doc="Twitch OAuth token (chat:read scope), to read chat logged in",
)


def _build(config: SourceConfig) -> ChatSource:
    return TwitchSource(
        config.channel,
        server_url=config.server_url or None,
        token=config.secrets.get(TOKEN_SECRET.keyring),
        nick=config.options.get("login") or None,
        validate_url=config.options.get("validate_url") or VALIDATE_URL,
        on_status=config.on_status,
        on_moderation=config.on_moderation,
    )


def _setup_problem(config: SourceConfig) -> str | None:
    if not config.channel:
        return 'no Twitch channel set: set channel = "name" under [source] (or --channel NAME)'
    return None


DESCRIPTOR = SourceDescriptor(
    kind="twitch",
    title="Twitch",
    summary="Twitch chat, read directly (anonymously, or logged in with a token)",
    default_url=DEFAULT_SERVER_URL,
    settings=(
        SettingSpec(
            "login",
            "",
            checks.name_or_empty("login"),
            "Your Twitch login, only with a token (CAPTAFLOW_TWITCH_TOKEN or the OS keyring);\n"
            "empty = ask Twitch which account the token belongs to.",
        ),
        SettingSpec(
            "validate_url",
            VALIDATE_URL,
            checks.text,
            "Where a Twitch token is checked (login, scopes, expiry); leave as it is.",
        ),
    ),
    secrets=(TOKEN_SECRET,),
    needs_channel=True,
    via="",
    build=_build,
    setup_problem=_setup_problem,
)
