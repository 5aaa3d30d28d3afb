"""Logging: rotating files in the log folder, an optional console, secrets masked everywhere.

The masking filter sits on the handlers, not on loggers, so every record that reaches a file
or the console passes through it, whichever library logged it (websockets logs raw frames,
botocore logs request headers at debug level).
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import threading
from pathlib import Path
from typing import Protocol


class _LevelSetting(Protocol):
    @property
    def level(self) -> str: ...


class LogTarget(Protocol):
    """What logging needs of the settings; a Protocol, so this module imports no settings
    (the settings module must stay free to import anything that logs)."""

    @property
    def log_dir(self) -> Path: ...

    @property
    def log(self) -> _LevelSetting: ...


LOG_FILE_NAME = "captaflow.log"
MAX_BYTES = 2 * 1024 * 1024
BACKUP_COUNT = 5
MASK = "***"

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Patterns of secrets that may show up in text nobody meant to log: IRC login lines, OAuth
# tokens, AWS keys and the headers that carry them.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(PASS\s+)\S+"), r"\1" + MASK),
    (re.compile(r"(?i)\boauth:[A-Za-z0-9_-]+"), "oauth:" + MASK),
    (re.compile(r"(?i)(\b(?:Bearer|OAuth)\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MASK),
    (
        re.compile(
            r"(?i)((?:aws_secret_access_key|aws_session_token|secret_?key|token|password)"
            r"[\"']?\s*[=:]\s*[\"']?)[^\s\"',;}]+"
        ),
        r"\1" + MASK,
    ),
    (re.compile(r"(?i)(Signature=|Credential=)[^\s,&]+"), r"\1" + MASK),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
    # A bare AWS secret access key: 40 characters of base64 with mixed case or / and +.
    # Hex digests (sha1, sha256) have no upper case and stay readable.
    (
        re.compile(
            r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+=]*[A-Z])(?=[A-Za-z0-9/+=]*[a-z])"
            r"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"
        ),
        MASK,
    ),
)

_known_secrets: set[str] = set()
_known_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Mask this exact value wherever it appears from now on (a token read from the keyring)."""
    if value and len(value) >= 4:
        with _known_lock:
            _known_secrets.add(value)
            if value.lower().startswith("oauth:"):
                _known_secrets.add(value[len("oauth:") :])


def mask_secrets(text: str) -> str:
    with _known_lock:
        known = sorted(_known_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretMaskingFilter(logging.Filter):
    """Rewrites each record's message (and its traceback) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = mask_secrets(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


_installed: list[logging.Handler] = []


class _LogFile(logging.handlers.RotatingFileHandler):
    """The log file. On a full disk every line would fail to be written, and logging's default
    is to print a traceback for each; the console (and the status) still say what is wrong,
    so a line that cannot reach the file is dropped quietly."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)


def setup_logging(
    target: LogTarget | Path | None,
    level: str | None = None,
    *,
    console: bool = False,
    debug: bool = False,
    max_bytes: int = MAX_BYTES,
    backup_count: int = BACKUP_COUNT,
) -> Path | None:
    """Send the root logger to `captaflow.log` (rotating) and, for `run`, to stderr.

    `target` is the settings (their log folder and `log.level`) or a log folder; `level`
    overrides the settings' level and `debug` forces "debug".

    Calling it again replaces the handlers it installed before (a test, or the tray after
    the settings changed). Returns the log file's path, or None when the folder cannot be
    created (then logging goes to the console only rather than stopping the app).
    """
    if target is None or isinstance(target, Path):
        log_dir = target
        level = level or "info"
    else:
        log_dir = target.log_dir
        level = level or target.log.level
    if debug:
        level = "debug"
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()

    masking = SecretMaskingFilter()
    formatter = logging.Formatter(_FORMAT)
    log_file: Path | None = None
    if log_dir is not None:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_file = log_dir / LOG_FILE_NAME
            file_handler: logging.Handler = _LogFile(
                log_file,
                maxBytes=max_bytes,
                backupCount=backup_count,
                encoding="utf-8",
                delay=True,
            )
        except OSError:
            log_file = None
            console = True
        else:
            file_handler.addFilter(masking)
            file_handler.setFormatter(formatter)
            _installed.append(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.addFilter(masking)
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        _installed.append(stream)
    for handler in _installed:
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Chatty libraries stay at warning unless the user asked for debug.
    if level.lower() != "debug":
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "websockets", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return log_file
