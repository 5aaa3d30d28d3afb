"""Where the uploader's AWS credentials come from, and how they stay out of sight.

Order: the standard AWS chain first (environment, `~/.aws` profiles, SSO, instance roles), so
anything `aws configure` set up just works; only when that chain finds nothing, the OS keyring
(service "CaptaFlow", entries `aws_access_key_id` and `aws_secret_access_key`, optionally
`aws_session_token`). A streamer can store them once with

    captaflow secrets set aws_access_key_id
    captaflow secrets set aws_secret_access_key

`CAPTAFLOW_NO_KEYRING=1` turns the keyring off here too, as for the sources' secrets
(`agent.secrets`). Credentials are never read from a file in the spool or the data directory,
and the objects here never show a secret in `repr`/`str`, so a stray log line or crash report
cannot leak one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import boto3

log = logging.getLogger(__name__)

KEYRING_SERVICE = "CaptaFlow"  # the same service as agent.secrets.KEYRING_SERVICE
KEY_ID_ENTRY = "aws_access_key_id"
SECRET_ENTRY = "aws_secret_access_key"
TOKEN_ENTRY = "aws_session_token"


@dataclass(frozen=True, slots=True)
class KeyringCredentials:
    """AWS keys read from the OS keyring; the secret parts are hidden from repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def keyring_credentials(service: str = KEYRING_SERVICE) -> KeyringCredentials | None:
    """The keys stored in the OS keyring under `service`, or None when there are none.

    A missing or locked keyring (headless Linux, no Secret Service) is not an error here: it
    simply means "no keyring credentials"; the caller then reports that no credentials exist.
    """
    from agent.secrets import keyring_disabled

    if keyring_disabled():  # CAPTAFLOW_NO_KEYRING: the same switch as for the sources' secrets
        return None
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:  # pragma: no cover - keyring is a run-time dependency
        return None
    try:
        key_id = keyring.get_password(service, KEY_ID_ENTRY)
        secret = keyring.get_password(service, SECRET_ENTRY)
        token = keyring.get_password(service, TOKEN_ENTRY) if key_id and secret else None
    except (KeyringError, RuntimeError, OSError) as exc:
        # The exception text may come from a D-Bus or Windows API; log its type only.
        log.info(
            "OS keyring unavailable (%s); using the AWS credential chain only", type(exc).__name__
        )
        return None
    if not key_id or not secret:
        return None
    return KeyringCredentials(key_id.strip(), secret.strip(), token.strip() if token else None)


def aws_session(
    region: str | None = None,
    *,
    session: boto3.Session | None = None,
    keyring_service: str = KEYRING_SERVICE,
) -> boto3.Session:
    """A boto3 session: the standard chain when it has credentials, else the OS keyring.

    When neither has any, the chain's session is returned unchanged, so the first request
    fails with botocore's NoCredentialsError and the uploader says what to do.
    """
    base = session if session is not None else boto3.Session(region_name=region)
    if base.get_credentials() is not None:
        return base
    stored = keyring_credentials(keyring_service)
    if stored is None:
        return base
    log.info("using AWS credentials from the OS keyring (service %r)", keyring_service)
    return boto3.Session(
        aws_access_key_id=stored.access_key_id,
        aws_secret_access_key=stored.secret_access_key,
        aws_session_token=stored.session_token,
        region_name=region or base.region_name,
    )
