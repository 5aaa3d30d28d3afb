"""A fake remote S3 for tests: moto's real server on 127.0.0.1, and a proxy that can misbehave.

`MotoS3` runs moto's ThreadedMotoServer on a free loopback port. `FaultProxy` is a small
reverse proxy in front of it, the remote peer as a flaky network shows it: it forwards
requests unchanged (Host included, so signatures still check), logs each one, and can be told
to answer 500/503 with S3's XML error body, to drop connections, to forward a PUT but lose
the reply, to flip a bit of a body on the way, or to go away entirely (its port closed:
connection refused) and come back on the same port.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import socket
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from moto.server import ThreadedMotoServer

FAKE_KEY_ID = "AKIAFAKEFAKEFAKE0000"
FAKE_SECRET = "fake/Secret+Never+In+Logs/0123456789abcd"


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 client for the `s3_server` fixture's environment: for setting up and checking
    what a test's run uploaded (never the code under test)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


class MotoS3:
    """moto's S3 (and IAM, for auth tests) on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        # werkzeug logs every request line at INFO; keep test output readable.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> MotoS3:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def require_auth(self, enabled: bool) -> None:
        """Make moto check signatures and IAM permissions (off by default: any key works).

        The setting is process-wide in moto, so tests that turn it on must turn it off.
        """
        body = b"0" if enabled else b"inf"
        # text/plain: with urllib's default form type, Flask would swallow the body.
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth", data=body, headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()


Fault = Literal["error500", "slowdown503", "drop", "lose_reply", "corrupt"]


@dataclass(frozen=True, slots=True)
class Exchange:
    method: str
    path: str
    status: int | None  # None: the connection was dropped without a reply
    fault: Fault | None
    key_id: str | None  # the access key id the request was signed with (not a secret)


_ERROR_BODIES = {
    "error500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "slowdown503": (503, "SlowDown", "Please reduce your request rate."),
}


class FaultProxy:
    """A loopback reverse proxy in front of `upstream_url` with switchable faults."""

    def __init__(self, upstream_url: str) -> None:
        parsed = urllib.request.urlparse(upstream_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.port = 0
        self.log: list[Exchange] = []
        self._lock = threading.Lock()
        self._standing: Fault | None = None
        self._queued: list[Fault] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # faults --------------------------------------------------------------------------------

    def set_fault(self, fault: Fault | None) -> None:
        """Apply `fault` to every request from now on (None: forward faithfully)."""
        with self._lock:
            self._standing = fault

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply `fault` to the next `times` requests only."""
        with self._lock:
            self._queued.extend([fault] * times)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._queued:
                return self._queued.pop(0)
            return self._standing

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.log.append(exchange)

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self.log)

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 so the handler answers boto's "Expect: 100-continue" (under HTTP/1.0 the
            # client waits a second per PUT for it); one request per connection, so a stopped
            # proxy really is gone and no pooled connection outlives it.
            protocol_version = "HTTP/1.1"

            def end_headers(self) -> None:
                self.send_header("Connection", "close")
                self.close_connection = True
                super().end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._next_fault()

                def record(status: int | None) -> None:
                    # Before the client hears back, so a test that saw the reply sees the log.
                    proxy.record(Exchange(self.command, self.path, status, fault, self._key_id()))

                if fault in _ERROR_BODIES:
                    status, code, text = _ERROR_BODIES[fault]
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                        f"<Message>{text}</Message><RequestId>proxy</RequestId></Error>"
                    ).encode()
                    record(status)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if fault == "drop":
                    record(None)
                    self._drop()
                    return
                if fault == "corrupt" and body:
                    # One flipped bit on the way, headers (and their checksums) untouched.
                    body = body[:-1] + bytes([body[-1] ^ 0x01])
                status, headers, reply = self._forward(body)
                if fault == "lose_reply":
                    record(None)
                    self._drop()
                    return
                record(status)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                        self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=10)
                try:
                    upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in ("connection", "keep-alive"):
                            upstream.putheader(name, value)
                    upstream.endheaders(body)
                    response = upstream.getresponse()
                    reply = response.read()
                    return response.status, response.getheaders(), reply
                finally:
                    upstream.close()

            def _key_id(self) -> str | None:
                found = re.search(r"Credential=([A-Z0-9]+)/", self.headers.get("Authorization", ""))
                return found.group(1) if found else None

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port: clients now get "connection refused" until `start()` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
