"""Deferred sync: sealed spool parts go to S3, oldest first, each to exactly one key.

Three parts, each in its own module:

- `agent.upload_plan` (pure): which sealed parts wait, their keys (`agent.layout` derives
  them) and their order, from a directory listing;
- this module: the `Uploader`, which verifies each part, PUTs it through an `ObjectStore`,
  checks the reply and moves the part to uploaded/, with one backoff policy for every wait;
- `agent.s3store`: the `ObjectStore` on boto3, the only module that knows botocore; every
  third-party error reaches the uploader as `UploadError` (retry or not) and nothing else.

The upload state is the directory a part lives in: after a verified PUT the part (and its
checksum) is moved with ``os.replace`` to the same relative path under ``uploaded/``. A restart
resumes with whatever is still in ``sealed/``; a crash between the PUT and the move re-PUTs the
same bytes to the same key. Nothing else is recorded, so there is nothing else to get out of
step.

Before each upload the part's bytes are checked against the checksum recorded when it was
sealed (`agent.layout.verify_part`); a part that fails is moved to corrupt/ with a warning and
is never uploaded, and the pass goes on with the next part.

Integrity on the way: each part is one PutObject of bytes read once into memory; the request
carries Content-MD5 and x-amz-checksum-sha256 of exactly those bytes (S3 refuses the object if
either does not match) and the reply is checked too: its SHA-256 when the store returns one,
and its ETag, which for a single PUT without SSE-KMS is the hex MD5 of the bytes. A mismatch
is retried.

Failures: "retry" (offline, timeouts, a missed deadline, 5xx, throttling, clock skew, a
checksum mismatch on the way) waits with the pure backoff of `agent.backoff`; "fatal" (no such
bucket, access denied, refused or missing credentials, a bad endpoint) needs the user, so
`status()` says in one line what to do and the uploader tries again only every
`RetryPolicy.fatal_interval` seconds in case they fixed it. Either way nothing is deleted;
the parts wait on disk.

Threading: `Uploader.run(stop)` is meant for a daemon thread (or `asyncio.to_thread`); it never
touches the event loop, so ingestion and scoring never wait for the network. Waits use
`Event.wait(timeout)`: `wake()` ends a wait at once (set `stop`, then call `wake()`). Every
store call has a total deadline (`agent.s3store`), so a pass always ends.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from agent.backoff import backoff
from agent.layout import SEALED_DIR, UPLOADED_DIR, move_part, set_aside, verify_part
from agent.objectstore import (
    Digests,
    ObjectStore,
    StoredObject,
    UploadError,
    digests_of,
    integrity_problem,
)
from agent.upload_plan import UploadItem, list_sealed, plan, validate_prefix

__all__ = [
    "Digests",
    "ObjectStore",
    "RetryPolicy",
    "StoredObject",
    "SyncReport",
    "SyncState",
    "SyncStatus",
    "UploadError",
    "UploadItem",
    "Uploader",
    "classify",
    "plan_uploads",
    "validate_prefix",
]

log = logging.getLogger("captaflow.sync")

Failure = Literal["retry", "fatal"]


def __getattr__(name: str) -> Any:
    # `from agent.sync import S3ObjectStore` still works for call sites not yet moved to
    # agent.s3store, without making the uploader import botocore.
    if name == "S3ObjectStore":
        from agent.s3store import S3ObjectStore

        return S3ObjectStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plan_uploads(
    spool_dir: Path,
    prefix: str,
    *,
    on_skip: Callable[[Path], None] | None = None,
) -> list[UploadItem]:
    """Every sealed part waiting for upload, oldest first, with its key.

    Reads the directory listing and file sizes only. Files that do not follow the spool's
    layout are passed to `on_skip` and left alone.
    """
    spool_dir = Path(spool_dir)
    result = plan(spool_dir, list_sealed(spool_dir), prefix)
    if on_skip is not None:
        for relative in result.skipped:
            on_skip(spool_dir / SEALED_DIR / Path(*PurePosixPath(relative).parts))
    return result.items


class IntegrityMismatch(Exception):
    """The store's reply does not match the bytes sent (corrupted on the way): retry."""


def classify(exc: BaseException) -> Failure:
    """Is a failure of one part worth retrying soon ("retry") or does it need the user?

    The store's failures arrive as `UploadError` (its `retry` flag decides); a damaged reply
    and a part briefly locked (an antivirus scan on Windows) are retried; any other local
    error (an unreadable disk) and anything unexpected needs the user.
    """
    if isinstance(exc, UploadError):
        return "retry" if exc.retry else "fatal"
    if isinstance(exc, IntegrityMismatch | PermissionError | TimeoutError | ConnectionError):
        return "retry"
    return "fatal"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between attempts.

    Retryable failures: `agent.backoff.backoff(initial, 2, cap, jitter)`, a fresh series after
    each success. Fatal ones: every `fatal_interval` seconds.
    """

    initial: float = 1.0
    cap: float = 300.0
    fatal_interval: float = 300.0
    jitter: float = 0.5

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        return backoff(self.initial, 2.0, self.cap, self.jitter, rng)


class SyncState(StrEnum):
    IDLE = "idle"
    UPLOADING = "uploading"
    OFFLINE = "offline"  # retryable failures: waiting with backoff
    FAILING = "failing"  # needs the user: bucket, credentials, endpoint


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one `sync_once` pass did."""

    uploaded: list[str] = field(default_factory=list)  # keys, in upload order
    set_aside: list[str] = field(default_factory=list)  # one line per part moved to corrupt/
    failed: str | None = None  # one line, what to do; None when the pass finished
    waiting: int = 0  # sealed parts still waiting after the pass
    bytes_uploaded: int = 0
    fatal: bool = False  # `failed` needs the user (not just time)


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """A snapshot for the tray and `captaflow status`; cheap, safe to share across threads."""

    state: SyncState = SyncState.IDLE
    waiting_parts: int = 0
    last_error: str | None = None
    next_retry_in: float | None = None  # seconds until the next attempt, when one is planned
    uploaded_total: int = 0

    def describe(self) -> str:
        """One line, the form `AgentStatus.upload_state` holds."""
        if self.state is SyncState.UPLOADING:
            return f"uploading {self.waiting_parts} part(s)"
        if self.state in (SyncState.OFFLINE, SyncState.FAILING):
            retry = f" (next try in {self.next_retry_in:.0f} s)" if self.next_retry_in else ""
            return f"{self.state.value}: {self.last_error}{retry}"
        waiting = f", {self.waiting_parts} part(s) waiting" if self.waiting_parts else ""
        return f"idle{waiting}"


Progress = Callable[[int, int], None]


@dataclass(slots=True)
class _Pass:
    """What one pass has done so far."""

    uploaded: list[str] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)
    sent: int = 0
    count: int = 0  # parts dealt with: uploaded, gone, or set aside


# The store's messages are written for the agent, which retries by itself; a one-shot sync
# does not, so its words drop that promise.
_RETRY_PROMISE = re.compile(r"(?:[;:,]\s*|\s+)(?:offline\?\s*)?will retry\.?$")


def without_retry_promise(message: str) -> str:
    """`message` without its trailing "will retry" (for a one-shot sync, which does not)."""
    return _RETRY_PROMISE.sub("", message.strip())


class Uploader:
    """Uploads sealed parts oldest first and moves each to uploaded/ once verified.

    `one_shot`: a single `captaflow sync`, which does not retry; its log says "stopped"
    without promising a retry."""

    def __init__(
        self,
        spool_dir: Path,
        store: ObjectStore,
        prefix: str = "",
        *,
        interval: float = 30.0,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_report: Callable[[SyncReport], None] | None = None,
        one_shot: bool = False,
    ) -> None:
        self.one_shot = one_shot
        self.spool_dir = Path(spool_dir)
        self.store = store
        self.prefix = validate_prefix(prefix)
        self.interval = interval
        self.policy = policy or RetryPolicy()
        self.clock = clock
        # Called after every pass (e.g. to publish status); runs on the uploading thread.
        self.on_report = on_report
        self._wake = threading.Event()
        self._sync_lock = threading.Lock()  # one pass at a time (run thread vs `sync now`)
        self._status_lock = threading.Lock()
        self._state = SyncState.IDLE
        self._waiting = 0
        self._last_error: str | None = None
        self._next_attempt_at: float | None = None
        self._uploaded_total = 0
        self._skipped_logged: set[Path] = set()

    # status ------------------------------------------------------------------------------

    def status(self) -> SyncStatus:
        with self._status_lock:
            retry_in = None
            if self._next_attempt_at is not None and self._state in (
                SyncState.OFFLINE,
                SyncState.FAILING,
            ):
                retry_in = max(0.0, self._next_attempt_at - self.clock())
            return SyncStatus(
                state=self._state,
                waiting_parts=self._waiting,
                last_error=self._last_error,
                next_retry_in=retry_in,
                uploaded_total=self._uploaded_total,
            )

    def _set(self, **changes: Any) -> None:
        with self._status_lock:
            for name, value in changes.items():
                setattr(self, f"_{name}", value)

    def _note_skip(self, path: Path) -> None:
        if path not in self._skipped_logged:
            self._skipped_logged.add(path)
            log.warning("not uploading %s: it does not follow the spool's layout", path)

    # one pass ----------------------------------------------------------------------------

    def sync_once(
        self, progress: Progress | None = None, stop: threading.Event | None = None
    ) -> SyncReport:
        """Upload every waiting part, oldest first; stop at the first failure (order kept).

        Never raises for S3 or network trouble: the report says what failed and whether it
        needs the user. `progress(done, total)` is called before the first and after each part.
        """
        with self._sync_lock:
            report = self._sync_once(progress, stop)
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _sync_once(self, progress: Progress | None, stop: threading.Event | None) -> SyncReport:
        try:
            items = plan_uploads(self.spool_dir, self.prefix, on_skip=self._note_skip)
        except OSError as exc:
            message = (
                f"cannot list the spool {self.spool_dir / SEALED_DIR}: {exc.strerror or exc}; "
                f"check the folder exists and is readable (spool.dir)"
            )
            return self._finish(_Pass(), 0, message, fatal=True)
        total = len(items)
        self._set(waiting=total, state=SyncState.UPLOADING if items else self._state)
        if progress is not None:
            progress(0, total)
        done = _Pass()
        for item in items:
            if stop is not None and stop.is_set():
                break
            try:
                outcome = self._upload_one(item, done)
            except Exception as exc:
                kind = classify(exc)
                message = self._explain(exc, item)
                log.debug("upload of %s failed (%s): %s", item.key, kind, message)
                return self._finish(done, total - done.count, message, fatal=kind == "fatal")
            done.count += 1
            if outcome is not None:
                done.uploaded.append(item.key)
                done.sent += outcome
                with self._status_lock:
                    self._uploaded_total += 1
            with self._status_lock:
                self._waiting = total - done.count
            if progress is not None:
                progress(done.count, total)
        return self._finish(done, total - done.count, None, fatal=False)

    def _explain(self, exc: Exception, item: UploadItem) -> str:
        """One line for a failure of `item`: the store's own words, or ours for local trouble."""
        if isinstance(exc, UploadError):
            return str(exc)
        where = self.store.describe()
        if isinstance(exc, IntegrityMismatch):
            return f"upload of {item.key!r} to {where} arrived damaged ({exc}); will retry"
        if isinstance(exc, OSError) and exc.filename is not None:
            what = "locked by another program" if isinstance(exc, PermissionError) else "unreadable"
            then = "will retry" if classify(exc) == "retry" else "check the disk and spool.dir"
            return f"part {exc.filename} is {what} ({exc.strerror}); {then}"
        then = "will retry" if classify(exc) == "retry" else "run with --debug for details"
        return f"upload of {item.key!r} to {where} failed ({type(exc).__name__}); {then}"

    def _upload_one(self, item: UploadItem, done: _Pass) -> int | None:
        """Verify one part, PUT it, check the reply, move it to uploaded/.

        Bytes sent, or None if it vanished (another uploader took it) or failed its checksum
        (then it is in corrupt/ and `done.set_aside` says so)."""
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            # Moved by another uploader (e.g. `captaflow sync` beside the running agent).
            return None
        problem = verify_part(item.path, data)
        if problem is not None:
            try:
                _, message = set_aside(self.spool_dir, item.path, problem)
            except FileNotFoundError:
                return None
            log.warning("%s", message)
            done.set_aside.append(message)
            return None
        sent = digests_of(data)
        stored = self.store.put(item.key, data, sent)
        problem = integrity_problem(stored, sent)
        if problem is not None:
            raise IntegrityMismatch(problem)
        target = self.spool_dir / UPLOADED_DIR / Path(*PurePosixPath(item.relative).parts)
        # FileNotFoundError: another uploader moved it after its own PUT of the same bytes.
        with contextlib.suppress(FileNotFoundError):
            move_part(item.path, target)
        log.info("uploaded %s (%d bytes)", item.key, len(data))
        return len(data)

    def _finish(self, done: _Pass, waiting: int, failed: str | None, *, fatal: bool) -> SyncReport:
        with self._status_lock:
            previous_error = self._last_error
            self._waiting = waiting
            self._last_error = failed
            if failed is None:
                self._state = SyncState.IDLE
                self._next_attempt_at = None
            else:
                self._state = SyncState.FAILING if fatal else SyncState.OFFLINE
        if failed is None and previous_error is not None:
            log.info(
                "uploads resumed: %d part(s) uploaded, %d waiting", len(done.uploaded), waiting
            )
        elif failed is not None and self.one_shot:
            log.warning(
                "upload stopped: %s (%d part(s) waiting)", without_retry_promise(failed), waiting
            )
        elif failed is not None and failed != previous_error:
            log.warning("upload paused: %s (%d part(s) waiting)", failed, waiting)
        return SyncReport(
            uploaded=done.uploaded,
            set_aside=done.set_aside,
            failed=failed,
            waiting=waiting,
            bytes_uploaded=done.sent,
            fatal=fatal,
        )

    # the background loop -----------------------------------------------------------------

    def wake(self) -> None:
        """End the current wait now: new parts were sealed, the user asked, or stop was set."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Sync until `stop` is set: every `interval` s when all is well, with backoff when
        offline, every `policy.fatal_interval` s when the user must fix something.

        Returns within one wait after `stop` is set, at once if `wake()` is called too; an
        upload in flight finishes first (bounded by the connect/read timeouts).
        """
        delays: Iterator[float] | None = None
        while not stop.is_set():
            with self._sync_lock:
                report = self._sync_once(None, stop)
            if stop.is_set():
                break
            if report.failed is None:
                delays = None
                delay = self.interval
            elif report.fatal:
                delays = None
                delay = self.policy.fatal_interval
            else:
                if delays is None:
                    delays = self.policy.delays()
                delay = next(delays)
            self._set(next_attempt_at=self.clock() + delay)
            if self.on_report is not None:
                self.on_report(report)
            self._wake.wait(delay)
            self._wake.clear()
