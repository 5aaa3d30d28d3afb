"""One agent per data folder, and no stale lock after a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.single_instance import InstanceLock, SingleInstance, acquire_or_explain
from agent.tray import run_tray

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from pathlib import Path
from agent.single_instance import InstanceLock
lock = InstanceLock(Path(sys.argv[1]))
assert lock.acquire()
print("held", flush=True)
sys.stdin.read()  # hold until killed or stdin closes
"""


@contextlib.contextmanager
def holding(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock at `path` for the duration of the block."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "held"
            yield holder
        finally:
            holder.kill()
            holder.wait(timeout=10)


def test_a_second_lock_in_the_same_process_is_refused_until_released(tmp_path: Path) -> None:
    first, second = InstanceLock(tmp_path / "a.lock"), InstanceLock(tmp_path / "a.lock")
    assert first.acquire() and first.held
    assert not second.acquire() and not second.held
    assert second.holder_pid() == os.getpid()
    first.release()
    first.release()  # idempotent
    assert second.acquire()
    second.release()


def test_another_process_holding_it_is_named_by_pid(tmp_path: Path) -> None:
    with holding(tmp_path / "data" / "captaflow.lock") as holder:
        lock, message = acquire_or_explain(tmp_path / "data" / "captaflow.lock")
        assert lock is None
        assert message == f"CaptaFlow is already running (pid {holder.pid})"
        with SingleInstance(tmp_path / "data") as instance:
            assert not instance.acquired and instance.holder_pid == holder.pid


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX; Windows frees locks too")
def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / "captaflow.lock"
    with holding(path) as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    assert path.exists()  # the file stays; the OS lock went with the process
    with SingleInstance(tmp_path) as instance:
        assert instance.acquired and instance.holder_pid == os.getpid()
        assert InstanceLock(path).holder_pid() == os.getpid()


def test_a_second_tray_launch_says_so_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(tmp_path / "config.toml", {"data_dir": tmp_path / "data"})
    with holding(settings.paths.lock_file) as holder:
        # run_tray returns before it touches the display or builds an agent.
        assert run_tray(settings, open_report=lambda: None) == 0
    assert capsys.readouterr().err.strip() == f"CaptaFlow is already running (pid {holder.pid})"
    assert not (tmp_path / "config.toml").exists()
