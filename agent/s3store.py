"""S3 through boto3: the one module that knows botocore, behind `agent.objectstore`.

`S3ObjectStore` implements the `ObjectStore` interface. Every botocore (and socket) error is
translated here, once, into `UploadError` with a one-line message and a `retry` flag
(`classify` decides which, `explain` says what to do); nothing botocore-shaped leaves this
module, in the manner of httpcore's `map_exceptions`.

Deadlines: botocore's `connect_timeout` and `read_timeout` are idle timeouts, restarted by
every byte, so a server (or a broken proxy) trickling one byte every few seconds would hold a
request for ever; name resolution and credential look-ups (SSO, instance metadata) are not
bounded by them at all. So every call also has a TOTAL deadline: it runs on a worker thread
and the caller waits at most `request_deadline` seconds (plus the time the part needs at
`MIN_UPLOAD_RATE` for a PUT). A call that misses it is reported as a retryable failure and the
client is rebuilt, so the next try starts on a new connection. The late call's thread is a
daemon that ends with its socket; while one is still running no new call is started (the store
says so), so a stalled server can never pile threads up.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from botocore import exceptions as boto_errors
from botocore.config import Config

from agent import __version__
from agent.checks import bucket_name, require
from agent.credentials import aws_session
from agent.errors import SettingsError
from agent.objectstore import Digests, StoredObject, UploadError

__all__ = [
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "REQUEST_DEADLINE",
    "S3ObjectStore",
    "classify",
    "explain",
    "validate_bucket",
    "validate_endpoint",
]

T = TypeVar("T")

Failure = Literal["retry", "fatal"]

# Idle timeouts, seconds: short enough that a dead link is noticed quickly.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 10.0
# Total deadline of one request, seconds, whatever the server does meanwhile; a PUT gets the
# time its bytes need at MIN_UPLOAD_RATE on top (a 5 MB part: 20 + 80 s).
REQUEST_DEADLINE = 20.0
MIN_UPLOAD_RATE = 64 * 1024  # bytes per second


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


def _where_keys_go(entries: str = "", *, right: str = "") -> str:
    """Where to put AWS keys besides `aws configure` / AWS_PROFILE: the OS keyring, unless
    CAPTAFLOW_NO_KEYRING turned it off (then only the environment and ~/.aws apply)."""
    from agent.secrets import NO_KEYRING_ENV, keyring_disabled

    if keyring_disabled():
        return (
            f"or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment or "
            f"~/.aws/credentials (the OS keyring is off: {NO_KEYRING_ENV} is set)"
        )
    return f"or store {right or ''}keys in the OS keyring (service 'CaptaFlow'{entries})"


def explain(exc: BaseException, *, bucket: str, key: str = "", endpoint: str | None = None) -> str:
    """One line for the user: what went wrong with which bucket/endpoint, and what to do.

    Built from error codes and our own words only, never from a raw exception text that
    could echo a header or a credential.
    """
    where = _display_endpoint(endpoint)
    if isinstance(exc, UploadError):
        return str(exc)
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
                f"AWS_PROFILE, {_where_keys_go(right='the right ')}"
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
        entries = ", entries aws_access_key_id and aws_secret_access_key"
        return (
            f"no AWS credentials found: run `aws configure`, set AWS_PROFILE, "
            f"{_where_keys_go(entries)}"
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


def validate_endpoint(endpoint_url: str) -> str:
    parts = urlsplit(endpoint_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"endpoint URL {_display_endpoint(endpoint_url)!r} is not valid: use "
            f"http(s)://host[:port], for example https://s3.eu-west-1.amazonaws.com; fix "
            f"AWS_ENDPOINT_URL"
        )
    return endpoint_url.strip()


def validate_bucket(bucket: str) -> str:
    if not bucket.strip():
        raise SettingsError("no bucket set: pass --bucket NAME or set sync.bucket")
    return str(require(bucket_name, bucket, "sync.bucket", what_to_do="fix sync.bucket (--bucket)"))


class S3ObjectStore:
    """An S3 (or S3-compatible) bucket, through boto3.

    `endpoint_url=None` leaves the endpoint to boto3, which honours AWS_ENDPOINT_URL and
    AWS_ENDPOINT_URL_S3. Credentials: the standard AWS chain, else the OS keyring (see
    `agent.credentials`). botocore does not retry (max_attempts=1): the backoff is the
    uploader's, so one policy governs every wait. The client is built on first use and
    rebuilt after a credential or configuration failure or a missed deadline, so fixing
    `~/.aws` or the keyring takes effect without a restart.
    """

    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        session: Any | None = None,
        request_deadline: float = REQUEST_DEADLINE,
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
        self.request_deadline = request_deadline
        self._client: Any | None = None
        self._lock = threading.Lock()
        self._late: threading.Thread | None = None  # a call that missed its deadline

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

    def _fail(self, exc: BaseException, key: str) -> UploadError:
        kind = classify(exc)
        if kind == "fatal":
            # Credentials or configuration may be fixed while we wait: resolve them afresh.
            with self._lock:
                self._client = None
        return UploadError(
            explain(exc, bucket=self.bucket, key=key, endpoint=self.endpoint_url),
            retry=kind == "retry",
        )

    def _within_deadline(self, what: str, key: str, seconds: float, call: Callable[[], T]) -> T:
        """`call()` on a worker thread, waited for at most `seconds`; errors translated."""
        with self._lock:
            if self._late is not None and self._late.is_alive():
                raise UploadError(
                    f"{self.describe()} has still not answered an earlier request that missed "
                    f"its deadline; will retry",
                    retry=True,
                )
            self._late = None
        outcome: list[T] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def work() -> None:
            try:
                outcome.append(call())
            except BaseException as exc:  # handed to the waiting thread, translated there
                failure.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=work, name="captaflow-s3-request", daemon=True)
        worker.start()
        if not done.wait(seconds):
            with self._lock:
                self._late = worker
                self._client = None  # the next try gets a fresh connection
            raise UploadError(
                f"{self.describe()} did not finish the {what} of {key!r} within {seconds:.0f} s "
                "(a stalled or very slow link); will retry",
                retry=True,
            )
        if failure:
            raise self._fail(failure[0], key) from failure[0]
        return outcome[0]

    def put(self, key: str, data: bytes, digests: Digests) -> StoredObject:
        def call() -> StoredObject:
            reply = self._get_client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="text/csv",
                ContentMD5=digests.md5_b64,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digests.sha256_b64,
            )
            return _stored_from_reply(key, reply, size=len(data))

        deadline = self.request_deadline + len(data) / MIN_UPLOAD_RATE
        return self._within_deadline("upload", key, deadline, call)

    def head(self, key: str) -> StoredObject | None:
        def call() -> StoredObject | None:
            try:
                reply = self._get_client().head_object(
                    Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
                )
            except boto_errors.ClientError as exc:
                if _http_status(exc) == 404 and _error_code(exc) in (
                    "404",
                    "NoSuchKey",
                    "NotFound",
                ):
                    return None
                raise
            return _stored_from_reply(key, reply, size=reply.get("ContentLength"))

        return self._within_deadline("check", key, self.request_deadline, call)


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
