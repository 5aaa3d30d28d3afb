"""`captaflow replay --session ID`: score a past session again from the journal.

Useful after a model update or a change of window settings. The readings go to the spool
under a new session id (`<id>-r<N>`), so the original readings stay as they were and a
dashboard can tell the two apart. The windows, the moderation rule and the set-aside of
windows that cannot be scored are the live agent's own (`agent.pipeline`): the session's
messages and moderation events are fed in again in the order they happened.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.assembly import attach_previews, open_journal, open_scorer, pipeline_rules
from agent.config import Settings
from agent.errors import UsageError
from agent.journal import JournalEntry, SessionInfo
from agent.pipeline import NoLedger, Pipeline, Scorer
from agent.spool import Spool
from agent.vocab import ModerationEvent

if TYPE_CHECKING:
    from agent.previews import ConsolePreviews

CHUNK_MESSAGES = 2048  # score in chunks so a long stream never sits in memory twice


@dataclass(frozen=True, slots=True)
class RescoreResult:
    session_id: str
    messages: int
    readings: int
    parts: int
    set_aside: int = 0


def _in_order(
    entries: list[JournalEntry], events: list[ModerationEvent]
) -> Iterator[JournalEntry | ModerationEvent]:
    """Messages (in received order) with the moderation events merged in by time."""
    pending = iter(events)
    event = next(pending, None)
    for entry in entries:
        while event is not None and event.at < entry.sent_at:
            yield event
            event = next(pending, None)
        yield entry
    while event is not None:
        yield event
        event = next(pending, None)


def rescore_session(
    settings: Settings,
    session_id: str,
    *,
    previews: ConsolePreviews | None = None,
    scorer: Scorer | None = None,
) -> RescoreResult:
    journal = open_journal(settings)
    try:
        sessions = {s.session_id: s for s in journal.sessions()}
        if session_id not in sessions:
            # Newest first, like the report's and markers' list of known sessions.
            newest = sorted(
                sessions.values(), key=lambda s: (s.started_at, s.session_id), reverse=True
            )
            known = ", ".join(s.session_id for s in newest[:5])
            more = f" (and {len(newest) - 5} more)" if len(newest) > 5 else ""
            listing = (
                f"known sessions (newest first) are {known}{more}"
                if known
                else "it holds no session yet"
            )
            raise UsageError(
                f"no session {session_id!r} in the journal: {listing}; see `captaflow status` "
                f"or the report's session table"
            )
        info = sessions[session_id]
        entries = [e for e in journal.messages(session_id) if e.scorable]
        events = _session_events(
            journal.moderation_events(info.platform, info.channel), info, entries
        )
    finally:
        journal.close()
    if scorer is None:
        scorer = open_scorer(settings)
    spool = Spool(Path(settings.spool.dir))
    n = 1
    while spool.batch_ids_in(f"{session_id}-r{n}"):
        n += 1
    new_id = f"{session_id}-r{n}"
    pipeline = Pipeline(
        journal=None,
        ledger=NoLedger(),
        spool=spool,
        scorer=scorer,
        rules=pipeline_rules(settings, rescoring=True),
    )
    if previews is not None:
        attach_previews(pipeline, previews)
    # A demo's keys were journaled in its own dedup scope (see `journal.scoped_key`).
    scoped = bool(entries) and entries[0].key.startswith(f"{session_id}/")
    timeline = pipeline.adopt_timeline(
        new_id, info.platform, info.channel, scope=session_id if scoped else ""
    )
    for step in _in_order(entries, events):
        if isinstance(step, ModerationEvent):
            pipeline.moderate(step)
            continue
        pipeline.feed(timeline, Pipeline.item_of(step, timeline))
        if pipeline.backlog >= CHUNK_MESSAGES:
            pipeline.score_pending()
    pipeline.flush_windows()
    pipeline.score_pending()
    parts = 1 if spool.seal_open() is not None else 0
    stats = pipeline.stats
    return RescoreResult(new_id, len(entries), len(stats.readings), parts, stats.set_aside)


def _session_events(
    events: list[ModerationEvent], info: SessionInfo, entries: list[JournalEntry]
) -> list[ModerationEvent]:
    """The moderation of the session's own span: what the live agent knew while it ran. Times
    are the chat's (a recording's events are as old as its messages), so the span runs from
    the first message to the later of the last message and the session's end."""
    if not entries:
        return []
    ended = info.ended_at if info.ended_at is not None else math.inf
    start, end = entries[0].sent_at, max(entries[-1].sent_at, ended)
    return [e for e in events if start <= e.at <= end]
