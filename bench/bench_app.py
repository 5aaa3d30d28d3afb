"""The app as a streamer runs it: size on disk, start-up to the first reading, memory and CPU
while idle and while scoring a busy chat.

    python bench/bench_app.py --model DIR [--exe dist/captaflow/captaflow] [--seconds 60]

Without --exe it measures `python -m agent` (the pip install). Use a full-size model bundle
for realistic figures (`python -m model_export --random-base --out DIR`: roberta-base's shape,
random weights; speed and memory do not depend on the weight values). The busy chat is the
real #xqcow capture in ../shared/testdata replayed at its recorded speed (10.6 messages/s on
average, one of the busiest Twitch chats) and at 4x; idle is a Twitch-like server on
127.0.0.1 that accepts the login and then sends nothing. Prints a table and appends it to
bench/RESULTS-app.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "testdata" / "xqcow-chat-2019-09-15.irc.gz"
RESULTS = ROOT / "bench" / "RESULTS-app.md"


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class SilentTwitch:
    """A Twitch-like server on loopback that logs the client in, then says nothing."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> SilentTwitch:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            self.url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws: object) -> None:
        async for frame in ws:  # type: ignore[attr-defined]
            for line in str(frame).split("\r\n"):
                if line.startswith("NICK "):
                    await ws.send(":tmi.twitch.tv 001 justinfan :Welcome, GLHF!\r\n")  # type: ignore[attr-defined]
                elif line.startswith("PING"):
                    await ws.send("PONG :tmi.twitch.tv\r\n")  # type: ignore[attr-defined]


def agent_cmd(exe: Path | None) -> list[str]:
    return [str(exe)] if exe else [sys.executable, "-m", "agent"]


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def watch(proc: subprocess.Popen[str], seconds: float) -> tuple[float, float, float]:
    """Mean and peak RSS (MB) and mean CPU % of one core over `seconds`."""
    p = psutil.Process(proc.pid)
    cpu_start = sum(p.cpu_times()[:2])
    samples = []
    end = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < end and proc.poll() is None:
        samples.append(tree_rss(p))
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    cpu = (sum(p.cpu_times()[:2]) - cpu_start) / elapsed * 100 if proc.poll() is None else 0.0
    mb = [s / 1e6 for s in samples] or [0.0]
    return sum(mb) / len(mb), max(mb), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="model bundle directory")
    parser.add_argument("--exe", type=Path, help="built executable (default: python -m agent)")
    parser.add_argument("--seconds", type=float, default=60.0, help="busy-chat measuring time")
    args = parser.parse_args()
    if not CAPTURE.is_file():
        print(f"bench_app: {CAPTURE} is missing (it ships in ../shared/testdata)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="captaflow-app-bench-"))
    base_env = {**os.environ, "CAPTAFLOW_CONFIG": str(work / "config.toml"),
                "CAPTAFLOW_NO_KEYRING": "1"}  # fmt: skip
    cmd = agent_cmd(args.exe)
    rows: list[tuple[str, str]] = []
    what = str(args.exe) if args.exe else "python -m agent"
    if args.exe:
        rows.append(
            ("size on disk", f"{folder_size(args.exe.parent) / 1e6:.0f} MB ({args.exe.parent})")
        )
    rows.append(("model bundle", f"{folder_size(args.model) / 1e6:.0f} MB ({args.model})"))

    t0 = time.perf_counter()
    subprocess.run([*cmd, "--version"], check=True, capture_output=True, env=base_env)
    rows.append(("`--version`", f"{time.perf_counter() - t0:.2f} s"))

    # Start-up to the first reading: a replay at full speed prints its first batch as soon
    # as the first window of 10 is scored.
    env = {**base_env, "CAPTAFLOW_DATA_DIR": str(work / "first")}
    t0 = time.perf_counter()
    first = None
    with running([*cmd, "run", "--source", "replay", "--file", str(CAPTURE), "--speed", "max",
                  "--quiet", "--model", str(args.model)], env) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if "BATCH RESULTS" in line:
                first = time.perf_counter() - t0
                break
    rows.append(("start-up to the first reading", f"{first:.2f} s" if first else "none"))

    with SilentTwitch() as server:
        env = {**base_env, "CAPTAFLOW_DATA_DIR": str(work / "idle")}
        with running([*cmd, "run", "--channel", "idlechannel", "--server-url", server.url,
                      "--quiet", "--model", str(args.model)], env) as proc:  # fmt: skip
            time.sleep(10)
            mean, peak, cpu = watch(proc, 20)
        rows.append(
            ("idle (connected, quiet chat)", f"RSS {mean:.0f} MB, CPU {cpu:.1f}% of a core")
        )

    for speed in ("1", "4"):
        env = {**base_env, "CAPTAFLOW_DATA_DIR": str(work / f"busy{speed}")}
        with running([*cmd, "run", "--source", "replay", "--file", str(CAPTURE), "--speed",
                      speed, "--quiet", "--model", str(args.model)], env) as proc:  # fmt: skip
            time.sleep(5)
            mean, peak, cpu = watch(proc, args.seconds)
            status = json.loads((work / f"busy{speed}" / "status.json").read_text())
        rate = 10.6 * float(speed)
        rows.append((f"busy chat ~{rate:.0f} msg/s (#xqcow capture at {speed}x)",
                     f"RSS mean {mean:.0f} MB, peak {peak:.0f} MB; CPU {cpu:.0f}% of a core; "
                     f"{status['readings_total']} readings in {args.seconds:.0f} s"))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = [
        f"## {what} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- command: `python bench/bench_app.py {' '.join(sys.argv[1:])}`",
        f"- load average at the end: {load:.2f} on {os.cpu_count()} cores",
        "",
        "| what | figure |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in rows),
        "",
    ]
    text = "\n".join(table)
    print(text)
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
