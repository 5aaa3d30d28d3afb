"""Issue 12, case 2: a full disk pauses writing, never the agent, and loses nothing.

The agent runs as a user runs it (`python -m agent run`, a replay source, the tiny int8 model)
with its data folder on a real 3 MB tmpfs that a ballast file has nearly filled. The disk fills
while it runs; the test then frees the ballast, as a streamer would, and the agent must write
everything that waited in memory by itself. Checked: it kept running and exited 0, said "disk
full" and what waits in memory in one line each (no traceback), every message of the
recording is journaled exactly once, and every scorable message is in exactly one reading.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.hostile import agent_env, fill, small_disk, survivors, write_recording

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="tmpfs mounts are Linux-only")

COUNT = 3000


def _run_cmd(data_dir: Path, model: Path, recording: Path, speed: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "run", "--source", "replay", "--file", str(recording),
        "--speed", speed, "--data-dir", str(data_dir), "--model", str(model), "--quiet",
    ]  # fmt: skip


@pytest.mark.timeout(300)
def test_a_full_disk_pauses_writing_then_everything_is_written_when_space_returns(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    recording = tmp_path / "chat.jsonl"
    ids = write_recording(recording, COUNT)
    with small_disk(tmp_path / "disk") as disk:
        data_dir = disk / "data"
        # A nearly full disk from the start: 1 MB free of 3 MB.
        ballast = fill(disk, leave=1 << 20)
        proc = subprocess.Popen(
            _run_cmd(data_dir, tiny_bundle, recording, "20"),
            env=agent_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        freed_at: list[int] = []

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line.rstrip("\n"))
                if "disk full" in line and not freed_at:
                    freed_at.append(len(lines))
                    # Full for a while (messages pile up in memory), then the streamer frees
                    # some space; the agent must notice on its own.
                    threading.Timer(3.0, ballast.unlink).start()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            code = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        watcher.join(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        stderr = "\n".join(lines)
        assert code == 0, stderr[-3000:]
        assert freed_at, f"the disk never filled up:\n{stderr[-2000:]}"
        assert "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
        full_lines = [line for line in lines if "disk full" in line]
        assert any("wait in memory" in line for line in full_lines), full_lines
        assert any("only" in line and "free" in line and "needs" in line for line in lines), (
            "the start on a nearly full disk says how much room is needed"
        )
        left = survivors(data_dir)
    assert left.keys == ids  # every message of the recording journaled, exactly once
    assert len(left.batch_ids) == len(set(left.batch_ids)), "a reading is in two parts"
    assert left.counted == left.scorable, "a scorable message is in no reading, or in two"
    assert left.states.get("assigned", 0) == 0 and left.states.get("set_aside", 0) == 0
    print(
        f"\ndisk full: {COUNT} messages, {len(left.batch_ids)} readings, disk filled at stderr "
        f"line {freed_at[0]}; full-disk lines: {len(full_lines)}\n" + "\n".join(lines[:12])
    )


@pytest.mark.timeout(300)
def test_a_start_on_a_full_disk_says_how_much_room_it_needs_and_starts_once_freed(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    recording = tmp_path / "chat.jsonl"
    ids = write_recording(recording, 400)
    with small_disk(tmp_path / "disk") as disk:
        data_dir = disk / "data"
        data_dir.mkdir()
        ballast = fill(disk, leave=0)
        cmd = _run_cmd(data_dir, tiny_bundle, recording, "max")
        first = subprocess.run(
            cmd, env=agent_env(tmp_path), capture_output=True, text=True, timeout=120
        )
        assert first.returncode == 1, first.stderr
        assert "Traceback" not in first.stderr, first.stderr
        full = [x for x in first.stderr.splitlines() if "disk full" in x]
        assert len(full) == 1, first.stderr
        (line,) = full
        assert "needs at least" in line and "free" in line, line
        ballast.unlink()  # the streamer frees space: the next start must just work
        second = subprocess.run(
            cmd, env=agent_env(tmp_path), capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr
        left = survivors(data_dir)
    assert left.keys == ids
    assert left.counted == left.scorable and len(set(left.batch_ids)) == len(left.batch_ids)
    print(f"\nfull at start: {line}")
