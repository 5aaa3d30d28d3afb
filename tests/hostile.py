"""Helpers for the hostile-world tests: a real small disk, a recording, what survived.

`small_disk` mounts a real tmpfs of a few MB (root only; the test is skipped with the reason
otherwise), so "disk full" is the kernel's ENOSPC, not a stand-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.spool import iter_readings

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def small_disk(where: Path, size: str = "3m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the block; skips the test when not possible."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a real small disk needs root on Linux (mount -t tmpfs); skipped")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs at {where}: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about `leave` bytes free on `disk`."""
    ballast = disk / "ballast.bin"
    free = shutil.disk_usage(disk).free
    size = max(0, free - leave)
    with ballast.open("wb") as handle:
        handle.write(b"\0" * size)
    return ballast


def write_recording(
    path: Path, count: int, *, spacing: float = 0.05, channel: str = "hostile"
) -> set[str]:
    """A JSONL chat recording of `count` distinct messages; returns their ids."""
    ids = set()
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            message_id = f"m-{i:06d}"
            ids.add(message_id)
            handle.write(
                json.dumps(
                    {
                        "platform": "twitch",
                        "channel": channel,
                        "id": message_id,
                        "author": f"viewer{i % 97}",
                        "text": f"message number {i} with some words in it, LUL {i % 13}",
                        "sent_at": 1764000000.0 + i * spacing,
                    }
                )
                + "\n"
            )
    return ids


def agent_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CAPTAFLOW_NO_KEYRING": "1",
        "CAPTAFLOW_CONFIG": str(tmp_path / "config.toml"),
    }
    for name in list(env):
        if name.startswith("AWS_"):
            del env[name]
    env.update(extra)
    return env


@dataclass(frozen=True)
class Survivors:
    """What a run left: journaled keys, readings and the batches' states."""

    keys: set[str]
    scorable: int
    batch_ids: list[str]  # of the readings in the spool, one per reading
    counted: int  # sum of the readings' message_count
    states: dict[str, int]  # batch state -> count


def survivors(data_dir: Path, spool: Path | None = None) -> Survivors:
    conn = sqlite3.connect(data_dir / "journal.sqlite3")
    try:
        keys = {row[0] for row in conn.execute("SELECT key FROM messages")}
        scorable = conn.execute("SELECT COUNT(*) FROM messages WHERE scorable = 1").fetchone()[0]
        states = dict(conn.execute("SELECT state, COUNT(*) FROM batches GROUP BY state"))
    finally:
        conn.close()
    readings = list(iter_readings(spool or data_dir / "spool"))
    return Survivors(
        keys=keys,
        scorable=scorable,
        batch_ids=[r.batch_id for r in readings],
        counted=sum(r.message_count for r in readings),
        states=states,
    )
