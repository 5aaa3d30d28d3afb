"""The shared vocabulary: what a chat message, a reading and a status are.

Everything in the agent imports this module; it imports nothing of the agent, so any
part can be read, tested and reused on its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

MODEL_ID = "cardiffnlp/twitter-roberta-base-emotion-multilabel-latest"

# The model's output order (config.id2label of the CardiffNLP model). Data always keeps all
# eleven, in this order; which ones a preview or chart shows is a setting.
LABELS: tuple[str, ...] = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "love",
    "optimism",
    "pessimism",
    "sadness",
    "surprise",
    "trust",
)

# The original prototype showed these six and hid the rest as redundant.
DEFAULT_DISPLAYED: tuple[str, ...] = ("anger", "fear", "joy", "optimism", "sadness", "surprise")

PLATFORMS: tuple[str, ...] = ("twitch", "youtube", "kick", "tiktok", "trovo", "facebook", "other")

# Channel and session names end up in file paths and S3 keys: lower-case letters, digits,
# '_' and '-' only, so no path trick and no CSV quoting is ever needed.
_NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,99}$")


def validate_name(value: str, what: str = "channel") -> str:
    """Return the canonical (lower-case) form of a channel/platform/session name or raise."""
    canonical = value.strip().lstrip("#").lower()
    if not _NAME_RE.match(canonical):
        raise ValueError(
            f"{what} {value!r} is not valid: use 1-100 letters, digits, '_' or '-' "
            f"(for example 'xqcow')"
        )
    return canonical


def content_message_id(platform: str, channel: str, author: str, sent_at: float, text: str) -> str:
    """A stable id for messages whose platform gives none: the same message hashes the same."""
    digest = hashlib.sha256(
        f"{platform}\x1f{channel}\x1f{author}\x1f{sent_at:.3f}\x1f{text}".encode(
            "utf-8", "surrogatepass"
        )
    ).hexdigest()
    return "h:" + digest[:32]


def author_hash(author: str) -> str:
    """Authors are kept as a short hash where a platform id is not needed verbatim."""
    return "a:" + hashlib.sha256(author.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat message as any source delivers it.

    `message_id` is the platform's own id where it has one, else `content_message_id(...)`;
    it is the dedup key. `author` is the platform's stable user id where it has one (what
    moderation events name), else the login; `author_name` is the login or display name, for
    telling bots apart. Times are UNIX seconds (UTC).
    """

    platform: str
    channel: str
    message_id: str
    author: str
    text: str
    sent_at: float
    received_at: float
    action: bool = False
    author_name: str = ""
    # The bridge that carried the message ("streamerbot", "ssn", "ws"), "" when the source
    # reads the platform itself. `platform` is always the platform the chat came from.
    via: str = ""


@dataclass(frozen=True, slots=True)
class ModerationEvent:
    """A moderator removed chat: one message (clearmsg), a user's messages or all (clearchat).

    `author` is the same value as `ChatMessage.author` of the removed viewer (the platform's
    user id where it has one); `message_id` and `author` both None means the whole chat was
    cleared. Every source that reports moderation produces this one type.
    """

    platform: str
    channel: str
    kind: str  # "clearmsg" | "clearchat"
    message_id: str | None
    author: str | None
    at: float


def format_timestamp(unix_seconds: float) -> str:
    """UTC `YYYY-MM-DD HH:MM:SS.fff`, the form Athena's TIMESTAMP parses."""
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def parse_timestamp(text: str) -> float:
    """Inverse of `format_timestamp`."""
    moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return moment.timestamp()


def utc_date(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%Y-%m-%d")


# One CSV row per reading, in this column order. Athena reads columns by position, so a new
# column only ever goes at the END (and gets a text default): older parts then still read, their
# missing last columns as empty. `agent.layout` keeps the column set of every format version.
READING_COLUMNS: tuple[str, ...] = (
    "session_id",
    "platform",
    "channel",
    "batch_id",
    "seq",
    "window_start",
    "window_end",
    "message_count",
    "scored_count",
    *LABELS,
    "dominant",
    "model_id",
    "agent_version",
    "via",
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One window of chat turned into one row: the mean probability of each label."""

    session_id: str
    platform: str
    channel: str
    batch_id: str
    seq: int
    window_start: float
    window_end: float
    message_count: int
    scored_count: int
    scores: tuple[float, ...]  # len(LABELS), in LABELS order
    dominant: str
    model_id: str
    agent_version: str
    # The bridge that carried the chat ("streamerbot", "ssn", "ws"), "" when read directly.
    via: str = ""

    def as_row(self) -> list[str]:
        """The CSV row, in READING_COLUMNS order (no field ever needs quoting)."""
        return [
            self.session_id,
            self.platform,
            self.channel,
            self.batch_id,
            str(self.seq),
            format_timestamp(self.window_start),
            format_timestamp(self.window_end),
            str(self.message_count),
            str(self.scored_count),
            *(f"{s:.6f}" for s in self.scores),
            self.dominant,
            self.model_id,
            self.agent_version,
            self.via,
        ]

    @classmethod
    def from_row(cls, row: list[str]) -> Reading:
        if len(row) != len(READING_COLUMNS):
            raise ValueError(f"expected {len(READING_COLUMNS)} fields, got {len(row)}")
        n = len(LABELS)
        return cls(
            session_id=row[0],
            platform=row[1],
            channel=row[2],
            batch_id=row[3],
            seq=int(row[4]),
            window_start=parse_timestamp(row[5]),
            window_end=parse_timestamp(row[6]),
            message_count=int(row[7]),
            scored_count=int(row[8]),
            scores=tuple(float(x) for x in row[9 : 9 + n]),
            dominant=row[9 + n],
            model_id=row[10 + n],
            agent_version=row[11 + n],
            via=row[12 + n],
        )


def dominant_label(scores: tuple[float, ...] | list[float], displayed: tuple[str, ...]) -> str:
    """The displayed label with the highest mean score (ties: the earlier label wins)."""
    best = max(displayed, key=lambda label: (scores[LABELS.index(label)], -LABELS.index(label)))
    return best


class SourceState(StrEnum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    FINISHED = "finished"  # a replay that reached its end


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What a source says about its link, for the tray and the log."""

    state: SourceState
    detail: str = ""  # e.g. "reconnecting in 4.2 s", "login refused: ..."
    retry_in: float | None = None
    # The link works but needs the streamer's attention, in one line saying what to do (a
    # refused subscription, an expired token read anonymously instead); "" when all is well.
    problem: str = ""
    # Values from outside that were not usable as sent (counted since the source started):
    times_replaced: int = 0  # platform timestamps out of range, replaced by the receive time
    frames_skipped: int = 0  # frames or lines that could not be parsed (bad, too deep, too big)


class AgentState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    TROUBLE = "trouble"  # running, but something needs the streamer's attention
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """A snapshot the tray and `captaflow status` show; cheap to make, safe to share."""

    state: AgentState = AgentState.STOPPED
    source: SourceStatus = field(default_factory=lambda: SourceStatus(SourceState.STOPPED))
    session_id: str | None = None
    channel: str | None = None
    messages_per_second: float = 0.0
    messages_total: int = 0
    duplicates_total: int = 0
    readings_total: int = 0
    parts_waiting: int = 0
    upload_state: str = ""  # "idle", "uploading 3 parts", "offline: ...", "failing: ..."
    dominant: str | None = None
    problem: str | None = None  # one line, what to do
    set_aside_total: int = 0  # windows that could not be scored or written (journaled)


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """The status file (`status.json` in the data folder) that `captaflow status` in another
    process reads: the agent's last `AgentStatus` plus who wrote it when. One JSON object, in
    this shape (no null anywhere: absent text is ""):

        {"pid": 4242, "written_at": 1764579600.5, "state": "stopped",
         "source": {"state": "finished", "detail": "", "problem": "", "times_replaced": "0",
                    "frames_skipped": "0"}, "session_id": "...", "channel": "...",
         "messages_per_second": 0.0, "messages_total": 2019, "duplicates_total": 0,
         "readings_total": 190, "parts_waiting": 1, "upload_state": "off (no bucket set)",
         "dominant": "joy", "problem": "", "set_aside_total": 0, "model_id": "...",
         "model_dir": "/abs/path/of/the/bundle"}
    """

    pid: int = 0
    written_at: float = 0.0
    state: str = "stopped"
    source: Mapping[str, str] = field(
        default_factory=lambda: {"state": str(SourceState.STOPPED), "detail": ""}
    )
    session_id: str = ""
    channel: str = ""
    messages_per_second: float = 0.0
    messages_total: int = 0
    duplicates_total: int = 0
    readings_total: int = 0
    parts_waiting: int = 0
    upload_state: str = ""
    dominant: str = ""
    problem: str = ""
    set_aside_total: int = 0
    model_id: str = ""
    model_dir: str = ""  # the bundle the agent scores with (absolute), "" when not known

    @classmethod
    def of(
        cls,
        status: AgentStatus,
        *,
        pid: int,
        written_at: float,
        model_id: str = "",
        model_dir: str = "",
    ) -> StatusRecord:
        return cls(
            pid=pid,
            written_at=written_at,
            state=str(status.state),
            source={
                "state": str(status.source.state),
                "detail": status.source.detail,
                "problem": status.source.problem,
                # Values from outside that were replaced or skipped (agent.sources.entry).
                "times_replaced": str(status.source.times_replaced),
                "frames_skipped": str(status.source.frames_skipped),
            },
            session_id=status.session_id or "",
            channel=status.channel or "",
            messages_per_second=round(status.messages_per_second, 2),
            messages_total=status.messages_total,
            duplicates_total=status.duplicates_total,
            readings_total=status.readings_total,
            parts_waiting=status.parts_waiting,
            upload_state=status.upload_state,
            dominant=status.dominant or "",
            problem=status.problem or "",
            set_aside_total=status.set_aside_total,
            model_id=model_id,
            model_dir=model_dir,
        )

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"source": dict(self.source)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusRecord:
        """Tolerant of older files: unknown keys are ignored, missing or null ones default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})
