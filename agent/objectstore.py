"""Where sealed parts go: the object-store interface the uploader talks to.

The uploader (`agent.sync`) knows only this: a store that can `put` bytes under a key with
their digests, `head` a key, and `describe` itself in a few words. `agent.s3store` implements
it with boto3 and is the only module that knows botocore; it translates every third-party
error into `UploadError` at its boundary (the way httpcore's `map_exceptions` does), so the
uploader sorts failures by one flag, `UploadError.retry`, and never sees a botocore type.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Protocol

from agent.errors import SyncError


@dataclass(frozen=True, slots=True)
class Digests:
    md5_hex: str
    md5_b64: str  # Content-MD5
    sha256_b64: str  # x-amz-checksum-sha256
    sha256_hex: str  # as the spool records it at sealing


def digests_of(data: bytes) -> Digests:
    md5 = hashlib.md5(data, usedforsecurity=False).digest()
    sha256 = hashlib.sha256(data).digest()
    return Digests(
        md5.hex(),
        base64.b64encode(md5).decode(),
        base64.b64encode(sha256).decode(),
        sha256.hex(),
    )


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


class UploadError(SyncError):
    """An upload failed; `retry` says whether waiting and trying again can help.

    The message is one line that names the bucket, key, path or endpoint and says what to do;
    it never holds a credential. "Not retry" (fatal) never drops data: the parts wait and the
    uploader tries again every few minutes in case the user fixed it.
    """

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class ObjectStore(Protocol):
    """Where parts go. Every method raises only `UploadError` for store or network trouble,
    and returns (or raises) within the store's own total deadline."""

    def put(self, key: str, data: bytes, digests: Digests) -> StoredObject: ...

    def head(self, key: str) -> StoredObject | None: ...

    def describe(self) -> str: ...
