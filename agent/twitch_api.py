"""Twitch: stream markers for live moments (Helix) and the device code log-in that allows them.

Built from Twitch's API reference:

- Create Stream Marker, https://dev.twitch.tv/docs/api/reference/#create-stream-marker:
  ``POST {api_url}/streams/markers`` with ``Authorization: Bearer <token>``, ``Client-Id`` and a
  JSON body ``{"user_id": ..., "description": ...}`` (description at most 140 characters); the
  token needs the ``channel:manage:broadcast`` scope and the broadcaster must be live. Answers
  ``200 {"data": [{"id", "created_at", "position_seconds", "description"}]}``; 401 for a bad
  token, 404 when the user is not live, 429 when over the rate limit (with ``Ratelimit-Reset``,
  https://dev.twitch.tv/docs/api/guide/#twitch-rate-limits).
- Device code grant flow,
  https://dev.twitch.tv/docs/authentication/getting-tokens-oauth/#device-code-grant-flow:
  ``POST {auth_url}/device`` (form: ``client_id``, ``scopes``) answers ``device_code``,
  ``user_code``, ``verification_uri``, ``expires_in``, ``interval``; the app shows the code and
  the URL, then polls ``POST {auth_url}/token`` (form: ``client_id``, ``scopes``,
  ``device_code``, ``grant_type=urn:ietf:params:oauth:grant-type:device_code``) every
  ``interval`` seconds: ``400 {"message": "authorization_pending"}`` until the user approves,
  then ``200 {"access_token", "refresh_token", "expires_in", "scope", "token_type"}``.
- Validating tokens, https://dev.twitch.tv/docs/authentication/validate-tokens/:
  ``GET {auth_url}/validate`` with ``Authorization: OAuth <token>`` answers ``client_id``,
  ``login``, ``user_id``, ``scopes``, ``expires_in``: who the marker is for, and whether the
  token may make one.

The requests and the answers' meaning are pure functions (`marker_request`, `read_poll`...),
the rate limit a pure token bucket over times the caller passes in (`RateLimiter`); the HTTP
calls (stdlib urllib, in a worker thread so the event loop never waits on Twitch) are thin.
Tokens never reach a log line or an error message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.errors import CaptaFlowError

log = logging.getLogger("captaflow.twitch_api")

DEFAULT_API_URL = "https://api.twitch.tv/helix"
DEFAULT_AUTH_URL = "https://id.twitch.tv/oauth2"
MARKER_SCOPE = "channel:manage:broadcast"
# One token for both: reading chat logged in, and stream markers.
LOGIN_SCOPES: tuple[str, ...] = ("chat:read", MARKER_SCOPE)
DESCRIPTION_MAX = 140
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TIMEOUT_SECONDS = 10.0

# Twitch gives each user token a bucket of 800 points a minute across Helix; a marker costs
# one. CaptaFlow stays far below: a burst of 3, then one every 30 s, and never two markers
# within 10 s (a hype moment is usually a joy moment and a chat-rate moment at once).
MARKER_BURST = 3
MARKER_REFILL_SECONDS = 30.0
MARKER_MIN_GAP_SECONDS = 10.0


class TwitchApiError(CaptaFlowError):
    """Twitch refused or could not be reached; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None, retry_at: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_at = retry_at


class TwitchLoginError(TwitchApiError):
    """The device code log-in did not end with a token (denied, expired, bad client id)."""


# ------------------------------------------------------------------------- rate limiting


@dataclass(slots=True)
class RateLimiter:
    """A token bucket: `burst` markers at once, one more every `refill_seconds`, never two
    closer than `min_gap_seconds`; `hold_until` obeys the server's Ratelimit-Reset."""

    burst: int = MARKER_BURST
    refill_seconds: float = MARKER_REFILL_SECONDS
    min_gap_seconds: float = MARKER_MIN_GAP_SECONDS
    tokens: float = field(default=-1.0)
    updated: float | None = None
    last: float | None = None
    held_until: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(
                float(self.burst), self.tokens + (now - self.updated) / self.refill_seconds
            )
        self.updated = now if self.updated is None else max(self.updated, now)

    def allow(self, now: float) -> bool:
        """Take one marker's worth at `now` if the limits allow it."""
        self._refill(now)
        if now < self.held_until:
            return False
        if self.last is not None and now - self.last < self.min_gap_seconds:
            return False
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        self.last = now
        return True

    def hold_until(self, when: float) -> None:
        self.held_until = max(self.held_until, when)


# ------------------------------------------------------------------------- pure requests


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None

    def __repr__(self) -> str:  # the headers hold the token: never print them
        return f"HttpRequest({self.method} {self.url})"


def _url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def clip_description(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_MAX else text[: DESCRIPTION_MAX - 1] + "…"


def marker_request(
    api_url: str, client_id: str, token: str, user_id: str, description: str
) -> HttpRequest:
    body = {"user_id": user_id, "description": clip_description(description)}
    return HttpRequest(
        "POST",
        _url(api_url, "streams/markers"),
        {
            "Authorization": f"Bearer {token}",
            "Client-Id": client_id,
            "Content-Type": "application/json",
        },
        json.dumps(body).encode("utf-8"),
    )


def validate_request(auth_url: str, token: str) -> HttpRequest:
    return HttpRequest("GET", _url(auth_url, "validate"), {"Authorization": f"OAuth {token}"})


def _form(fields: Mapping[str, str]) -> bytes:
    return urllib.parse.urlencode(fields).encode("ascii")


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def device_request(auth_url: str, client_id: str, scopes: tuple[str, ...]) -> HttpRequest:
    fields = {"client_id": client_id, "scopes": " ".join(scopes)}
    return HttpRequest("POST", _url(auth_url, "device"), _FORM, _form(fields))


def poll_request(
    auth_url: str, client_id: str, scopes: tuple[str, ...], device_code: str
) -> HttpRequest:
    fields = {
        "client_id": client_id,
        "scopes": " ".join(scopes),
        "device_code": device_code,
        "grant_type": DEVICE_GRANT,
    }
    return HttpRequest("POST", _url(auth_url, "token"), _FORM, _form(fields))


@dataclass(frozen=True, slots=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float

    def __repr__(self) -> str:  # the device code is as good as a token while it lasts
        return f"DeviceCode(user_code={self.user_code!r}, uri={self.verification_uri!r})"


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str
    refresh_token: str
    scopes: tuple[str, ...]
    expires_in: float

    def __repr__(self) -> str:
        return f"Token(scopes={self.scopes!r}, expires_in={self.expires_in!r})"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    login: str
    user_id: str
    client_id: str
    scopes: tuple[str, ...]


def read_device(status: int, data: object) -> DeviceCode:
    if status != 200 or not isinstance(data, dict):
        raise TwitchLoginError(
            f"Twitch refused the log-in request ({status}: {_message(data)}): check "
            "twitch.client_id in the settings (an app registered at dev.twitch.tv/console "
            "as a public client)",
            status,
        )
    try:
        return DeviceCode(
            device_code=str(data["device_code"]),
            user_code=str(data["user_code"]),
            verification_uri=str(data["verification_uri"]),
            expires_in=float(data.get("expires_in", 1800)),
            interval=max(1.0, float(data.get("interval", 5))),
        )
    except (KeyError, TypeError, ValueError):
        raise TwitchLoginError("Twitch's log-in answer is missing its codes: try again") from None


@dataclass(frozen=True, slots=True)
class Pending:
    slow_down: bool = False


def read_poll(status: int, data: object) -> Token | Pending:
    """What one poll of the token endpoint means: the token, keep waiting, or an error."""
    if status == 200 and isinstance(data, dict) and data.get("access_token"):
        scopes = data.get("scope") or []
        return Token(
            access_token=str(data["access_token"]),
            refresh_token=str(data.get("refresh_token", "")),
            scopes=tuple(str(s) for s in scopes) if isinstance(scopes, list) else (),
            expires_in=float(data.get("expires_in", 0) or 0),
        )
    message = _message(data)
    if message == "authorization_pending":
        return Pending()
    if message == "slow_down":
        return Pending(slow_down=True)
    if "denied" in message:
        raise TwitchLoginError("the log-in was declined on Twitch: run it again to retry", status)
    if "invalid device code" in message or "expired" in message:
        raise TwitchLoginError(
            "the log-in code expired before it was entered: run `captaflow login twitch` again",
            status,
        )
    raise TwitchLoginError(f"Twitch refused the log-in ({status}: {message})", status)


def read_validate(status: int, data: object) -> TokenInfo:
    if status == 401:
        raise TwitchApiError(
            "the Twitch token is invalid or expired: run `captaflow login twitch`", status
        )
    if status != 200 or not isinstance(data, dict):
        raise TwitchApiError(f"Twitch could not check the token ({status})", status)
    scopes = data.get("scopes") or []
    return TokenInfo(
        login=str(data.get("login", "")),
        user_id=str(data.get("user_id", "")),
        client_id=str(data.get("client_id", "")),
        scopes=tuple(str(s) for s in scopes) if isinstance(scopes, list) else (),
    )


def read_marker(
    status: int, data: object, headers: Mapping[str, str], now: float
) -> dict[str, object]:
    """The marker Twitch made, or TwitchApiError (with `retry_at` on 429)."""
    if status == 200 and isinstance(data, dict):
        items = data.get("data")
        if isinstance(items, list) and items and isinstance(items[0], dict):
            return items[0]
        raise TwitchApiError("Twitch's marker answer holds no marker", status)
    message = _message(data)
    if status == 429:
        reset = _header(headers, "Ratelimit-Reset")
        retry_at = float(reset) if reset and reset.isdigit() else now + 60.0
        raise TwitchApiError("Twitch's rate limit: markers paused", status, retry_at)
    if status == 401:
        raise TwitchApiError(
            "Twitch refused the token for markers: run `captaflow login twitch`", status
        )
    if status == 403:
        raise TwitchApiError(
            f"the Twitch token lacks the {MARKER_SCOPE} scope: run `captaflow login twitch`",
            status,
        )
    if status == 404:
        raise TwitchApiError(f"no marker: the channel is not live ({message})", status)
    raise TwitchApiError(f"Twitch refused the marker ({status}: {message})", status)


def _message(data: object) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or "")
    return ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


# ------------------------------------------------------------------------------- the I/O


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    data: object


def send(request: HttpRequest, timeout: float = TIMEOUT_SECONDS) -> HttpResponse:
    """One HTTP exchange; a non-2xx status is an answer, not an exception."""
    raw = urllib.request.Request(
        request.url, data=request.body, headers=dict(request.headers), method=request.method
    )
    try:
        with urllib.request.urlopen(raw, timeout=timeout) as answer:
            body = answer.read(1 << 20)
            status, headers = answer.status, dict(answer.headers.items())
    except urllib.error.HTTPError as exc:
        body = exc.read(1 << 20)
        status, headers = exc.code, dict(exc.headers.items())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TwitchApiError(f"cannot reach Twitch at {_origin(request.url)}: {reason}") from None
    try:
        data: object = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        data = None
    return HttpResponse(status, headers, data)


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


Sender = Callable[[HttpRequest], HttpResponse]


def validate_token(auth_url: str, token: str, sender: Sender = send) -> TokenInfo:
    answer = sender(validate_request(auth_url, token))
    return read_validate(answer.status, answer.data)


def device_login(
    client_id: str,
    *,
    auth_url: str = DEFAULT_AUTH_URL,
    scopes: tuple[str, ...] = LOGIN_SCOPES,
    show: Callable[[DeviceCode], None],
    sender: Sender = send,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Token:
    """The device code flow: ask for a code, `show` it, poll until the user approves."""
    if not client_id.strip():
        raise TwitchLoginError(
            "no Twitch client id: register an app at https://dev.twitch.tv/console (category "
            'any, client type "Public") and set client_id under [twitch] in the settings'
        )
    answer = sender(device_request(auth_url, client_id, scopes))
    code = read_device(answer.status, answer.data)
    show(code)
    deadline = clock() + code.expires_in
    interval = code.interval
    while clock() < deadline:
        sleep(interval)
        answer = sender(poll_request(auth_url, client_id, scopes, code.device_code))
        outcome = read_poll(answer.status, answer.data)
        if isinstance(outcome, Token):
            return outcome
        if outcome.slow_down:
            interval += 5.0
    raise TwitchLoginError(
        "the log-in code expired before it was entered: run `captaflow login twitch` again"
    )


@dataclass(frozen=True, slots=True)
class MarkerSettings:
    client_id: str
    token: str
    api_url: str = DEFAULT_API_URL
    auth_url: str = DEFAULT_AUTH_URL

    def __repr__(self) -> str:
        return f"MarkerSettings(client_id={self.client_id!r}, api_url={self.api_url!r})"


class MarkerPoster:
    """Creates a Twitch stream marker for each live moment, in its own thread.

    `submit` never blocks: a description over the rate limit is dropped (a marker is only
    worth making while the moment is happening). The first marker validates the token (who
    the broadcaster is, whether the scope is there); a refused token stops the poster.
    `state` is one line for the dashboard and the log.
    """

    def __init__(
        self,
        settings: MarkerSettings,
        *,
        sender: Sender = send,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._sender = sender
        self._clock = clock
        self._limiter = limiter or RateLimiter()
        self._queue: queue.Queue[tuple[str, str | None] | None] = queue.Queue(maxsize=16)
        self._user_id: str | None = None
        self.login: str | None = None  # the token's account: markers go to its stream only
        self._stopped = False
        self.state = "on: waiting for the first moment"
        self.created = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="twitch-markers", daemon=True)
        self._thread.start()

    def submit(self, description: str, channel: str | None = None) -> bool:
        """Queue a marker now (True) or drop it (False): over the rate limit, stopped, or for
        a `channel` that is not the logged-in account's own (a marker goes to its stream)."""
        if channel is not None and self.login is not None and channel.lower() != self.login:
            return False
        if self._stopped or not self._limiter.allow(self._clock()):
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait((description, channel))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)

    def join_idle(self, timeout: float = 5.0) -> None:
        """Wait until every queued marker was sent (tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._post(*item)
            finally:
                self._queue.task_done()

    def _post(self, description: str, channel: str | None = None) -> None:
        s = self._settings
        try:
            if self._user_id is None:
                info = validate_token(s.auth_url, s.token, self._sender)
                if MARKER_SCOPE not in info.scopes:
                    raise TwitchApiError(
                        f"the Twitch token lacks the {MARKER_SCOPE} scope: run "
                        "`captaflow login twitch`",
                        403,
                    )
                self._user_id = info.user_id
                self.login = info.login.lower()
            if channel is not None and channel.lower() != self.login:
                self.state = f"on: markers go to #{self.login} only, not #{channel}"
                return
            request = marker_request(s.api_url, s.client_id, s.token, self._user_id, description)
            answer = self._sender(request)
            marker = read_marker(answer.status, answer.data, answer.headers, self._clock())
        except TwitchApiError as exc:
            self.state = f"failing: {exc}"
            log.warning("twitch markers: %s", exc)
            if exc.retry_at is not None:
                self._limiter.hold_until(exc.retry_at)
            if exc.status in (401, 403):
                self._stopped = True
            return
        self.created += 1
        self.state = f"on: {self.created} marker(s) made"
        log.info("twitch marker at %ss: %s", marker.get("position_seconds"), description)


def login_twitch(
    settings: object,
    *,
    say: Callable[[str], None],
    store: Callable[[str, str], object] | None = None,
    sender: Sender = send,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Token:
    """`captaflow login twitch`: the device code flow with `twitch.client_id`, then the token
    into the keyring entry twitch_token (also what the Twitch chat source reads)."""
    twitch = getattr(settings, "twitch", None)
    client_id = str(getattr(twitch, "client_id", "") or "")
    auth_url = str(getattr(twitch, "auth_url", "") or DEFAULT_AUTH_URL)
    if store is None:
        from agent.secrets import store_secret

        store = store_secret

    def show(code: DeviceCode) -> None:
        minutes = max(1, round(code.expires_in / 60))
        say(f"To log CaptaFlow in to Twitch, open {code.verification_uri}")
        say(f"and enter the code {code.user_code} (it is good for {minutes} minutes).")
        say("Waiting for you to approve…")

    token = device_login(
        client_id, auth_url=auth_url, show=show, sender=sender, sleep=sleep, clock=clock
    )
    if token.scopes and MARKER_SCOPE not in token.scopes:
        raise TwitchLoginError(
            f"Twitch gave a token without {MARKER_SCOPE}: run the log-in again and approve "
            "every permission asked"
        )
    store("twitch_token", token.access_token)
    say('Logged in: the token is in the OS keyring (entry "twitch_token").')
    return token
