"""Issue 12, case 8: `journal.max_mb = 1` holds with 13,000 messages.

Before, the journal grew to 12.7 MB while running (6.8 MB after the stop): pruned rows left
their pages in the file and the WAL grew without bound. The agent runs here as a user runs it,
on a 13,000-message chat, while the test samples the journal's size on disk (database + WAL)
every few milliseconds. Checked: every sample and the final size are within 1 MB, every
scorable message is in exactly one reading, and what the journal still holds is only what it
may keep (no batch left owed a reading).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.hostile import agent_env, survivors, write_recording

COUNT = 13_000
BOUND = 1 << 20


def _journal_bytes(data_dir: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(data_dir / f"journal.sqlite3{suffix}")
    return total


@pytest.mark.timeout(600)
def test_one_mb_journal_stays_within_one_mb_over_13000_messages(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    recording = tmp_path / "chat.jsonl"
    # 20 messages a second as recorded, replayed at 5x: a busy chat the scorer keeps up with.
    ids = write_recording(recording, COUNT, spacing=0.05)
    (tmp_path / "config.toml").write_text("[journal]\nmax_mb = 1\n", encoding="utf-8")
    data_dir = tmp_path / "data"
    cmd = [
        sys.executable, "-m", "agent", "run", "--source", "replay", "--file", str(recording),
        "--speed", "5", "--data-dir", str(data_dir), "--model", str(tiny_bundle), "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        env=agent_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            samples.append(_journal_bytes(data_dir))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, stderr = proc.communicate(timeout=540)
    finally:
        done.set()
        sampler.join(timeout=10)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    final = _journal_bytes(data_dir)
    peak = max(samples, default=0)
    assert len(samples) > 10, "the run was too short to sample"
    assert peak <= BOUND, f"the journal reached {peak} bytes while running"
    assert final <= BOUND, f"the journal is {final} bytes after the stop"

    left = survivors(data_dir)
    assert left.keys <= ids and len(left.keys) < COUNT, "nothing was pruned"
    assert left.counted == COUNT, "a message is in no reading, or in two"
    assert len(set(left.batch_ids)) == len(left.batch_ids)
    assert left.states.get("assigned", 0) == 0
    print(
        f"\njournal bound: {COUNT} messages, peak {peak / 1024:.0f} KB, final "
        f"{final / 1024:.0f} KB, {len(left.keys)} messages kept, {len(samples)} samples"
    )
