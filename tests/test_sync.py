"""Sync to S3 against moto's real server on 127.0.0.1, through boto3.

The remote peer is faked, nothing of ours is: a `FaultProxy` between the uploader and moto
plays the flaky network (refused connections, 500s, 503 SlowDown, dropped and lost replies,
a flipped bit). Parts are written in the spool's sealed layout, as `agent.spool` leaves them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import keyring
import pytest
from botocore import exceptions as boto_errors
from keyring.backend import KeyringBackend

from agent.credentials import KEYRING_SERVICE, KeyringCredentials, keyring_credentials
from agent.errors import SettingsError, SyncError
from agent.objectstore import UploadError
from agent.s3store import S3ObjectStore, classify, explain
from agent.sync import (
    RetryPolicy,
    SyncReport,
    SyncState,
    Uploader,
    plan_uploads,
    validate_prefix,
)
from agent.vocab import LABELS, READING_COLUMNS, Reading
from tests.s3server import FAKE_KEY_ID, FAKE_SECRET, FaultProxy, MotoS3

pytestmark = pytest.mark.network

WAIT = 20.0  # upper bound for anything a test waits for; passes take milliseconds
FAST = RetryPolicy(initial=0.02, cap=0.1, fatal_interval=0.1)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials in the environment only, and no other source the chain could find."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3(moto_s3: MotoS3, aws_env: None) -> Any:
    """A boto3 client straight to moto, for setting up and checking (not the code under test)."""
    return boto3.client("s3", endpoint_url=moto_s3.url, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"captaflow-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(moto_s3: MotoS3) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(moto_s3.url).start()
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


# -- helpers --------------------------------------------------------------------------------


def seal_part(
    spool: Path,
    *,
    session: str,
    part: int,
    sealed_at: float,
    channel: str = "xqcow",
    day: str = "2024-05-01",
    rows: int = 3,
) -> Path:
    """A sealed part in the spool's layout, with rows of real readings and a given seal time."""
    relative = f"platform=twitch/channel={channel}/dt={day}/{session}-{part:05d}.csv"
    path = spool / "sealed" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(READING_COLUMNS)]
    for seq in range(rows):
        start = 1714521600.0 + part * 100 + seq * 10
        reading = Reading(
            session_id=session,
            platform="twitch",
            channel=channel,
            batch_id=f"b{part:05d}{seq:03d}",
            seq=seq,
            window_start=start,
            window_end=start + 10,
            message_count=10,
            scored_count=10,
            scores=tuple(round(0.05 * ((i + seq + part) % 20), 6) for i in range(len(LABELS))),
            dominant="joy",
            model_id="test-model",
            agent_version="1.0.0",
        )
        lines.append(",".join(reading.as_row()))
    path.write_bytes(("\n".join(lines) + "\n").encode())
    os.utime(path, (sealed_at, sealed_at))
    return path


def seal_backlog(spool: Path, count: int) -> list[str]:
    """`count` parts whose seal order differs from their name order; returns relative paths,
    oldest first."""
    order = []
    for i in range(count):
        # Session "s-b" was sealed before session "s-a": name order would get it wrong.
        session = "s-b" if i < count // 2 else "s-a"
        path = seal_part(spool, session=session, part=i + 1, sealed_at=1_700_000_000 + i * 60)
        order.append(path.relative_to(spool / "sealed").as_posix())
    return order


def sealed_files(spool: Path) -> set[str]:
    root = spool / "sealed"
    return {p.relative_to(root).as_posix() for p in root.rglob("*.csv")} if root.exists() else set()


def uploaded_files(spool: Path) -> set[str]:
    root = spool / "uploaded"
    return {p.relative_to(root).as_posix() for p in root.rglob("*.csv")} if root.exists() else set()


def bucket_keys(s3: Any, bucket: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def put_paths(proxy: FaultProxy, bucket: str) -> list[str]:
    """Object keys of every PUT the proxy saw, in order, whatever became of it."""
    start = f"/{bucket}/"
    return [
        unquote(e.path)[len(start) :]
        for e in proxy.exchanges()
        if e.method == "PUT" and e.path.startswith(start)
    ]


class ReportWatch:
    """Collects the uploader's reports; tests wait on a condition instead of sleeping."""

    def __init__(self) -> None:
        self.reports: list[SyncReport] = []
        self._cond = threading.Condition()

    def __call__(self, report: SyncReport) -> None:
        with self._cond:
            self.reports.append(report)
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[SyncReport]], bool], timeout: float = WAIT
    ) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.reports), timeout), self.reports


def start_run(uploader: Uploader) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=uploader.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def stop_run(uploader: Uploader, stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    uploader.wake()
    thread.join(timeout=WAIT)
    assert not thread.is_alive()


# -- planning and policy (pure) -------------------------------------------------------------


def test_plan_is_oldest_first_by_seal_time_and_keys_follow_the_layout(spool: Path) -> None:
    expected = seal_backlog(spool, 6)
    stray = spool / "sealed" / "platform=twitch" / "notes.txt"
    stray.write_text("not a part")
    bad_channel = spool / "sealed" / "platform=twitch/channel=Bad Name/dt=2024-05-01/s-1-00001.csv"
    bad_channel.parent.mkdir(parents=True)
    bad_channel.write_text("x")
    skipped: list[Path] = []

    plan = plan_uploads(spool, "/captaflow/", on_skip=skipped.append)

    assert [item.relative for item in plan] == expected
    assert [item.key for item in plan] == [f"captaflow/{r}" for r in expected]
    assert plan[0].key == "captaflow/platform=twitch/channel=xqcow/dt=2024-05-01/s-b-00001.csv"
    assert all(item.size == item.path.stat().st_size for item in plan)
    assert sorted(skipped) == sorted([stray, bad_channel])
    assert plan_uploads(spool, "")[0].key.startswith("platform=twitch/")


def test_plan_of_a_missing_spool_is_empty(tmp_path: Path) -> None:
    assert plan_uploads(tmp_path / "nothing-here", "captaflow") == []


@pytest.mark.parametrize("prefix", ["../up", "a//b", "a/./b", "a\\b", "with space", "x/../y"])
def test_bad_prefixes_are_refused_with_the_setting_named(prefix: str) -> None:
    with pytest.raises(SettingsError, match=r"sync\.prefix"):
        validate_prefix(prefix)


def test_prefixes_are_canonical() -> None:
    assert validate_prefix("/team/readings/") == "team/readings"
    assert validate_prefix("") == ""


def test_backoff_grows_to_the_cap_and_never_waits_zero() -> None:
    import random

    policy = RetryPolicy(initial=1.0, cap=300.0, jitter=0.5)
    delays = policy.delays(random.Random(7))
    for attempt in range(1, 15):
        window = min(300.0, 2.0 ** (attempt - 1))
        delay = next(delays)
        assert window * 0.5 <= delay <= window
    # Past the cap the window stays at the cap.
    assert all(150.0 <= next(delays) <= 300.0 for _ in range(50))


def _client_error(code: str, status: int, **extra: str) -> boto_errors.ClientError:
    error = {"Code": code, "Message": "from the server", **extra}
    response = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
    return boto_errors.ClientError(response, "PutObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind", "says"),
    [
        (boto_errors.EndpointConnectionError(endpoint_url="http://x"), "retry", "cannot reach"),
        (boto_errors.ConnectTimeoutError(endpoint_url="http://x"), "retry", "did not answer"),
        (boto_errors.ReadTimeoutError(endpoint_url="http://x"), "retry", "did not answer"),
        (boto_errors.ConnectionClosedError(endpoint_url="http://x"), "retry", "cannot reach"),
        (_client_error("InternalError", 500), "retry", "HTTP 500"),
        (_client_error("SlowDown", 503), "retry", "slow down"),
        (_client_error("RequestTimeTooSkewed", 403), "retry", "clock"),
        (_client_error("BadDigest", 400), "retry", "damaged"),
        (_client_error("Whatever", 502), "retry", "HTTP 502"),
        (_client_error("NoSuchBucket", 404), "fatal", "'my-bucket' does not exist"),
        (_client_error("AccessDenied", 403), "fatal", "s3:PutObject"),
        (_client_error("InvalidAccessKeyId", 403), "fatal", "aws configure"),
        (_client_error("SignatureDoesNotMatch", 403), "fatal", "aws configure"),
        (_client_error("ExpiredToken", 400), "fatal", "aws sso login"),
        (_client_error("PermanentRedirect", 301, Region="eu-west-1"), "fatal", "'eu-west-1'"),
        (_client_error("SomethingNew", 400), "fatal", "HTTP 400"),
        (boto_errors.NoCredentialsError(), "fatal", "no AWS credentials"),
        (boto_errors.SSLError(endpoint_url="https://x", error="bad"), "fatal", "TLS"),
        (UploadError("already explained", retry=True), "retry", "already explained"),
        (RuntimeError("a bug"), "fatal", "unexpectedly"),
    ],
)
def test_classify_and_explain(exc: BaseException, kind: str, says: str) -> None:
    assert classify(exc) == kind
    message = explain(exc, bucket="my-bucket", key="k", endpoint="http://user:pw@127.0.0.1:9")
    assert says in message
    assert "\n" not in message
    assert "pw" not in message  # credentials in an endpoint URL are not repeated


def test_bad_bucket_name_and_endpoint_are_settings_errors(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingsError, match="'Not_A_Bucket'"):
        S3ObjectStore("Not_A_Bucket")
    with pytest.raises(SettingsError, match="'not a url'"):
        S3ObjectStore("good-bucket", endpoint_url="not a url")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://example.com")
    with pytest.raises(SettingsError, match="AWS_ENDPOINT_URL"):
        S3ObjectStore("good-bucket")


# -- uploads against moto --------------------------------------------------------------------


def test_parts_arrive_at_their_keys_with_their_bytes_and_checksums(
    spool: Path,
    s3: Any,
    bucket: str,
    moto_s3: MotoS3,
    monkeypatch,
) -> None:
    expected = seal_backlog(spool, 4)
    originals = {r: (spool / "sealed" / r).read_bytes() for r in expected}
    # The endpoint comes from AWS_ENDPOINT_URL, as for any S3-compatible store.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.url)
    store = S3ObjectStore(bucket)
    progress: list[tuple[int, int]] = []

    report = Uploader(spool, store, "captaflow").sync_once(
        progress=lambda d, t: progress.append((d, t))
    )

    keys = [f"captaflow/{r}" for r in expected]
    assert report.failed is None
    assert report.uploaded == keys
    assert report.waiting == 0
    assert report.bytes_uploaded == sum(len(b) for b in originals.values())
    assert progress == [(i, 4) for i in range(5)]
    assert bucket_keys(s3, bucket) == sorted(keys)
    for relative, data in originals.items():
        got = s3.get_object(Bucket=bucket, Key=f"captaflow/{relative}", ChecksumMode="ENABLED")
        assert got["Body"].read() == data
        assert got["ContentType"] == "text/csv"
        stored = store.head(f"captaflow/{relative}")
        assert stored is not None and stored.sha256_b64 == got["ChecksumSHA256"]
        assert stored.size == len(data)
    assert store.head("captaflow/absent.csv") is None
    assert sealed_files(spool) == set()
    assert uploaded_files(spool) == set(expected)


def test_crash_between_put_and_move_rewrites_the_same_key(
    spool: Path,
    s3: Any,
    bucket: str,
    proxy: FaultProxy,
) -> None:
    expected = seal_backlog(spool, 3)
    uploader = Uploader(spool, S3ObjectStore(bucket, endpoint_url=proxy.url), "p")
    assert uploader.sync_once().failed is None
    before = bucket_keys(s3, bucket)
    # The process died after the PUT of the middle part, before its move: it is still sealed.
    shutil.copy2(spool / "uploaded" / expected[1], spool / "sealed" / expected[1])

    report = uploader.sync_once()

    assert report.uploaded == [f"p/{expected[1]}"]
    assert bucket_keys(s3, bucket) == before  # the same key again, no second object
    body = s3.get_object(Bucket=bucket, Key=f"p/{expected[1]}")["Body"].read()
    assert body == (spool / "uploaded" / expected[1]).read_bytes()
    assert put_paths(proxy, bucket).count(f"p/{expected[1]}") == 2
    assert sealed_files(spool) == set()


def test_endpoint_down_then_back_every_part_once_oldest_first(
    spool: Path,
    s3: Any,
    bucket: str,
    proxy: FaultProxy,
) -> None:
    expected = seal_backlog(spool, 6)
    keys = [f"cf/{r}" for r in expected]
    watch = ReportWatch()
    uploader = Uploader(
        spool, S3ObjectStore(bucket, endpoint_url=proxy.url), "cf", policy=FAST, on_report=watch
    )
    proxy.stop()  # nothing listens on the port: connection refused

    stop, thread = start_run(uploader)
    try:
        watch.wait_for(lambda rs: sum(r.failed is not None for r in rs) >= 3)
        status = uploader.status()
        assert status.state is SyncState.OFFLINE
        assert status.waiting_parts == 6
        assert "cannot reach" in (status.last_error or "") and "will retry" in status.describe()
        assert sealed_files(spool) == set(expected)  # nothing moved while offline
        assert not any(r.fatal for r in watch.reports)

        proxy.start()  # same port, back online
        watch.wait_for(lambda rs: rs[-1].failed is None and rs[-1].waiting == 0)
    finally:
        stop_run(uploader, stop, thread)

    assert put_paths(proxy, bucket) == keys  # each part once, oldest first
    assert bucket_keys(s3, bucket) == sorted(keys)
    assert uploaded_files(spool) == set(expected) and sealed_files(spool) == set()
    assert uploader.status().state is SyncState.IDLE
    assert uploader.status().uploaded_total == 6


def test_500s_and_lost_replies_then_back_every_part_once_oldest_first(
    spool: Path,
    s3: Any,
    bucket: str,
    proxy: FaultProxy,
) -> None:
    expected = seal_backlog(spool, 8)
    keys = [f"cf/{r}" for r in expected]
    watch = ReportWatch()
    uploader = Uploader(
        spool, S3ObjectStore(bucket, endpoint_url=proxy.url), "cf", policy=FAST, on_report=watch
    )
    # S3 fails for a while with every kind of trouble, then behaves.
    proxy.inject("error500", 3)
    proxy.inject("slowdown503", 2)
    proxy.inject("drop", 1)
    proxy.inject("lose_reply", 1)  # this PUT reaches S3; only its reply is lost
    proxy.inject("corrupt", 1)  # a flipped bit: the ETag check catches it
    stop, thread = start_run(uploader)
    try:
        watch.wait_for(lambda rs: rs and rs[-1].failed is None and rs[-1].waiting == 0)
    finally:
        stop_run(uploader, stop, thread)

    failures = [r.failed for r in watch.reports if r.failed]
    assert len(failures) == 8
    assert any("HTTP 500" in f for f in failures)
    assert any("slow down" in f for f in failures)
    assert any("damaged" in f for f in failures)
    assert all("will retry" in f for f in failures)
    # Order kept: the PUTs (retries included) never go back to an older part, never skip ahead.
    order = [keys.index(k) for k in put_paths(proxy, bucket)]
    assert order == sorted(order)
    assert len(order) == 8 + 8  # each part once, plus one more PUT per injected fault
    assert set(order) == set(range(8))
    assert bucket_keys(s3, bucket) == sorted(keys)  # one object per part, lost reply or not
    for relative in expected:
        body = s3.get_object(Bucket=bucket, Key=f"cf/{relative}")["Body"].read()
        assert body == (spool / "uploaded" / relative).read_bytes()
    assert sealed_files(spool) == set()


def test_wake_uploads_a_newly_sealed_part_without_waiting_the_interval(
    spool: Path, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    watch = ReportWatch()
    uploader = Uploader(
        spool, S3ObjectStore(bucket, endpoint_url=proxy.url), "cf", interval=600.0, on_report=watch
    )
    stop, thread = start_run(uploader)
    try:
        watch.wait_for(lambda rs: len(rs) == 1)  # an empty pass; now idle for ten minutes
        assert uploader.status().describe() == "idle"
        path = seal_part(spool, session="late", part=1, sealed_at=1_700_000_000)
        uploader.wake()  # what the runtime's "sync now" does after sealing a part
        watch.wait_for(lambda rs: len(rs) == 2)
    finally:
        stop_run(uploader, stop, thread)
    key = "cf/" + path.relative_to(spool / "sealed").as_posix()
    assert watch.reports[1].uploaded == [key]
    assert bucket_keys(s3, bucket) == [key]


def test_wrong_bucket_says_which_and_what_to_do_and_keeps_everything(
    spool: Path, proxy: FaultProxy, aws_env: None
) -> None:
    expected = seal_backlog(spool, 3)
    watch = ReportWatch()
    policy = RetryPolicy(initial=0.02, cap=0.1, fatal_interval=60.0)
    uploader = Uploader(
        spool,
        S3ObjectStore("no-such-bucket-here", endpoint_url=proxy.url),
        "cf",
        policy=policy,
        clock=lambda: 1000.0,  # frozen: next_retry_in is exactly the fatal interval
        on_report=watch,
    )

    report = uploader.sync_once()
    assert report.fatal and report.uploaded == [] and report.waiting == 3
    assert report.failed == (
        "bucket 'no-such-bucket-here' does not exist: create it or fix sync.bucket (--bucket)"
    )
    assert sealed_files(spool) == set(expected) and uploaded_files(spool) == set()

    # The background loop then waits the long fatal interval, yet stops at once.
    stop, thread = start_run(uploader)
    watch.wait_for(lambda rs: len(rs) >= 2)
    status = uploader.status()
    assert status.state is SyncState.FAILING
    assert status.next_retry_in == 60.0
    assert status.describe().startswith("failing: bucket 'no-such-bucket-here' does not exist")
    stop_run(uploader, stop, thread)
    assert sealed_files(spool) == set(expected)


# -- credentials -----------------------------------------------------------------------------


class MemoryKeyring(KeyringBackend):
    """The OS keyring as a test sees it: a dict (the real one is a remote service to us)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


@pytest.fixture
def memory_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    monkeypatch.delenv("CAPTAFLOW_NO_KEYRING", raising=False)  # it turns the keyring off
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@pytest.fixture(scope="module")
def iam_key(moto_s3: MotoS3) -> Iterator[dict[str, str]]:
    """A real access key in moto's IAM, allowed to use S3 (made while auth is still off)."""
    env = {
        "aws_access_key_id": FAKE_KEY_ID,
        "aws_secret_access_key": FAKE_SECRET,
        "region_name": "us-east-1",
    }
    iam = boto3.client("iam", endpoint_url=moto_s3.url, **env)
    user = f"uploader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    yield {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


@pytest.fixture
def moto_auth(moto_s3: MotoS3) -> Iterator[None]:
    moto_s3.require_auth(True)
    try:
        yield
    finally:
        moto_s3.require_auth(False)


def _no_secret_anywhere(
    secrets: list[str], caplog: pytest.LogCaptureFixture, *texts: object
) -> None:
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in secrets:
        assert secret not in logged
        for text in texts:
            assert secret not in str(text)


def signed_with(proxy: FaultProxy) -> list[str | None]:
    return [e.key_id for e in proxy.exchanges() if e.method == "PUT"]


def test_bad_credentials_say_what_to_do_lose_nothing_and_leak_no_secret(
    spool: Path,
    bucket: str,
    proxy: FaultProxy,
    moto_s3: MotoS3,
    iam_key: dict[str, str],
    moto_auth: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore logs requests and credential lookups at DEBUG
    expected = seal_backlog(spool, 3)
    uploader = Uploader(spool, S3ObjectStore(bucket, endpoint_url=proxy.url), "cf")

    monkeypatch.delenv("CAPTAFLOW_NO_KEYRING", raising=False)  # the advice names the keyring
    unknown_key = uploader.sync_once()  # the environment holds FAKE_KEY_ID, unknown to IAM
    assert unknown_key.fatal
    assert unknown_key.failed == (
        f"AWS credentials were refused by {proxy.url} (InvalidAccessKeyId): run `aws "
        f"configure`, set AWS_PROFILE, or store the right keys in the OS keyring (service "
        f"'CaptaFlow')"
    )

    wrong_secret = "wrong/" + iam_key["secret"][6:]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam_key["id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    refused = uploader.sync_once()  # the store resolves credentials afresh after a refusal
    assert refused.fatal and "(SignatureDoesNotMatch)" in (refused.failed or "")
    assert uploader.status().state is SyncState.FAILING
    assert sealed_files(spool) == set(expected) and uploaded_files(spool) == set()

    # The user fixes the secret; the next attempt uploads everything, without a restart.
    # (moto 5.2.1 cannot verify signatures of keys holding '=', which every hive key does,
    # so this last step runs with moto's auth off; the proxy shows which key signed it.)
    moto_s3.require_auth(False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam_key["secret"])
    fixed = uploader.sync_once()
    assert fixed.failed is None and len(fixed.uploaded) == 3
    assert uploaded_files(spool) == set(expected)
    assert signed_with(proxy) == [FAKE_KEY_ID, iam_key["id"]] + [iam_key["id"]] * 3

    _no_secret_anywhere(
        [FAKE_SECRET, wrong_secret, iam_key["secret"]],
        caplog,
        unknown_key,
        refused,
        fixed,
        uploader.status(),
        uploader.status().describe(),
    )


def test_keyring_credentials_are_used_when_the_chain_has_none(
    spool: Path,
    bucket: str,
    proxy: FaultProxy,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    expected = seal_backlog(spool, 2)
    uploader = Uploader(spool, S3ObjectStore(bucket, endpoint_url=proxy.url), "cf")

    nothing = uploader.sync_once()
    assert nothing.fatal
    assert (nothing.failed or "").startswith("no AWS credentials found")
    assert "keyring" in (nothing.failed or "")
    assert sealed_files(spool) == set(expected)
    assert signed_with(proxy) == []  # botocore gave up before sending anything

    key_id, secret = "AKIAKEYRINGKEYRING01", "keyring/Secret+Only+In+The+Keyring/0123"
    memory_keyring.set_password(KEYRING_SERVICE, "aws_access_key_id", key_id)
    memory_keyring.set_password(KEYRING_SERVICE, "aws_secret_access_key", secret)
    stored = keyring_credentials()
    assert stored == KeyringCredentials(key_id, secret)
    assert secret not in repr(stored)

    report = uploader.sync_once()
    assert report.failed is None and len(report.uploaded) == 2
    assert signed_with(proxy) == [key_id, key_id]
    assert uploaded_files(spool) == set(expected)
    _no_secret_anywhere([secret], caplog, nothing, report, uploader.status())


def test_sync_error_is_the_public_face_of_upload_failures() -> None:
    assert issubclass(UploadError, SyncError)


def test_refused_keys_with_the_keyring_off_point_at_the_environment_and_aws_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.exceptions import ClientError

    from agent.s3store import explain

    refused = ClientError({"Error": {"Code": "InvalidAccessKeyId"}}, "PutObject")
    monkeypatch.setenv("CAPTAFLOW_NO_KEYRING", "1")
    assert explain(refused, bucket="b-1", endpoint="http://127.0.0.1:9") == (
        "AWS credentials were refused by http://127.0.0.1:9 (InvalidAccessKeyId): run `aws "
        "configure`, set AWS_PROFILE, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in "
        "the environment or ~/.aws/credentials (the OS keyring is off: CAPTAFLOW_NO_KEYRING "
        "is set)"
    )
