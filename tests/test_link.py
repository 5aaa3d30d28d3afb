"""The link shell's one retry rule and its plain words, on real failures from loopback."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.http11 import Response

from agent.backoff import backoff
from agent.errors import SourceError
from agent.sources.jsonws import FieldMapping, JsonWebSocketSource
from agent.sources.link import describe_failure, retryable
from agent.vocab import SourceState


def status_error(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", {}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), True),
        (socket.gaierror(-2, "Name or service not known"), True),
        (TimeoutError(), True),
        (OSError(104, "Connection reset by peer"), True),
        (status_error(503), True),
        (status_error(429), True),
        (status_error(408), True),
        (status_error(404), False),
        (status_error(401), False),
        (InvalidURI("http://x", "not ws"), False),
        (ValueError("a bug"), False),
    ],
)
def test_one_rule_for_what_is_retried(exc: BaseException, retry: bool) -> None:
    assert retryable(exc) is retry


def test_failures_in_plain_words() -> None:
    url = "ws://127.0.0.1:8080/"
    hint = "is it running with its WebSocket server on?"
    refused = [
        ConnectionRefusedError(111, "Connect call failed"),
        OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 8080, 0, 0), "
                "[Errno 111] Connect call failed ('127.0.0.1', 8080)"),
        OSError(10061, "No connection could be made because the target machine refused it"),
    ]  # fmt: skip
    for exc in refused:
        assert describe_failure(exc, "Streamer.bot", url, hint) == (
            f"can't reach Streamer.bot at {url}: {hint}"
        )
    offline = describe_failure(socket.gaierror(-3, "Temporary failure"), "Twitch", "wss://x", "")
    assert offline == "no internet connection (or a wrong host name)"
    assert describe_failure(TimeoutError(), "Twitch", "wss://x") == (
        "Twitch at wss://x did not answer in time"
    )
    assert "HTTP 503" in describe_failure(status_error(503), "the chat feed", url)


@pytest.fixture
def http_404() -> Iterator[str]:
    """A plain web server on loopback that answers every request 404: a wrong address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # as real web servers answer

        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"ws://127.0.0.1:{server.server_address[1]}/wrong/path"
    server.shutdown()
    server.server_close()


@pytest.mark.network
@pytest.mark.timeout(30)
def test_a_refused_upgrade_stops_at_once_naming_the_address(http_404: str) -> None:
    source = JsonWebSocketSource(
        http_404, mapping=FieldMapping(), delays=lambda: backoff(0.05, 2.0, 0.1, jitter=0.0)
    )

    async def main() -> None:
        with pytest.raises(SourceError, match=r"refused the connection \(HTTP 404\)"):
            await asyncio.wait_for(anext(source.messages()), 20)

    asyncio.run(main())
    assert source.status().state is SourceState.FAILED
    assert "server_url" in source.status().detail and source.stats["attempts"] == 1
