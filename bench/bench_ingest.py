"""How fast Twitch chat gets in, and what a reconnect looks like. Prints figures; asserts nothing.

    python bench/bench_ingest.py [--repeat 20] [--drop-initial 0.5]

1. parser:   parse_line over the real #xqcow capture (5,000 lines, repeated)
2. protocol: TwitchChatProtocol.receive_text over the same lines, 20 lines per frame
             (as Twitch batches them), ChatMessages built
3. source:   TwitchSource reading a loopback WebSocket server (a separate process) that
             blasts the capture as fast as it can; messages/s seen by the consumer
4. drop:     a server that drops the link mid-stream, then refuses once, then recovers;
             the timeline of states the source reports

The measuring process is pinned to one core where the OS allows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.backoff import backoff  # noqa: E402
from agent.sources.irc import TwitchChatProtocol, parse_line  # noqa: E402
from agent.sources.twitch import TwitchSource  # noqa: E402
from agent.vocab import ChatMessage, SourceStatus  # noqa: E402

CAPTURE = ROOT.parent / "shared" / "testdata" / "xqcow-chat-2019-09-15.irc.gz"
LINES_PER_FRAME = 20


def load_capture() -> list[str]:
    with gzip.open(CAPTURE, "rt", encoding="utf-8") as fh:
        return [line for line in fh.read().splitlines() if line]


def frames_of(lines: list[str], repeat: int) -> list[str]:
    frames = []
    for _ in range(repeat):
        for i in range(0, len(lines), LINES_PER_FRAME):
            frames.append("".join(line + "\r\n" for line in lines[i : i + LINES_PER_FRAME]))
    return frames


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity on this OS)"


def bench_parser(lines: list[str], repeat: int) -> None:
    start = time.perf_counter()
    for _ in range(repeat):
        for line in lines:
            parse_line(line)
    elapsed = time.perf_counter() - start
    n = len(lines) * repeat
    print(f"parser    {n:>8} lines  {elapsed:6.2f} s  {n / elapsed:>10,.0f} lines/s")


def bench_protocol(lines: list[str], repeat: int) -> int:
    frames = frames_of(lines, repeat)
    proto = TwitchChatProtocol("xqcow", nick="justinfan1", now=time.time)
    messages = 0
    start = time.perf_counter()
    for frame in frames:
        proto.receive_text(frame)
        for event in proto.events_received():
            if isinstance(event, ChatMessage):
                messages += 1
    elapsed = time.perf_counter() - start
    print(
        f"protocol  {messages:>8} msgs   {elapsed:6.2f} s  {messages / elapsed:>10,.0f} messages/s "
        f"({len(lines) * repeat / elapsed:,.0f} lines/s)"
    )
    return messages // repeat


# --------------------------------------------------------------------------- loopback server


def _serve_blast(port_out: multiprocessing.Queue, lines: list[str], repeat: int) -> None:
    from websockets.asyncio.server import serve

    frames = frames_of(lines, repeat)

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        async for frame in ws:
            for line in str(frame).split("\r\n"):
                if line.startswith("NICK "):
                    await ws.send(f":tmi.twitch.tv 001 {line[5:]} :Welcome\r\n")
                elif line.startswith("JOIN "):
                    await ws.send(":tmi.twitch.tv ROOMSTATE #xqcow\r\n")
                    for f in frames:
                        await ws.send(f)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
            port_out.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


async def _consume(source: TwitchSource, expected: int) -> tuple[int, float, float]:
    count = 0
    first = last = 0.0
    async with contextlib.aclosing(source.messages()) as stream:
        async for _ in stream:
            if count == 0:
                first = time.perf_counter()
            count += 1
            if count >= expected:
                last = time.perf_counter()
                break
    await source.close()
    return count, first, last


def bench_source(lines: list[str], repeat: int, per_repeat: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue = ctx.Queue()
    server = ctx.Process(target=_serve_blast, args=(ports, lines, repeat), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        source = TwitchSource("xqcow", server_url=f"ws://127.0.0.1:{port}", nick="justinfan1")
        expected = per_repeat * repeat
        count, first, last = asyncio.run(_consume(source, expected))
        elapsed = last - first
        print(
            f"source    {count:>8} msgs   {elapsed:6.2f} s  {count / elapsed:>10,.0f} messages/s "
            f"(loopback WebSocket, server in another process)"
        )
    finally:
        server.terminate()
        server.join()


# --------------------------------------------------------------------------- drop timeline


async def drop_timeline(lines: list[str], initial: float) -> None:
    from websockets.asyncio.server import serve

    t0 = time.monotonic()
    timeline: list[tuple[float, str]] = []
    connections = 0

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - t0, what))

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        nonlocal connections
        connections += 1
        conn = connections
        mark(f"server: connection {conn} accepted")
        if conn == 2:
            mark("server: connection 2 dropped at once (still broken)")
            ws.transport.abort()
            return
        async for frame in ws:
            for line in str(frame).split("\r\n"):
                if line.startswith("NICK "):
                    await ws.send(f":tmi.twitch.tv 001 {line[5:]} :Welcome\r\n")
                elif line.startswith("JOIN "):
                    await ws.send(":tmi.twitch.tv ROOMSTATE #xqcow\r\n")
                    chunk = lines[:200] if conn == 1 else lines[200:400]
                    await ws.send("".join(x + "\r\n" for x in chunk))
                    if conn == 1:
                        await asyncio.sleep(0.2)
                        mark("server: drops connection 1 mid-stream (no close frame)")
                        ws.transport.abort()
                        return

    def on_status(status: SourceStatus) -> None:
        mark(f"source: {status.state.value}" + (f" - {status.detail}" if status.detail else ""))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        source = TwitchSource(
            "xqcow",
            server_url=f"ws://127.0.0.1:{port}",
            nick="justinfan1",
            delays=lambda: backoff(initial=initial, factor=2.0, maximum=60.0, jitter=0.5),
            on_status=on_status,
        )
        ids: set[str] = set()
        async with contextlib.aclosing(source.messages()) as stream:
            async for message in stream:
                ids.add(message.message_id)
                if connections >= 3 and len(ids) >= 390:
                    break
        await source.close()
    print(f"\ndrop test: backoff initial {initial} s, full jitter; {len(ids)} distinct messages")
    for at, what in timeline:
        print(f"  t={at:7.3f} s  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="passes over the 5,000 lines")
    parser.add_argument("--drop-initial", type=float, default=0.5, help="backoff start, s")
    args = parser.parse_args()
    if not CAPTURE.is_file():
        sys.exit(f"the capture {CAPTURE} is missing: run from a checkout beside ../shared")
    lines = load_capture()
    print(
        f"capture: {len(lines)} lines of #xqcow; {pin_one_core()}; Python {sys.version.split()[0]}"
    )
    bench_parser(lines, args.repeat)
    per_repeat = bench_protocol(lines, args.repeat)
    bench_source(lines, args.repeat, per_repeat)
    asyncio.run(drop_timeline(lines, args.drop_initial))


if __name__ == "__main__":
    main()
