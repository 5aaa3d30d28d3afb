"""Issue 12, case 3: two agents with their own data folders but one `spool.dir`.

Before, both wrote the same session's parts into the shared spool (490 readings twice, both
copies bound for S3, in one run of two). Now the lock covers every folder an agent writes:
the second agent refuses at once with one line naming the holder, and once the first has
stopped it runs, under a session id of its own. Checked: the exact exit status and line, and
that the shared spool then holds each agent's readings once, each scorable message of each
agent's journal in exactly one reading.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.spool import iter_readings
from tests.hostile import agent_env, survivors, write_recording

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")


def _agent(data_dir: Path, spool: Path, model: Path, recording: Path, speed: str) -> list[str]:
    config = data_dir.parent / f"{data_dir.name}.toml"
    config.write_text(f'[spool]\ndir = "{spool.as_posix()}"\n', encoding="utf-8")
    return [
        sys.executable, "-m", "agent", "run", "--config", str(config),
        "--source", "replay", "--file", str(recording), "--speed", speed,
        "--data-dir", str(data_dir), "--model", str(model), "--quiet",
    ]  # fmt: skip


@pytest.mark.timeout(300)
def test_a_second_agent_on_the_same_spool_refuses_and_names_the_holder(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    recording = tmp_path / "chat.jsonl"
    write_recording(recording, 600, spacing=0.5)  # 300 s of chat: A is still running
    spool = tmp_path / "shared-spool"
    env = agent_env(tmp_path)
    first_cmd = _agent(tmp_path / "a", spool, tiny_bundle, recording, "10")
    first = subprocess.Popen(first_cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stderr is not None
        for line in first.stderr:
            if "started session" in line:
                break
        else:
            pytest.fail(f"the first agent never started (exit {first.wait()})")

        second = subprocess.run(
            _agent(tmp_path / "b", spool, tiny_bundle, recording, "max"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1, second.stderr
        said = [line for line in second.stderr.splitlines() if "already" in line]
        assert len(said) == 1, second.stderr
        assert f"pid {first.pid}" in said[0] and str(tmp_path / "a") in said[0], said[0]
        assert str(spool) in said[0] and "spool.dir" in said[0], said[0]
        assert "Traceback" not in second.stderr
        assert not (tmp_path / "b" / "journal.sqlite3").exists(), "refused before writing"
    finally:
        os.kill(first.pid, signal.SIGINT)  # Ctrl-C: drain and seal, as a streamer stops it
        first.wait(timeout=120)
        if first.stderr is not None:
            first.stderr.close()
    assert first.returncode == 0

    # With the first one stopped, the second runs, under a session of its own.
    again = subprocess.run(
        _agent(tmp_path / "b", spool, tiny_bundle, recording, "max"),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0, again.stderr
    a, b = survivors(tmp_path / "a", spool), survivors(tmp_path / "b", spool)
    # The readings are per session here: both agents' sessions sit in one spool.
    sessions = {r.session_id for r in iter_readings(spool)}
    assert len(sessions) == 2, sessions
    readings = list(iter_readings(spool))
    # (The same messages give the same batch id, so both sessions may share one: per session.)
    pairs = {(r.session_id, r.batch_id) for r in readings}
    assert len(pairs) == len(readings), "a reading is in two parts"
    by_session = {s: sum(r.message_count for r in readings if r.session_id == s) for s in sessions}
    assert sorted(by_session.values()) == sorted([a.scorable, b.scorable])
    assert len(b.keys) == 600
