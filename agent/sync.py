"""Deferred sync: sealed spool parts go to S3, oldest first, each to exactly one key.

The spool (see `agent.spool`) leaves sealed, immutable parts under
``<spool>/sealed/platform=<p>/channel=<c>/dt=<YYYY-MM-DD>/<session>-<part>.csv``. The path
relative to ``sealed/`` is the object key after ``{prefix}/``, so a part's key depends only on
its identity and uploading it twice writes the same object twice, never a second object.

The upload state is the directory a part lives in: after a verified PUT the part is moved with
``os.replace`` to the same relative path under ``uploaded/``. A restart resumes with whatever is
still in ``sealed/``; a crash between the PUT and the move re-PUTs the same bytes to the same
key. Nothing else is recorded, so there is nothing else to get out of step.

Order: "oldest first" means by the part's modification time (a sealed part is never written
again, so that is the moment it was sealed), ties broken by date, session and part number.

Integrity: parts are small (KBs to a few MBs, bounded by the spool's rotation), so each is one
PutObject of bytes read once into memory; the request carries Content-MD5 and
x-amz-checksum-sha256 of exactly those bytes (S3 refuses the object if either does not match)
and the reply is checked too: its SHA-256 when the store returns one, and its ETag, which for a
single PUT without SSE-KMS is the hex MD5 of the bytes. A mismatch is retried.

Failures are sorted by one function, `classify`: "retry" (offline, timeouts, 5xx, throttling,
clock skew, a checksum mismatch) waits with exponential backoff and full jitter (tenacity's
`wait_random_exponential`), "fatal" (no such bucket, access denied, refused or missing
credentials, a bad endpoint) needs the user, so `status()` says in one line what to do and the
uploader tries again only every `RetryPolicy.fatal_interval` seconds in case they fixed it.
Either way nothing is deleted or moved; the parts wait on disk.

Threading: `Uploader.run(stop)` is meant for a daemon thread (or `asyncio.to_thread`); it never
touches the event loop, so ingestion and scoring never wait for the network. Waits use
`Event.wait(timeout)`: `wake()` ends a wait at once (set `stop`, then call `wake()`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import tenacity
from botocore import exceptions as boto_errors
from botocore.config import Config

from agent import __version__
from agent.checks import bucket_name, key_prefix, require
from agent.credentials import aws_session
from agent.errors import SettingsError, SyncError
from agent.vocab import validate_name

log = logging.getLogger("captaflow.sync")

SEALED_DIR = "sealed"
UPLOADED_DIR = "uploaded"

# Seconds. Short enough that a dead link is noticed quickly, long enough for a few MB upstream
# on a busy home connection.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 10.0

Failure = Literal["retry", "fatal"]


# -- planning (pure: reads a directory listing, no network) ----------------------------------

_PART_NAME_RE = re.compile(r"^(?P<session>[a-z0-9_][a-z0-9_-]{0,99})-(?P<part>\d{5,})\.csv$")


@dataclass(frozen=True, slots=True)
class UploadItem:
    """One sealed part and the key it goes to."""

    path: Path
    key: str
    size: int
    relative: str  # path under sealed/ (and later uploaded/), '/'-separated
    sealed_at: float  # modification time of the sealed part, UNIX seconds


def validate_prefix(prefix: str) -> str:
    """The canonical key prefix (no leading or trailing '/'), or SettingsError.

    Empty is allowed (keys then start at `platform=`); the rule is `checks.key_prefix`, the
    same one the settings and Athena apply.
    """
    return str(require(key_prefix, prefix, "sync.prefix", what_to_do="fix sync.prefix or --prefix"))


def object_key(prefix: str, relative: str) -> str:
    """DESIGN.md's key: `{prefix}/platform=../channel=../dt=../{session}-{part}.csv`."""
    return f"{prefix}/{relative}" if prefix else relative


def parse_relative(relative: PurePosixPath) -> tuple[str, str, str, str, int] | None:
    """(platform, channel, dt, session, part) of a sealed part's relative path, else None.

    Only paths of exactly the spool's layout become keys: anything else (a stray file, an
    editor's backup) stays out of the bucket.
    """
    parts = relative.parts
    if len(parts) != 4:
        return None
    platform_dir, channel_dir, date_dir, name = parts
    values: list[str] = []
    for directory, field_name in ((platform_dir, "platform"), (channel_dir, "channel")):
        head, _, value = directory.partition("=")
        if head != field_name:
            return None
        try:
            if validate_name(value, field_name) != value:
                return None
        except ValueError:
            return None
        values.append(value)
    head, _, day = date_dir.partition("=")
    if head != "dt" or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        return None
    try:
        datetime.strptime(day, "%Y-%m-%d")
    except ValueError:
        return None
    match = _PART_NAME_RE.match(name)
    if match is None:
        return None
    return values[0], values[1], day, match["session"], int(match["part"])


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
    canonical_prefix = validate_prefix(prefix)
    sealed = Path(spool_dir) / SEALED_DIR
    if not sealed.is_dir():
        return []
    ranked: list[tuple[tuple[int, str, str, int, str], UploadItem]] = []
    for path in sealed.rglob("*"):
        try:
            if not path.is_file():
                continue
            stat = path.stat()
        except FileNotFoundError:  # moved or pruned while we were listing
            continue
        relative = PurePosixPath(path.relative_to(sealed).as_posix())
        identity = parse_relative(relative)
        if identity is None:
            if on_skip is not None:
                on_skip(path)
            continue
        _platform, _channel, day, session, part = identity
        item = UploadItem(
            path=path,
            key=object_key(canonical_prefix, str(relative)),
            size=stat.st_size,
            relative=str(relative),
            sealed_at=stat.st_mtime,
        )
        ranked.append(((stat.st_mtime_ns, day, session, part, str(relative)), item))
    ranked.sort(key=lambda pair: pair[0])
    return [item for _, item in ranked]


# -- integrity (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digests:
    md5_hex: str
    md5_b64: str  # Content-MD5
    sha256_b64: str  # x-amz-checksum-sha256


def digests_of(data: bytes) -> Digests:
    md5 = hashlib.md5(data, usedforsecurity=False).digest()
    sha256 = hashlib.sha256(data).digest()
    return Digests(md5.hex(), base64.b64encode(md5).decode(), base64.b64encode(sha256).decode())


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What the store says it holds for a key."""

    key: str
    etag: str  # without quotes
    sha256_b64: str | None = None  # None when the store keeps no SHA-256
    etag_is_md5: bool = True  # False for SSE-KMS objects, whose ETag is not the MD5
    size: int | None = None


def integrity_problem(stored: StoredObject, sent: Digests) -> str | None:
    """Why the stored object is not the bytes we sent, or None when it checks out."""
    if stored.sha256_b64 is not None and stored.sha256_b64 != sent.sha256_b64:
        return f"SHA-256 {stored.sha256_b64} != sent {sent.sha256_b64}"
    if stored.etag_is_md5 and stored.etag.lower() != sent.md5_hex:
        return f"ETag {stored.etag} != MD5 {sent.md5_hex}"
    return None


# -- failures: one place decides what is worth a retry ---------------------------------------


class UploadError(SyncError):
    """An upload failed; `retry` says whether waiting and trying again can help.

    The message is one line that names the bucket, key, path or endpoint and says what to do;
    it never holds a credential.
    """

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class IntegrityMismatch(Exception):
    """The store's reply does not match the bytes sent (corrupted on the way): retry."""


# Error codes S3 (and compatible stores) send for conditions that pass on their own.
_RETRY_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "OperationAborted",
        "BadDigest",
        "InvalidDigest",
        "XAmzContentSHA256Mismatch",
        "IncompleteBody",
    }
)


def _error_code(exc: boto_errors.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: boto_errors.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def classify(exc: BaseException) -> Failure:
    """Is `exc` worth retrying soon ("retry") or does it need the user ("fatal")?

    retry: no network, connection refused or reset, timeouts, HTTP 5xx, 408, 429, throttling
    (SlowDown), RequestTimeTooSkewed, checksum mismatches, a local part briefly locked (an
    antivirus scan on Windows).
    fatal: NoSuchBucket, AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, expired
    tokens, missing credentials, a bad endpoint URL or region, TLS failures (a proxy or a
    wrong clock), any other 4xx, and anything unexpected. "Fatal" never drops data: the
    uploader keeps the parts and tries again every few minutes.
    """
    if isinstance(exc, UploadError):
        return "retry" if exc.retry else "fatal"
    if isinstance(exc, IntegrityMismatch):
        return "retry"
    if isinstance(exc, boto_errors.ClientError):
        code = _error_code(exc)
        status = _http_status(exc)
        if code in _RETRY_CODES or status >= 500 or status in (408, 429):
            return "retry"
        return "fatal"
    if isinstance(exc, boto_errors.SSLError):
        return "fatal"
    if isinstance(exc, boto_errors.ConnectionError | boto_errors.HTTPClientError):
        # EndpointConnectionError (offline, DNS, refused), ConnectTimeoutError,
        # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError.
        return "retry"
    if isinstance(exc, boto_errors.IncompleteReadError):
        return "retry"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "retry"
    if isinstance(exc, PermissionError):
        return "retry"
    return "fatal"


def _display_endpoint(endpoint: str | None) -> str:
    """The endpoint without any user:password part, for messages."""
    if not endpoint:
        return "AWS S3"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else endpoint


def explain(exc: BaseException, *, bucket: str, key: str = "", endpoint: str | None = None) -> str:
    """One line for the user: what went wrong with which bucket/endpoint, and what to do.

    Built from error codes and our own words only, never from a raw exception text that
    could echo a header or a credential.
    """
    where = _display_endpoint(endpoint)
    if isinstance(exc, UploadError):
        return str(exc)
    if isinstance(exc, IntegrityMismatch):
        return f"upload of {key!r} to bucket {bucket!r} arrived damaged ({exc}); will retry"
    if isinstance(exc, boto_errors.ClientError):
        code = _error_code(exc)
        status = _http_status(exc)
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist: create it or fix sync.bucket (--bucket)"
        if code == "InvalidBucketName":
            return f"bucket name {bucket!r} is not valid: fix sync.bucket (--bucket)"
        if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem"):
            return (
                f"access to bucket {bucket!r} was denied ({code}): allow s3:PutObject on "
                f"arn:aws:s3:::{bucket}/* for these AWS credentials, or use another profile "
                f"(AWS_PROFILE)"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (
                f"AWS credentials were refused by {where} ({code}): run `aws configure`, set "
                f"AWS_PROFILE, or store the right keys in the OS keyring (service 'CaptaFlow')"
            )
        if code in (
            "ExpiredToken",
            "InvalidToken",
            "TokenRefreshRequired",
            "ExpiredTokenException",
        ):
            return (
                f"the AWS session token has expired ({code}): run `aws sso login` or refresh "
                f"the credentials"
            )
        if code in (
            "PermanentRedirect",
            "AuthorizationHeaderMalformed",
            "IllegalLocationConstraintException",
        ):
            region = exc.response.get("Error", {}).get("Region") or exc.response.get(
                "ResponseMetadata", {}
            ).get("HTTPHeaders", {}).get("x-amz-bucket-region")
            hint = f"{region!r}" if region else "the bucket's region"
            return f"bucket {bucket!r} is in another region: set sync.region to {hint}"
        if code == "RequestTimeTooSkewed":
            return (
                "this PC's clock is off by more than 15 minutes, so S3 refuses requests: set "
                "the time automatically in the system settings; will retry"
            )
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"):
            return f"{where} asks to slow down ({code}); will retry"
        if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
            return f"upload of {key!r} arrived damaged ({code}); will retry"
        if classify(exc) == "retry":
            return f"{where} answered HTTP {status} {code or 'error'}; will retry"
        return (
            f"{where} refused the upload to bucket {bucket!r} (HTTP {status} {code or 'error'}): "
            f"check sync.bucket, sync.region and the AWS credentials"
        )
    if isinstance(exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
        return (
            "no AWS credentials found: run `aws configure`, set AWS_PROFILE, or store keys in "
            "the OS keyring (service 'CaptaFlow', entries aws_access_key_id and "
            "aws_secret_access_key)"
        )
    if isinstance(
        exc,
        boto_errors.CredentialRetrievalError
        | boto_errors.TokenRetrievalError
        | boto_errors.SSOError,
    ):
        return (
            f"AWS credentials could not be loaded ({type(exc).__name__}): run `aws sso login` "
            f"or `aws configure`, or check AWS_PROFILE"
        )
    if isinstance(exc, boto_errors.NoRegionError):
        return "no AWS region set: set sync.region (for example 'eu-west-1') or AWS_REGION"
    if isinstance(exc, boto_errors.SSLError):
        return f"TLS with {where} failed: check this PC's clock, any HTTPS proxy, or AWS_CA_BUNDLE"
    if isinstance(exc, boto_errors.ConnectTimeoutError | boto_errors.ReadTimeoutError):
        return f"{where} did not answer in time ({type(exc).__name__}); will retry"
    if isinstance(exc, boto_errors.ConnectionError | boto_errors.HTTPClientError):
        return f"cannot reach {where} ({type(exc).__name__}): offline? will retry"
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"cannot reach {where} ({type(exc).__name__}): offline? will retry"
    if isinstance(exc, PermissionError):
        return f"{exc.filename or key} is locked by another program; will retry"
    return (
        f"upload to bucket {bucket!r} failed unexpectedly ({type(exc).__name__}): run "
        f"`captaflow sync --debug` for details"
    )


# -- the object store ------------------------------------------------------------------------


class ObjectStore(Protocol):
    """Where parts go. `put` raises `UploadError` (or anything `classify` understands)."""

    def put(self, key: str, data: bytes, digests: Digests) -> StoredObject: ...

    def head(self, key: str) -> StoredObject | None: ...

    def describe(self) -> str: ...


def validate_bucket(bucket: str) -> str:
    return str(require(bucket_name, bucket, "sync.bucket", what_to_do="fix sync.bucket (--bucket)"))


def validate_endpoint(endpoint_url: str) -> str:
    parts = urlsplit(endpoint_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"endpoint URL {_display_endpoint(endpoint_url)!r} is not valid: use "
            f"http(s)://host[:port], for example https://s3.eu-west-1.amazonaws.com; fix "
            f"AWS_ENDPOINT_URL"
        )
    return endpoint_url.strip()


class S3ObjectStore:
    """An S3 (or S3-compatible) bucket, through boto3.

    `endpoint_url=None` leaves the endpoint to boto3, which honours AWS_ENDPOINT_URL and
    AWS_ENDPOINT_URL_S3. Credentials: the standard AWS chain, else the OS keyring (see
    `agent.credentials`). botocore does not retry (max_attempts=1): the backoff is the
    uploader's, so one policy governs every wait. The client is built on first use and
    rebuilt after a credential or configuration failure, so fixing `~/.aws` or the keyring
    takes effect without a restart.
    """

    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        session: Any | None = None,
    ) -> None:
        self.bucket = validate_bucket(bucket)
        self.region = region or None
        configured = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.endpoint_url = validate_endpoint(configured) if configured else None
        self._explicit_endpoint = endpoint_url is not None
        self._session = session
        self._client: Any | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        where = _display_endpoint(self.endpoint_url) if self.endpoint_url else "AWS S3"
        return f"s3://{self.bucket} at {where}"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                session = aws_session(self.region, session=self._session)
                config = Config(
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                    retries={"mode": "standard", "total_max_attempts": 1},
                    user_agent_extra=f"CaptaFlow/{__version__}",
                )
                region = self.region or session.region_name or "us-east-1"
                kwargs: dict[str, Any] = {"region_name": region, "config": config}
                if self._explicit_endpoint:
                    kwargs["endpoint_url"] = self.endpoint_url
                self._client = session.client("s3", **kwargs)
            return self._client

    def _fail(self, exc: Exception, key: str) -> UploadError:
        kind = classify(exc)
        if kind == "fatal":
            # Credentials or configuration may be fixed while we wait: resolve them afresh.
            with self._lock:
                self._client = None
        return UploadError(
            explain(exc, bucket=self.bucket, key=key, endpoint=self.endpoint_url),
            retry=kind == "retry",
        )

    def put(self, key: str, data: bytes, digests: Digests) -> StoredObject:
        try:
            reply = self._get_client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="text/csv",
                ContentMD5=digests.md5_b64,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digests.sha256_b64,
            )
        except (boto_errors.BotoCoreError, boto_errors.ClientError, ValueError, OSError) as exc:
            raise self._fail(exc, key) from exc
        return _stored_from_reply(key, reply, size=len(data))

    def head(self, key: str) -> StoredObject | None:
        try:
            reply = self._get_client().head_object(
                Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
        except boto_errors.ClientError as exc:
            if _http_status(exc) == 404 and _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, key) from exc
        except (boto_errors.BotoCoreError, ValueError, OSError) as exc:
            raise self._fail(exc, key) from exc
        return _stored_from_reply(key, reply, size=reply.get("ContentLength"))


def _stored_from_reply(key: str, reply: dict[str, Any], *, size: int | None) -> StoredObject:
    etag = str(reply.get("ETag", "")).strip('"')
    encryption = reply.get("ServerSideEncryption")
    return StoredObject(
        key=key,
        etag=etag,
        sha256_b64=reply.get("ChecksumSHA256"),
        # SSE-KMS (and multipart) ETags are not the MD5 of the bytes.
        etag_is_md5=encryption in (None, "AES256") and bool(re.fullmatch(r"[0-9a-f]{32}", etag)),
        size=size,
    )


# -- backoff ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between attempts.

    Retryable failures: full-jitter exponential backoff, a random wait in
    [0, min(cap, initial * 2**(attempt-1))]. Fatal ones: every `fatal_interval` seconds.
    """

    initial: float = 1.0
    cap: float = 300.0
    fatal_interval: float = 300.0

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failure in a row (1-based)."""
        wait = tenacity.wait_random_exponential(multiplier=self.initial, max=self.cap)
        state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempt)
        return float(wait(state))


# -- the uploader ----------------------------------------------------------------------------


class SyncState(StrEnum):
    IDLE = "idle"
    UPLOADING = "uploading"
    OFFLINE = "offline"  # retryable failures: waiting with backoff
    FAILING = "failing"  # needs the user: bucket, credentials, endpoint


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one `sync_once` pass did."""

    uploaded: list[str] = field(default_factory=list)  # keys, in upload order
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


class Uploader:
    """Uploads sealed parts oldest first and moves each to uploaded/ once verified."""

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
    ) -> None:
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
            plan = plan_uploads(self.spool_dir, self.prefix, on_skip=self._note_skip)
        except OSError as exc:
            message = (
                f"cannot list the spool {self.spool_dir / SEALED_DIR}: {exc.strerror or exc}; "
                f"check the folder exists and is readable (spool.dir)"
            )
            return self._finish([], 0, 0, message, fatal=True)
        total = len(plan)
        self._set(waiting=total, state=SyncState.UPLOADING if plan else self._state)
        if progress is not None:
            progress(0, total)
        uploaded: list[str] = []
        sent_bytes = 0
        gone = 0
        for item in plan:
            if stop is not None and stop.is_set():
                break
            try:
                outcome = self._upload_one(item)
            except Exception as exc:
                kind = classify(exc)
                message = self._explain(exc, item)
                log.debug("upload of %s failed (%s): %s", item.key, kind, message)
                waiting = total - len(uploaded) - gone
                return self._finish(uploaded, sent_bytes, waiting, message, fatal=kind == "fatal")
            if outcome is None:
                gone += 1
            else:
                uploaded.append(item.key)
                sent_bytes += outcome
                with self._status_lock:
                    self._uploaded_total += 1
                    self._waiting = total - len(uploaded) - gone
            if progress is not None:
                progress(len(uploaded) + gone, total)
        return self._finish(uploaded, sent_bytes, total - len(uploaded) - gone, None, fatal=False)

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

    def _upload_one(self, item: UploadItem) -> int | None:
        """PUT one part, verify it, move it to uploaded/. Bytes sent, or None if it vanished."""
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            # Moved by another uploader (e.g. `captaflow sync` beside the running agent).
            return None
        sent = digests_of(data)
        stored = self.store.put(item.key, data, sent)
        problem = integrity_problem(stored, sent)
        if problem is not None:
            raise IntegrityMismatch(problem)
        target = self.spool_dir / UPLOADED_DIR / Path(*PurePosixPath(item.relative).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        # FileNotFoundError: another uploader moved it after its own PUT of the same bytes.
        with contextlib.suppress(FileNotFoundError):
            os.replace(item.path, target)
        log.info("uploaded %s (%d bytes)", item.key, len(data))
        return len(data)

    def _finish(
        self, uploaded: list[str], sent: int, waiting: int, failed: str | None, *, fatal: bool
    ) -> SyncReport:
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
            log.info("uploads resumed: %d part(s) uploaded, %d waiting", len(uploaded), waiting)
        elif failed is not None and failed != previous_error:
            log.warning("upload paused: %s (%d part(s) waiting)", failed, waiting)
        return SyncReport(uploaded, failed, waiting, sent, fatal)

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
        failures_in_a_row = 0
        while not stop.is_set():
            with self._sync_lock:
                report = self._sync_once(None, stop)
            if stop.is_set():
                break
            if report.failed is None:
                failures_in_a_row = 0
                delay = self.interval
            elif report.fatal:
                failures_in_a_row = 0
                delay = self.policy.fatal_interval
            else:
                failures_in_a_row += 1
                delay = self.policy.retry_delay(failures_in_a_row)
            self._set(next_attempt_at=self.clock() + delay)
            if self.on_report is not None:
                self.on_report(report)
            self._wake.wait(delay)
            self._wake.clear()
