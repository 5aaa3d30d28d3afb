"""Every value from outside is checked here, where it enters: pure functions, no I/O.

Chat servers, bridges and recorded files are not trusted. A source runs what it receives
through these before anything else sees it, so the rest of the agent can rely on:

* times: finite UNIX seconds between 2005-01-01 and one day ahead of the receive clock. A
  platform time outside that (`1e400`, `1e300`, NaN, a `tmi-sent-ts` past the year 9999, a
  clock set to 1970) is replaced by the receive time, and the caller counts it;
* text: at most `MAX_TEXT` characters (longer is cut), names at most `MAX_NAME`, ids at most
  `MAX_ID` (a longer id is no id: the caller falls back to a content hash);
* JSON: at most `max_bytes` and `MAX_JSON_DEPTH` levels of nesting, checked before parsing,
  so 400 KB of brackets is one `BadFrame`, never a RecursionError; the non-JSON constants
  NaN and Infinity are refused too. `BadFrame` (a ValueError) is the only error raised.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

EARLIEST = datetime(2005, 1, 1, tzinfo=UTC).timestamp()  # no chat platform is older
MAX_AHEAD = 86_400.0  # clocks drift and zones get mixed up, but not by more than a day
MAX_TEXT = 2_000  # the longest chat platforms allow is 500 (Twitch, Kick) or 200 (YouTube)
MAX_NAME = 100
MAX_ID = 200
MAX_JSON_DEPTH = 64  # chat events nest 5-8 levels
MAX_JSON_BYTES = 1 << 20
_MS_THRESHOLD = 1e11  # above this a number time is milliseconds (1e11 s is the year 5138)


class BadFrame(ValueError):
    """A frame or line that cannot be used; the text says why (without quoting it whole)."""


def finite(value: Any) -> float | None:
    """A finite float from a JSON number or numeric text; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int too big for a float
            return None
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def unix_seconds(value: Any) -> float | None:
    """UNIX seconds from a number (seconds or milliseconds) or ISO 8601 text (no zone = UTC);
    None when the value is not a time at all. Not range-checked: see `sane_time`."""
    number = finite(value)
    if number is not None:
        return number / 1000.0 if abs(number) > _MS_THRESHOLD else number
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def in_range(seconds: float, received_at: float) -> bool:
    return math.isfinite(seconds) and EARLIEST <= seconds <= received_at + MAX_AHEAD


def sane_time(value: Any, received_at: float) -> tuple[float, bool]:
    """(the time a message was sent, whether the platform's value had to be replaced).

    A missing value (None or "") is not a replacement: the receive time is simply the best
    there is. Any other value that is not a time in range is replaced and reported."""
    if value is None or value == "":
        return received_at, False
    seconds = unix_seconds(value)
    if seconds is None or not in_range(seconds, received_at):
        return received_at, True
    return seconds, False


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit]


def usable_id(value: str | None) -> str | None:
    """A platform id we can key on, or None (missing, empty or absurdly long)."""
    if not value or len(value) > MAX_ID:
        return None
    return value


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether JSON text nests deeper than `max_depth`, in one linear pass over the brackets,
    quotes and backslashes only (strings are skipped, escapes honoured)."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    in_string = False
    escaped_at = -1
    for match in re.finditer(r'[\[\]{}"\\]', text):
        at = match.start()
        char = match.group()
        if in_string:
            if at == escaped_at:
                continue
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _refuse_constant(name: str) -> Any:
    raise BadFrame(f"{name} is not a JSON value")


def load_json(
    frame: str | bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """The JSON value of one frame or line, or `BadFrame`."""
    if len(frame) > max_bytes:
        raise BadFrame(f"frame of {len(frame)} bytes is over the {max_bytes}-byte limit")
    try:
        text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
    except UnicodeDecodeError as exc:
        raise BadFrame(f"invalid UTF-8 at byte {exc.start}") from None
    if _too_deep(text, max_depth):
        raise BadFrame(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except BadFrame:
        raise
    except RecursionError:  # cannot happen below the depth bound; kept as a last fence
        raise BadFrame("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise BadFrame(f"not JSON: {str(exc)[:80]}") from None
