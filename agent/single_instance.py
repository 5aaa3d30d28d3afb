"""One agent per data folder: a lock file held with an OS lock for the life of the process.

The OS drops the lock when the process ends, however it ends (Quit, a crash, `kill -9`, a
power cut), so there is never a stale lock to clean up; the pid written in the file is only
there to tell the user which process holds it.

Windows: `msvcrt.locking` on one byte far past the pid text, so other processes can still
read the pid while the lock is held. Elsewhere: `fcntl.flock` on the whole file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import TracebackType

# The locked byte sits past anything written in the file (Windows locks byte ranges, and a
# locked range cannot be read by others).
_LOCK_OFFSET = 4096


class InstanceLock:
    """`acquire()` returns False when another process holds the lock; `release()` is idempotent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return False
        self._fd = fd
        # Only the holder writes, so a reader never sees a half-written pid from a loser.
        pid_text = f"{os.getpid()}\n".encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, pid_text.ljust(32))
        os.fsync(fd)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def holder_pid(self) -> int | None:
        """The pid written by whoever holds (or last held) the lock, if readable."""
        try:
            with self.path.open("rb") as handle:
                first = handle.read(32).strip()
            return int(first) if first else None
        except (OSError, ValueError):
            return None

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        # Closing the handle releases the lock anyway.
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def already_running_message(lock: InstanceLock) -> str:
    pid = lock.holder_pid()
    return f"CaptaFlow is already running (pid {pid})" if pid else "CaptaFlow is already running"


LOCK_FILE_NAME = "captaflow.lock"


class SingleInstance:
    """`with SingleInstance(data_dir) as lock:` — `lock.acquired` tells whether we hold it.

    When we do not, `lock.holder_pid` names the process that does.
    """

    def __init__(self, data_dir: Path) -> None:
        self._lock = InstanceLock(Path(data_dir) / LOCK_FILE_NAME)
        self.acquired = False
        self.holder_pid: int | None = None

    def __enter__(self) -> SingleInstance:
        self.acquired = self._lock.acquire()
        self.holder_pid = os.getpid() if self.acquired else self._lock.holder_pid()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._lock.release()
        self.acquired = False


def acquire_or_explain(path: Path) -> tuple[InstanceLock | None, str]:
    """The held lock and "", or None and the line to show the user (exit status 0)."""
    lock = InstanceLock(path)
    if lock.acquire():
        return lock, ""
    return None, already_running_message(lock)
