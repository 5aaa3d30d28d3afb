"""Value checks shared by the settings schema and the source descriptors: one validator per value.

Each check takes the raw value (from TOML, or a string from the command line when `from_cli`)
and returns the normalised value, or raises `Expected` whose text says what was expected. The
settings loader turns that into one line naming the key, the value and where it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from agent.errors import SettingsError
from agent.vocab import validate_name

Check = Callable[[Any, bool], Any]


class Expected(ValueError):
    """A value did not pass its check; the text says what was expected."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_number(value: Any, from_cli: bool) -> float:
    if from_cli and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not _is_number(value) or not math.isfinite(value):
        raise Expected("")
    return float(value)


def whole(minimum: int, maximum: int | None = None, *, why: str = "") -> Callable[[Any, bool], int]:
    """A whole number in [minimum, maximum]; `why` says where the maximum comes from."""
    if maximum is None:
        expected = f"a whole number ≥ {minimum}"
    else:
        expected = f"a whole number from {minimum} to {maximum}" + (f" ({why})" if why else "")

    def check(value: Any, from_cli: bool) -> int:
        if from_cli and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise Expected(expected)
        if maximum is not None and value > maximum:
            raise Expected(expected)
        return value

    return check


def number(
    minimum: float, *, inclusive: bool = True, maximum: float | None = None
) -> Callable[[Any, bool], float]:
    low = "≥" if inclusive else ">"
    expected = f"a number {low} {minimum:g}" + (
        f" and ≤ {maximum:g}" if maximum is not None else ""
    )

    def check(value: Any, from_cli: bool) -> float:
        try:
            result = _as_number(value, from_cli)
        except Expected:
            raise Expected(expected) from None
        too_low = result < minimum if inclusive else result <= minimum
        if too_low or (maximum is not None and result > maximum):
            raise Expected(expected)
        return result

    return check


def boolean(value: Any, from_cli: bool) -> bool:
    if from_cli and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise Expected("true or false")
    return value


MAX_TEXT = 2000  # a URL or a path; anything longer is a paste gone wrong


def text(value: Any, from_cli: bool) -> str:
    if not isinstance(value, str):
        raise Expected("a text in double quotes")
    if len(value) > MAX_TEXT or "\x00" in value:
        raise Expected(f"a text of at most {MAX_TEXT} characters")
    return value.strip()


def http_url(value: Any, from_cli: bool) -> str:
    """An http(s) URL with a host (Twitch's endpoints; tests point them at loopback)."""
    value = text(value, from_cli)
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        raise Expected("an http:// or https:// address, for example https://api.twitch.tv/helix")
    return value.rstrip("/")


def choice(*options: str) -> Callable[[Any, bool], str]:
    expected = "one of " + ", ".join(f'"{option}"' for option in options)

    def check(value: Any, from_cli: bool) -> str:
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise Expected(expected)
        return value.strip().lower()

    return check


def name_or_empty(what: str) -> Callable[[Any, bool], str]:
    def check(value: Any, from_cli: bool) -> str:
        if not isinstance(value, str):
            raise Expected(f"a {what} name in double quotes")
        if not value.strip():
            return ""
        try:
            return validate_name(value, what)
        except ValueError:
            raise Expected(
                f"a {what} name of 1-100 letters, digits, '_' or '-' (for example \"xqcow\")"
            ) from None

    return check


def subset(options: tuple[str, ...]) -> Callable[[Any, bool], tuple[str, ...]]:
    expected = "a non-empty list drawn from " + ", ".join(f'"{option}"' for option in options)

    def check(value: Any, from_cli: bool) -> tuple[str, ...]:
        if from_cli and isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        if not isinstance(value, list | tuple) or not value:
            raise Expected(expected)
        chosen: list[str] = []
        for item in value:
            if not isinstance(item, str) or item.strip().lower() not in options:
                raise Expected(expected)
            if item.strip().lower() not in chosen:
                chosen.append(item.strip().lower())
        # Keep the model's order, whatever order the user typed: charts and ties rely on it.
        return tuple(option for option in options if option in chosen)

    return check


MAX_NAMES = 1000


def names_list(value: Any, from_cli: bool) -> tuple[str, ...]:
    if from_cli and isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if (
        not isinstance(value, list | tuple)
        or len(value) > MAX_NAMES
        or not all(isinstance(item, str) and len(item) <= 100 for item in value)
    ):
        raise Expected(
            f'a list of at most {MAX_NAMES} names in double quotes, for example ["nightbot"]'
        )
    return tuple(sorted({item.strip().lstrip("@").lower() for item in value if item.strip()}))


def speed(value: Any, from_cli: bool) -> float | str:
    expected = '"recorded", "max" or a speed-up factor over 0 and at most 10000 such as 4'
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "recorded":
            return 1.0
        if word == "max":
            return "max"
        try:
            value = float(word.removesuffix("x"))  # "4x" reads as 4
        except ValueError:
            raise Expected(expected) from None
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= 10_000:
        raise Expected(expected)
    return float(value)


def bucket_name(value: Any, from_cli: bool) -> str:
    """An S3 bucket name ("" = none); "s3://name/" is read as "name"."""
    if not isinstance(value, str):
        raise Expected("an S3 bucket name in double quotes")
    value = value.strip().removeprefix("s3://").rstrip("/")
    if value and (not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value) or ".." in value):
        raise Expected("an S3 bucket name: 3-63 lower-case letters, digits, '.' or '-'")
    return value


_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._=-]+")


def key_prefix(value: Any, from_cli: bool) -> str:
    """The canonical S3 key prefix: no leading or trailing '/', "" = the bucket's root.

    Segments are letters, digits and . _ = - only, never empty, "." or "..", so a prefix can
    neither escape nor alias another folder, and it needs no quoting in Athena's LOCATION.
    """
    if not isinstance(value, str):
        raise Expected("an S3 key prefix in double quotes")
    canonical = value.strip().strip("/")
    if len(canonical) > 512:
        raise Expected("an S3 key prefix of at most 512 characters")
    if canonical and any(
        segment in (".", "..") or not _PREFIX_SEGMENT.fullmatch(segment)
        for segment in canonical.split("/")
    ):
        raise Expected(
            "an S3 key prefix of letters, digits and - _ . = separated by single '/' "
            '(for example "captaflow" or "team/readings")'
        )
    return canonical


# AWS region names: eu-west-1, us-gov-west-1, ap-southeast-3, cn-north-1 ... S3-compatible
# stores that take any region (Cloudflare R2) use "auto".
_REGION = re.compile(r"[a-z]{2}(-[a-z]+){1,3}-\d{1,2}|auto")


def aws_region(value: Any, from_cli: bool) -> str:
    """An AWS region name, or "" for the AWS default."""
    if not isinstance(value, str):
        raise Expected("an AWS region in double quotes")
    value = value.strip().lower()
    if value and not _REGION.fullmatch(value):
        raise Expected('an AWS region such as "eu-west-1" or "us-east-1" (or "" for the default)')
    return value


def require(check: Check, value: Any, key: str, *, what_to_do: str = "") -> Any:
    """`check(value)`, or a SettingsError naming `key` (for values that do not come from the
    settings file, such as a bucket passed to the uploader by code)."""
    try:
        return check(value, False)
    except Expected as error:
        tail = f"; {what_to_do}" if what_to_do else ""
        raise SettingsError(f"{key} = {value!r}: expected {error}{tail}") from None


def dotted_path(value: Any, from_cli: bool) -> str:
    """A path into a JSON object, keys and list indexes joined by '.' ("items.0.text")."""
    if (
        not isinstance(value, str)
        or len(value) > 200
        or not re.fullmatch(r"[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*", value)
    ):
        raise Expected('a dotted path into the JSON message, for example "data.message.text"')
    return value
