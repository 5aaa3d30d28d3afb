"""Busy chat in full: the real #xqcow capture replayed at N x its recorded rate through the
running agent (agent.runtime.Agent, the same object `captaflow run` drives), on one core.

    python bench/capture_replay.py --model DIR [--speed 4 --speed 10] [--messages N]

For each speed it reports what a streamer would see:

* the share of messages scored: sum(scored_count) / sum(message_count) over the readings
  (when the scorer falls behind, the windows are sampled and the share drops below 100%);
* the lag of each reading behind its window's end: the wall time the reading reached the
  agent's `on_reading` listeners minus the wall time the replay delivered the chat up to the
  window's end (window ends are recorded times; the replay's own times map them to wall
  time, interpolated between messages), p50 and p99;
* the agent's CPU use over the replay (this process's CPU time / wall time, in % of one core).

The agent runs in this process, pinned to one core; the scorer uses one thread (settings'
default). Nothing of the agent is changed: the bench only listens (on_reading) and records
when the replay source hands out each message (it wraps the source's clock-stamping helper).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CAPTURE = ROOT.parent / "shared" / "testdata" / "xqcow-chat-2019-09-15.irc.gz"
RECORDED_RATE = 10.6  # messages per second, the capture's average


@dataclass(frozen=True, slots=True)
class ReplayRow:
    speed: float
    messages: int
    readings: int
    scored_share: float
    lag_p50: float
    lag_p99: float
    lag_max: float
    cpu_percent: float
    wall_seconds: float
    cpu_seconds: float
    scored: int
    load: str
    error: str = ""

    @property
    def capacity(self) -> float:
        """Scored messages per CPU second of the agent: what one free core would sustain."""
        return self.scored / self.cpu_seconds if self.cpu_seconds else 0.0

    def cells(self) -> list[str]:
        return [
            f"{self.speed:g}x (~{RECORDED_RATE * self.speed:.0f} msg/s)",
            str(self.messages),
            str(self.readings),
            f"{self.scored_share:.1%}",
            f"{self.lag_p50:.2f} / {self.lag_p99:.2f} (max {self.lag_max:.2f})",
            f"{self.cpu_percent:.0f}%",
            f"{self.capacity:.0f}",
            f"{self.wall_seconds:.0f}",
            self.load,
        ]


HEADER = [
    "capture replay",
    "messages",
    "readings",
    "scored (not sampled)",
    "lag p50 / p99 s",
    "CPU (one core)",
    "scored msg per agent CPU s",
    "wall s",
    "load avg (1 min) before / after",
]


@contextlib.contextmanager
def _delivery_log() -> Iterator[list[tuple[float, float]]]:
    """(sent_at, wall time handed out) of every replayed message, in order."""
    from agent.sources import replay

    log: list[tuple[float, float]] = []
    original = replay._received_now

    def stamped(msg: Any, now: float) -> Any:
        log.append((float(msg.sent_at), now))
        return original(msg, now)

    replay._received_now = stamped  # type: ignore[assignment]
    try:
        yield log
    finally:
        replay._received_now = original  # type: ignore[assignment]


def replay_capture(
    bundle_dir: Path, speed: float, capture: Path = CAPTURE, work: Path | None = None
) -> ReplayRow:
    from agent.config import load_settings
    from agent.runtime import Agent

    os.environ.setdefault("CAPTAFLOW_NO_KEYRING", "1")
    scratch = Path(work or tempfile.mkdtemp(prefix="captaflow-replay-bench-"))
    settings = load_settings(
        scratch / "config.toml",
        {
            "data_dir": str(scratch / f"data-{speed:g}x"),
            "model.dir": str(bundle_dir),
            "source.kind": "replay",
            "source.file": str(capture),
            "source.speed": str(speed),
            "ui.port": 0,
            "sync.enabled": False,
        },
    )
    arrivals: list[tuple[float, float, float]] = []  # (wall, window_end, ...)
    counts = [0, 0]
    lock = threading.Lock()

    def on_reading(reading: Any) -> None:
        with lock:
            arrivals.append((time.time(), float(reading.window_end), 0.0))
            counts[0] += int(reading.message_count)
            counts[1] += int(reading.scored_count)

    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with _delivery_log() as delivered:
        agent = Agent(settings)
        agent.on_reading.append(on_reading)
        wall0, cpu0 = time.monotonic(), time.process_time()
        agent.run_forever()
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    error = "" if agent.error is None else f"{type(agent.error).__name__}: {agent.error}"
    lags = _lags(delivered, arrivals)
    return ReplayRow(
        speed=speed,
        messages=counts[0],
        readings=len(arrivals),
        scored_share=counts[1] / counts[0] if counts[0] else 0.0,
        lag_p50=float(np.percentile(lags, 50)) if lags else float("nan"),
        lag_p99=float(np.percentile(lags, 99)) if lags else float("nan"),
        lag_max=float(max(lags)) if lags else float("nan"),
        cpu_percent=100.0 * cpu / wall if wall else 0.0,
        wall_seconds=wall,
        cpu_seconds=cpu,
        scored=counts[1],
        load=f"{load0:.1f} / {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "-",
        error=error,
    )


def _lags(
    delivered: Sequence[tuple[float, float]], arrivals: Sequence[tuple[float, float, float]]
) -> list[float]:
    """Reading wall time minus the wall time its window's end was replayed."""
    if not delivered:
        return []
    sent = np.array([d[0] for d in delivered])
    wall = np.array([d[1] for d in delivered])
    order = np.argsort(sent, kind="stable")
    sent, wall = sent[order], np.maximum.accumulate(wall[order])
    return [float(at - np.interp(end, sent, wall)) for at, end, _ in arrivals]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="model bundle directory")
    parser.add_argument("--speed", type=float, action="append", help="replay factor (repeat)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    from bench.run import table

    rows = [replay_capture(args.model, s).cells() for s in (args.speed or [4.0, 10.0])]
    for line in table(HEADER, rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
