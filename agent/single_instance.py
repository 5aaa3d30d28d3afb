"""One agent per folder it writes: lock files held with an OS lock for the life of the process.

An agent writes three places: its data folder, the spool folder and the journal's folder (by
default both inside the data folder, but `spool.dir` can point anywhere, for example at a
folder shared with another PC). Two agents writing one spool would write parts side by side
and race for the same part names, so the lock covers each of those folders: `SingleInstance`
takes a `captaflow.lock` in every one (each folder once, in a fixed order) and refuses, naming
the holder, when any is taken.

The OS drops a lock when the process ends, however it ends (Quit, a crash, `kill -9`, a
power cut), so there is never a stale lock to clean up; the pid and data folder written in the
file are only there to tell the user which process holds it. Writing them is best effort: on
a full disk the lock still holds, only the holder's name is missing.

Windows: `msvcrt.locking` on one byte far past the pid text, so other processes can still
read the pid while the lock is held. Elsewhere: `fcntl.flock` on the whole file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

# The locked byte sits past anything written in the file (Windows locks byte ranges, and a
# locked range cannot be read by others).
_LOCK_OFFSET = 4096


class InstanceLock:
    """`acquire()` returns False when another process holds the lock; `release()` is idempotent."""

    def __init__(self, path: Path, owner: str = "") -> None:
        self.path = path
        self.owner = owner  # written after the pid: the holder's data folder
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
        text = f"{os.getpid()}\n{self.owner}\n".encode("utf-8", "replace")[: _LOCK_OFFSET - 1]
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, text)
            os.fsync(fd)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's name is missing
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def _holder_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                return handle.read(_LOCK_OFFSET - 1).decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    def holder_pid(self) -> int | None:
        """The pid written by whoever holds (or last held) the lock, if readable."""
        lines = self._holder_lines()
        try:
            return int(lines[0].strip()) if lines and lines[0].strip() else None
        except ValueError:
            return None

    def holder_owner(self) -> str:
        """The data folder written by whoever holds (or last held) the lock ("" if unknown)."""
        lines = self._holder_lines()
        return lines[1].strip() if len(lines) > 1 else ""

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


def agent_folders(settings: Any) -> list[Path]:
    """Every folder an agent with these settings writes: data, spool, journal."""
    return [
        Path(settings.data_dir),
        Path(settings.spool.dir),
        Path(settings.journal_path).parent,
    ]


class SingleInstance:
    """`with SingleInstance(data_dir, spool_dir, ...) as lock:` — `lock.acquired` tells whether
    we hold every folder's lock.

    When we do not, `holder_pid` names the process that holds the first folder found taken
    (`taken`), and `message` is the one line to show. Folders are locked once each (after
    resolving them) in a fixed order, so two agents can never each hold half.
    """

    def __init__(self, data_dir: Path, *more: Path) -> None:
        self.data_dir = Path(data_dir)
        seen: dict[Path, Path] = {}
        for folder in (self.data_dir, *map(Path, more)):
            key = _resolved(folder)
            seen.setdefault(key, folder)
        self._order = sorted(seen.items(), key=lambda pair: str(pair[0]))
        self._locks: list[InstanceLock] = []
        self.acquired = False
        self.holder_pid: int | None = None
        self.taken: Path | None = None
        self.message = ""

    def acquire(self) -> bool:
        """Take every folder's lock, or none (then `message` says who holds which)."""
        if self._locks:
            return True
        owner = str(_resolved(self.data_dir))
        for _key, folder in self._order:
            lock = InstanceLock(folder / LOCK_FILE_NAME, owner=owner)
            if lock.acquire():
                self._locks.append(lock)
                continue
            self.acquired = False
            self.taken = folder
            self.holder_pid = lock.holder_pid()
            self.message = self._explain(folder, lock)
            self._release()
            return False
        self.acquired = True
        self.holder_pid = os.getpid()
        return True

    def release(self) -> None:
        self._release()
        self.acquired = False

    def __enter__(self) -> SingleInstance:
        self.acquire()
        return self

    def _explain(self, folder: Path, lock: InstanceLock) -> str:
        pid = lock.holder_pid()
        who = f"pid {pid}" if pid else "another process"
        if _resolved(folder) == _resolved(self.data_dir):
            return already_running_message(lock)
        theirs = lock.holder_owner()
        data = f", data folder {theirs}" if theirs else ""
        return (
            f"another CaptaFlow ({who}{data}) already writes {folder}: stop it, or give this "
            "agent its own spool.dir"
        )

    def _release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def _resolved(folder: Path) -> Path:
    try:
        return Path(folder).resolve()
    except OSError:
        return Path(os.path.abspath(folder))


def acquire_or_explain(
    path: Path, *, also: tuple[Path, ...] | list[Path] = ()
) -> tuple[SingleInstance | None, str]:
    """The held locks of the data folder whose lock file is `path` and of the folders `also`
    (spool, journal; see `agent_folders`), and ""; or None and the line to show the user."""
    instance = SingleInstance(Path(path).parent, *also)
    if instance.acquire():
        return instance, ""
    return None, instance.message
