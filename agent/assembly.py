"""The assembly: typed `Settings` → the running parts (scorer, window rules, journal, spool,
source, uploader, status file).

Every command that needs a part builds it here, so `run`, `score`, `replay`, the tray and the
agent make each part the same way; the agent (`agent.runtime`) only runs them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent import __version__
from agent.audience import bot_names
from agent.config import Settings
from agent.errors import SettingsError
from agent.journal import Journal
from agent.pipeline import Pipeline, PipelineRules, Scorer
from agent.sources import ChatSource, ModerationCallback, StatusCallback, descriptor
from agent.spool import Spool
from agent.vocab import AgentStatus, Reading, StatusRecord, validate_name
from agent.windows import WindowPolicy

if TYPE_CHECKING:
    from agent.previews import ConsolePreviews
    from agent.sync import Uploader

log = logging.getLogger("captaflow.assembly")

STATUS_WRITE_SECONDS = 2.0


def open_scorer(settings: Settings) -> Scorer:
    """The scorer the settings describe (model folder, threads, cache, emote table)."""
    from agent.scorer import Scorer as OnnxScorer

    m = settings.model
    return OnnxScorer.open(
        Path(m.dir),
        threads=m.threads,
        cache_size=m.cache_size,
        translate_emotes=m.translate_emotes,
        emote_table=Path(m.emote_table) if m.emote_table else None,
    )


def window_policy(settings: Settings) -> WindowPolicy:
    w = settings.window
    return WindowPolicy(
        max_messages=w.messages or None,
        max_seconds=w.seconds or None,
        max_age=w.max_age_seconds,
    )


def pipeline_rules(
    settings: Settings, *, own_session: bool = False, rescoring: bool = False
) -> PipelineRules:
    kind = settings.source.kind
    return PipelineRules(
        policy=window_policy(settings),
        displayed=tuple(settings.display.emotions),
        agent_version=__version__,
        bots=bot_names(settings.audience.bots),
        skip_commands=settings.audience.skip_commands,
        # A demo shows the same readings every time, so it never samples to keep up.
        max_lag_seconds=None if rescoring or own_session else settings.window.max_lag_seconds,
        own_session=own_session,
        repeatable=own_session,
        recording_clock=kind == "replay",
        # For readings recovered from the journal, which keeps no `via`; messages say theirs.
        via=descriptor(kind).via,
        # A recording is filed under the chat it recorded unless a channel is given.
        channel=validate_name(settings.source.channel)
        if kind == "replay" and settings.source.channel
        else "",
    )


def expected_timeline(settings: Settings) -> tuple[str, str] | None:
    """The (platform, channel) a source's chat is known to come from before it says so: a
    source that reads one platform itself (no bridge) is named after it (twitch). A bridge
    or a recording names each message's platform, so its timelines open as the chat
    arrives."""
    src = settings.source
    found = descriptor(src.kind)
    if not found.needs_channel:
        return None
    if not src.channel:
        raise SettingsError(
            "source.channel is empty: pass --channel NAME (the chat to read) or set it "
            "in the config file"
        )
    channel = validate_name(src.channel)
    return None if found.via else (found.kind, channel)


def open_journal(settings: Settings) -> Journal:
    return Journal.open(
        Path(settings.journal_path),
        retention_days=settings.journal.retention_days,
        max_bytes=int(settings.journal.max_mb) << 20,
    )


def open_spool(settings: Settings) -> Spool:
    """The spool, with what a crash left in it recovered (logged part by part)."""
    s = settings.spool
    spool = Spool(
        Path(s.dir),
        max_part_rows=s.part_max_rows,
        max_part_age_seconds=s.part_max_seconds,
        max_disk_bytes=int(s.max_disk_mb) << 20,
        warn_fraction=s.warn_fraction,
    )
    recovery = spool.recover()
    if recovery.sealed or recovery.corrupt:
        log.info(
            "spool recovery: %d open part(s) sealed, %d set aside in corrupt/",
            len(recovery.sealed),
            len(recovery.corrupt),
        )
    return spool


def open_source(
    settings: Settings,
    *,
    on_status: StatusCallback | None = None,
    on_moderation: ModerationCallback | None = None,
) -> ChatSource:
    """The chat source the settings name, with its secrets (environment, then keyring)."""
    from agent.sources import open_source as open_configured_source

    return open_configured_source(settings.source, on_status=on_status, on_moderation=on_moderation)


def open_uploader(settings: Settings) -> Uploader | None:
    """The S3 uploader, or None when uploads are off (no bucket set)."""
    sync = settings.sync
    if not (sync.enabled and sync.bucket):
        return None
    from agent.s3store import S3ObjectStore
    from agent.sync import Uploader

    store = S3ObjectStore(sync.bucket, region=sync.region or None)
    return Uploader(Path(settings.spool.dir), store, sync.prefix, interval=sync.interval_seconds)


def attach_previews(pipeline: Pipeline, previews: ConsolePreviews) -> None:
    """Console previews of each message and window as readings are written."""

    def show(reading: Reading, texts: Sequence[str], scores: np.ndarray) -> None:
        for text, row in zip(texts, scores, strict=True):
            previews.message(text, row)
        previews.batch(reading)

    pipeline.on_window.append(show)


class StatusFileWriter:
    """Writes the status snapshot for `captaflow status` (atomically, at most every 2 s)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.model_id = ""
        self.model_dir = ""  # the bundle in use, so `captaflow status` names it
        self._clock = clock
        self._last = -STATUS_WRITE_SECONDS

    def write(self, status: AgentStatus, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < STATUS_WRITE_SECONDS:
            return
        self._last = now
        record = StatusRecord.of(
            status,
            pid=os.getpid(),
            written_at=time.time(),
            model_id=self.model_id,
            model_dir=self.model_dir,
        )
        tmp = self.path.with_suffix(".tmp")
        with contextlib.suppress(OSError):  # a status file is a courtesy, never a failure
            tmp.write_text(json.dumps(record.to_json(), indent=2), encoding="utf-8")
            os.replace(tmp, self.path)
