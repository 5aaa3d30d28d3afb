"""`captaflow replay --session ID`: score a past session again from the journal.

Useful after a model update or a change of window settings. The readings go to the spool
under a new session id (`<id>-r<N>`), so the original readings stay as they were and a
dashboard can tell the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import UsageError
from agent.runtime import open_scorer, window_policy
from agent.windows import WindowBuilder, batch_id_for, make_reading

CHUNK_MESSAGES = 2048  # score in chunks so a long stream never sits in memory twice


@dataclass(frozen=True, slots=True)
class RescoreResult:
    session_id: str
    messages: int
    readings: int
    parts: int


def rescore_session(
    settings: Any, session_id: str, *, previews: Any = None, scorer: Any = None
) -> RescoreResult:
    from agent.journal import Journal
    from agent.spool import Spool

    journal = Journal.open(Path(settings.journal_path))
    try:
        sessions = {s.session_id: s for s in journal.sessions()}
        if session_id not in sessions:
            known = ", ".join(sorted(sessions)[-5:]) or "none yet"
            raise UsageError(
                f"no session {session_id!r} in the journal (latest: {known}); "
                f"see `captaflow status` or the report's session table"
            )
        info = sessions[session_id]
        deleted = journal.deleted_keys(session_id)
        entries = [e for e in journal.messages(session_id) if e.scorable and e.key not in deleted]
    finally:
        journal.close()
    if scorer is None:
        scorer = open_scorer(settings)
    spool = Spool(Path(settings.spool.dir))
    n = 1
    while spool.batch_ids_in(f"{session_id}-r{n}"):
        n += 1
    new_id = f"{session_id}-r{n}"
    builder: WindowBuilder[Any] = WindowBuilder(window_policy(settings))
    windows = []
    for entry in entries:
        windows.extend(builder.add(entry, entry.sent_at))
    windows.extend(builder.flush())
    displayed = tuple(settings.display.emotions)
    readings = 0
    seq = 0
    chunk: list[Any] = []

    def score_chunk(chunk: list[Any]) -> None:
        nonlocal readings, seq
        texts = [e.text for window in chunk for e in window.items]
        scores = scorer.score(texts)
        offset = 0
        for window in chunk:
            items = list(window.items)
            block = scores[offset : offset + len(items)]
            offset += len(items)
            reading = make_reading(
                session_id=new_id,
                platform=info.platform,
                channel=info.channel,
                batch_id=batch_id_for(e.key for e in items),
                seq=seq,
                window_start=window.start,
                window_end=window.end,
                message_count=len(items),
                scores=block,
                displayed=displayed,
                model_id=scorer.model_id,
                agent_version=__version__,
            )
            spool.append(reading)
            seq += 1
            readings += 1
            if previews is not None:
                for entry, row in zip(items, block, strict=True):
                    previews.message(entry.text, row)
                previews.batch(reading)

    pending = 0
    for window in windows:
        chunk.append(window)
        pending += len(window.items)
        if pending >= CHUNK_MESSAGES:
            score_chunk(chunk)
            chunk, pending = [], 0
    if chunk:
        score_chunk(chunk)
    parts = 1 if spool.seal_open() is not None else 0
    return RescoreResult(new_id, len(entries), readings, parts)
