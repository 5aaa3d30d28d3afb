"""Issue 12, case 6: a server that trickles its reply cannot hold `captaflow sync` for ever.

The peer is a raw socket server on 127.0.0.1 that reads the request and then answers one byte
every 4 s: botocore's read timeout (10 s of silence) never fires, because every byte restarts
it. Before, `captaflow sync` waited for ever. Now every request has a total deadline. Checked,
running the real command: it ends by itself (the test's bound is only a safety net), with one
line naming the store and the deadline, the part is still waiting in sealed/ with its bytes
unchanged, and nothing reached any bucket.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.layout import part_files
from agent.spool import Spool
from tests.hostile import agent_env
from tests.test_spool import reading

REPLY = b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: "0"\r\n\r\n'


class TricklingServer:
    """Accepts connections, reads each request, then sends its reply one byte every 4 s."""

    def __init__(self, interval: float = 4.0) -> None:
        self.interval = interval
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self.requests: list[bytes] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> TricklingServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=self.interval + 2)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2.0)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
            except OSError:
                return
            self.requests.append(head.split(b"\r\n", 1)[0])
            for byte in REPLY:
                if self._stop.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return


@pytest.mark.timeout(180)
def test_a_trickling_server_cannot_hold_captaflow_sync(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    spool = Spool(data_dir / "spool")
    for i in range(3):
        spool.append(reading(i))
    sealed = spool.seal_open()
    assert sealed is not None
    before = sealed.read_bytes()
    with TricklingServer() as server:
        env = agent_env(
            tmp_path,
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{server.port}",
            AWS_ACCESS_KEY_ID="AKIAFAKEFAKEFAKE0000",
            AWS_SECRET_ACCESS_KEY="fake/secret",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        done = subprocess.run(
            [sys.executable, "-m", "agent", "sync", "--data-dir", str(data_dir),
             "--bucket", "trickle-bucket", "--prefix", "p"],
            env=env, capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        requests = list(server.requests)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "did not finish" in x]
    assert f"127.0.0.1:{server.port}" in line and "within 20 s" in line, line
    assert requests == [
        b"PUT /trickle-bucket/p/platform%3Dtwitch/channel%3Dxqcow/dt%3D2024-05-01/s1-00001.csv"
        b" HTTP/1.1"
    ]
    assert [p.name for p in part_files(data_dir / "spool", "sealed")] == [sealed.name]
    assert sealed.read_bytes() == before
    assert not part_files(data_dir / "spool", "uploaded")
