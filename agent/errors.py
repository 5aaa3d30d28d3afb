"""One error tree for everything a user can see.

    CaptaFlowError                 exit status 1 unless a subclass says otherwise
    ├── UsageError                 bad command line or settings (exit status 2)
    │   └── SettingsError          a bad value in the TOML file or a flag
    ├── ModelBundleError           missing, corrupt, tampered or mismatched model bundle
    ├── ExportError                the one-time export failed (offline, wrong id, parity)
    ├── SourceError                a chat source cannot go on (login refused, bad channel)
    ├── SpoolError                 the on-disk spool cannot be written or read
    └── SyncError                  uploads to S3 fail (UploadError.retry: can waiting help?)

Every message names the value or path involved and says what to do, in one line.
Third-party errors (onnxruntime, websockets, boto3) are translated at the boundary.
"""

from __future__ import annotations


class CaptaFlowError(Exception):
    """Base of every error CaptaFlow shows to a user."""

    exit_status = 1


class UsageError(CaptaFlowError):
    exit_status = 2


class SettingsError(UsageError):
    pass


class ModelBundleError(CaptaFlowError):
    pass


class ExportError(CaptaFlowError):
    pass


class SourceError(CaptaFlowError):
    pass


class SpoolError(CaptaFlowError):
    pass


class SyncError(CaptaFlowError):
    pass
