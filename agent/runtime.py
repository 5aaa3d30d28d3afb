"""The agent: source → journal/dedup → window → scorer → reading → spool → sync.

One asyncio event loop owns I/O (the source, the journal, the spool). Scoring is CPU work and
runs in a worker thread (onnxruntime releases the GIL), so a slow batch never stalls the
socket. Uploads run in their own thread and wait on an Event, so stopping is immediate. The
tray and the command line talk to the agent only through `start`, `stop`, `status` and
`sync_now`.

Exactly-once, step by step (guarantees 1, 2 and 4 of DESIGN.md):

1. every message is added to the journal (dedup on its key) and committed within 0.5 s;
2. a closed window is *assigned* in the journal (its messages get the batch id) before it is
   scored;
3. the reading is appended to the open spool part (flushed), then the batch is *confirmed*;
4. after a crash, assigned-but-unconfirmed batches are looked up in the spool: found → the
   reading survived, confirm it; not found → score the same messages again (same batch id);
   messages journaled but never assigned are windowed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent import __version__
from agent.audience import bot_names, is_audience
from agent.errors import CaptaFlowError, SettingsError, SourceError, SpoolError
from agent.previews import ConsolePreviews
from agent.vocab import (
    AgentState,
    AgentStatus,
    ChatMessage,
    Reading,
    SourceState,
    SourceStatus,
    validate_name,
)
from agent.windows import (
    WindowBuilder,
    WindowPolicy,
    batch_id_for,
    make_reading,
    sample_plan,
    uniform_sample,
)

log = logging.getLogger("captaflow.agent")

JOURNAL_FLUSH_SECONDS = 0.25  # guarantee 4: at most the last second of messages is lost
HOUSEKEEPING_SECONDS = 0.25
STATUS_SECONDS = 1.0
SCORE_CHUNK = 128  # messages per scoring call when a backlog is drained (~1 s of work)
INGEST_YIELD_EVERY = 64  # let scoring and housekeeping run during a burst of messages
DISK_CHECK_SECONDS = 5.0
STATUS_FILE = "status.json"


@dataclass(slots=True)
class WindowItem:
    """What a window holds: just enough to score and to count."""

    key: str
    text: str
    at: float
    author: str


@dataclass(slots=True)
class ScoringJob:
    batch_id: str
    seq: int
    items: list[WindowItem]
    start: float
    end: float


@dataclass
class RunStats:
    messages: int = 0
    duplicates: int = 0
    not_scored: int = 0  # bots and !commands: journaled, not scored
    deleted: int = 0
    readings: list[Reading] = field(default_factory=list)
    recent_arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def rate(self, now: float, span: float = 10.0) -> float:
        while self.recent_arrivals and self.recent_arrivals[0] < now - span:
            self.recent_arrivals.popleft()
        return len(self.recent_arrivals) / span


def session_platform(kind: str, configured: str) -> str:
    """The platform a session is filed under (the S3 key's platform= partition)."""
    if configured:
        return validate_name(configured, "platform")
    return "twitch" if kind == "twitch" else validate_name(kind, "platform")


def open_scorer(settings: Any) -> Any:
    """The scorer the settings describe (model folder, threads, cache, emote table)."""
    from agent.scorer import Scorer

    m = settings.model
    return Scorer.open(
        Path(m.dir),
        threads=m.threads,
        cache_size=m.cache_size,
        translate_emotes=m.translate_emotes,
        emote_table=Path(m.emote_table) if m.emote_table else None,
    )


def window_policy(settings: Any) -> WindowPolicy:
    w = settings.window
    return WindowPolicy(
        max_messages=w.messages or None,
        max_seconds=w.seconds or None,
        max_age=w.max_age_seconds,
    )


def _source_failure(outcome: object) -> CaptaFlowError | None:
    """What the ingest task ended with, as the error to report (None: a normal end)."""
    if outcome is None or isinstance(outcome, asyncio.CancelledError):
        return None
    if isinstance(outcome, CaptaFlowError):
        return outcome
    if isinstance(outcome, BaseException):
        log.error("the chat source failed", exc_info=outcome)
        return SourceError(
            f"the chat source stopped on an unexpected {type(outcome).__name__}: {outcome} "
            f"(what it delivered is saved; see the log, and start again)"
        )
    return None


class Agent:
    """The whole flow behind start/stop/status. Safe to drive from the tray's thread."""

    def __init__(
        self,
        settings: Any,
        *,
        previews: ConsolePreviews | None = None,
        scorer: Any | None = None,
        on_status: Callable[[AgentStatus], None] | None = None,
    ) -> None:
        self.settings = settings
        self.previews = previews
        self._scorer = scorer
        self._on_status = on_status
        self._status = AgentStatus()
        self._status_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._done = threading.Event()
        self._done.set()
        self._error: BaseException | None = None
        self._uploader: Any | None = None
        self._uploader_stop = threading.Event()
        self._uploader_thread: threading.Thread | None = None
        self.stats = RunStats()
        self.session_id: str | None = None

    # ---- the interface the tray and the command line use -------------------------------

    def start(self) -> None:
        """Start in a background thread; returns at once (see `status`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._done.clear()
        self._error = None
        self._set_status(state=AgentState.STARTING, problem=None)
        self._thread = threading.Thread(
            target=self._thread_main, name="captaflow-agent", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Flush the open window, seal the part, end the session. Blocks until done."""
        loop, stop_event = self._loop, self._stop_requested
        if loop is not None and stop_event is not None and not self._done.is_set():
            self._set_status(state=AgentState.STOPPING)
            with contextlib.suppress(RuntimeError):  # the loop may have closed meanwhile
                loop.call_soon_threadsafe(stop_event.set)
        self._done.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def status(self) -> AgentStatus:
        with self._status_lock:
            return self._status

    def sync_now(self) -> None:
        if self._uploader is not None:
            self._uploader.wake()

    def run_forever(self) -> int:
        """Run in this thread (headless `captaflow run`); Ctrl-C stops cleanly."""
        with contextlib.suppress(KeyboardInterrupt):  # handled inside _main normally
            asyncio.run(self._main())
        if self._error is not None:
            raise self._error
        return 0

    @property
    def error(self) -> BaseException | None:
        return self._error

    # ---- internals ----------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the tray shows it; never a silent death
            self._error = exc
            log.exception("agent stopped on an error")
        finally:
            self._done.set()

    def _set_status(self, **changes: Any) -> None:
        with self._status_lock:
            self._status = replace(self._status, **changes)
            snapshot = self._status
        if self._on_status is not None:
            with contextlib.suppress(Exception):
                self._on_status(snapshot)

    def _on_source_status(self, status: SourceStatus) -> None:
        changes: dict[str, Any] = {"source": status}
        if status.state is SourceState.FAILED:
            changes.update(state=AgentState.TROUBLE, problem=status.detail)
        self._set_status(**changes)

    async def _main(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._stop_requested = stop_requested = asyncio.Event()
        self._done.clear()
        if threading.current_thread() is threading.main_thread():
            # Headless run: Ctrl-C (and SIGTERM) stop cleanly, sealing the open part.
            for sig in (signal.SIGINT, getattr(signal, "SIGTERM", signal.SIGINT)):
                try:
                    loop.add_signal_handler(sig, stop_requested.set)
                except (NotImplementedError, RuntimeError, ValueError):  # Windows
                    signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop_requested.set))
        pipeline = _Pipeline(self)
        try:
            await pipeline.run(self._stop_requested)
        except CaptaFlowError as exc:
            self._error = exc
            self._set_status(state=AgentState.STOPPED, problem=str(exc))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        finally:
            if self._error is None:
                self._set_status(state=AgentState.STOPPED)
            self._done.set()
            self._loop = None


class _Pipeline:
    """One run of the agent: owns the journal, the spool, the source and the scorer."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.s = agent.settings
        self.stats = agent.stats
        self.displayed: tuple[str, ...] = tuple(self.s.display.emotions)
        self.scoring_queue: list[ScoringJob] = []
        self.scoring_wakeup = asyncio.Event()
        self.scorer_rate = 0.0  # messages/s the scorer has shown, an EMA
        self.last_status_write = 0.0
        self.last_publish = 0.0
        self.last_disk_check = 0.0
        self.parts_waiting = 0
        self.disk_problem: str | None = None
        self.write_problem: str | None = None
        self.deleted_ids: set[str] = set()
        self.banned_authors: set[str] = set()
        self.event_time = 0.0
        self.unconfirmed: list[str] = []
        self.draining = False

    # -- set-up ------------------------------------------------------------------------------

    def _open_scorer(self) -> Any:
        if self.agent._scorer is not None:
            return self.agent._scorer
        return open_scorer(self.s)

    async def _resolve_channel(self) -> tuple[str, str]:
        src = self.s.source
        if src.kind != "replay":
            if not src.channel:
                raise SettingsError(
                    "source.channel is empty: pass --channel NAME (the chat to read) or set it "
                    "in the config file"
                )
            return session_platform(src.kind, getattr(src, "platform", "")), validate_name(
                src.channel
            )
        # A replay is filed under the chat it recorded unless a channel is given.
        first = await self._peek_replay()
        channel = src.channel or (first.channel if first else "replay")
        platform = getattr(src, "platform", "") or (first.platform if first else "replay")
        return validate_name(platform, "platform"), validate_name(channel)

    async def _peek_replay(self) -> ChatMessage | None:
        from agent.sources import make_source

        probe = make_source(
            "replay",
            channel=self.s.source.channel or "",
            server_url=None,
            file=Path(self.s.source.file),
            speed="max",
            token=None,
            mapping=None,
        )
        try:
            async for message in probe.messages():
                return message
        finally:
            await probe.close()
        return None

    # -- the run -----------------------------------------------------------------------------

    async def run(self, stop_requested: asyncio.Event) -> None:
        from agent.journal import Journal
        from agent.sources import make_source
        from agent.spool import Spool

        s = self.s
        self.scorer = await asyncio.to_thread(self._open_scorer)
        self.platform, self.channel = await self._resolve_channel()
        data_dir = Path(s.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal.open(
            Path(s.journal_path),
            retention_days=s.journal.retention_days,
            max_bytes=int(s.journal.max_mb) << 20,
        )
        self.spool = Spool(
            Path(s.spool.dir),
            max_part_rows=s.spool.part_max_rows,
            max_part_age_seconds=s.spool.part_max_seconds,
            max_disk_bytes=int(s.spool.max_disk_mb) << 20,
            warn_fraction=s.spool.warn_fraction,
        )
        try:
            recovery = self.spool.recover()  # logs each part it recovers or sets aside
            if recovery.sealed or recovery.corrupt:
                log.info(
                    "spool recovery: %d open part(s) sealed, %d set aside in corrupt/",
                    len(recovery.sealed),
                    len(recovery.corrupt),
                )
            self.session_id, resumed = self.journal.begin_session(
                self.platform, self.channel, now=time.time()
            )
            self.agent.session_id = self.session_id
            self.bots = bot_names(s.audience.bots)
            self.policy = window_policy(s)
            self.builder: WindowBuilder[WindowItem] = WindowBuilder(self.policy)
            self.seq = self.journal.next_seq(self.session_id)
            self.agent._set_status(
                state=AgentState.RUNNING,
                session_id=self.session_id,
                channel=self.channel,
                problem=None,
            )
            log.info(
                "%s session %s on %s/%s (model %s)",
                "resumed" if resumed else "started",
                self.session_id,
                self.platform,
                self.channel,
                self.scorer.model_id,
            )
            await self._recover_batches()
            self._start_uploader()
            self.source = make_source(
                s.source.kind,
                channel=self.channel,
                server_url=s.source.server_url or None,
                file=s.source.file,
                speed=s.source.speed,
                token=s.secrets().twitch_token if s.source.kind == "twitch" else None,
                mapping=dict(s.source.mapping) if s.source.mapping else None,
                on_status=self.agent._on_source_status,
                on_moderation=self._on_moderation,
            )
            ingest = asyncio.create_task(self._ingest(), name="ingest")
            housekeeping = asyncio.create_task(self._housekeeping(), name="housekeeping")
            scoring = asyncio.create_task(self._scoring(), name="scoring")
            stop_wait = asyncio.create_task(stop_requested.wait(), name="stop")
            await asyncio.wait({ingest, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            # Stop (or the end of a replay): close the source, then drain what was received.
            await self.source.close()
            if not ingest.done():
                ingest.cancel()
            [outcome] = await asyncio.gather(ingest, return_exceptions=True)
            # A source that gave up (login refused, a bug) still gets everything it delivered
            # drained and sealed before the error is reported.
            source_error = _source_failure(outcome)
            stop_wait.cancel()
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            self.journal.flush()
            self._close_windows(self.builder.flush())
            # Let the scorer finish what it holds: cancelling it mid-batch would leave those
            # windows assigned but unwritten until the next start.
            self.draining = True
            self.scoring_wakeup.set()
            await scoring
            await self._score_pending()
            try:
                sealed = self.spool.seal_open()
            except SpoolError as exc:
                # The journal still holds those messages as assigned: a restart with free
                # disk scores them again. Nothing collected is dropped.
                log.error("%s", exc)
                raise
            if sealed is not None:
                log.info("sealed %s", sealed)
            self._confirm_written()
            self.agent._set_status(
                parts_waiting=len(self.spool.sealed_parts()),
                readings_total=len(self.stats.readings),
                messages_total=self.stats.messages,
                duplicates_total=self.stats.duplicates,
            )
            self.journal.end_session(self.session_id, now=time.time())
            if self.agent.previews is not None:
                self.agent.previews.summary(self.stats.readings)
            if source_error is not None:
                raise source_error
        finally:
            self._stop_uploader()
            self._write_status_file(force=True)
            self.journal.close()

    async def _recover_batches(self) -> None:
        """Finish what a crash left: see the module docstring, step 4."""
        pending = self.journal.pending_batches(self.session_id)
        if pending:
            in_spool = self.spool.batch_ids_in(self.session_id)
            done = [p.batch_id for p in pending if p.batch_id in in_spool]
            self.journal.confirm(done)
            redo = [p for p in pending if p.batch_id not in in_spool]
            if redo:
                wanted = {k for p in redo for k in p.keys}
                by_key = {
                    e.key: e for e in self.journal.messages(self.session_id) if e.key in wanted
                }
                for p in redo:
                    entries = [by_key[k] for k in p.keys if k in by_key]
                    items = [WindowItem(e.key, e.text, e.sent_at, e.author) for e in entries]
                    if items:
                        self.scoring_queue.append(
                            ScoringJob(p.batch_id, p.seq, items, items[0].at, items[-1].at)
                        )
                await self._score_pending()
            log.info("recovered %d batches after a restart (%d re-scored)", len(pending), len(redo))
        # Messages journaled but never put in a window are windowed again.
        for entry in self.journal.unassigned(self.session_id):
            if entry.scorable:
                self.event_time = max(self.event_time, entry.sent_at)
                self._close_windows(
                    self.builder.add(
                        WindowItem(entry.key, entry.text, entry.sent_at, entry.author),
                        entry.sent_at,
                    )
                )
        await self._score_pending()

    # -- ingestion ---------------------------------------------------------------------------

    def _on_moderation(self, event: Any) -> None:
        try:
            self.journal.record_moderation(event)
        except Exception:  # a moderation record is worth a log line, never the agent
            log.warning("could not record a moderation event %r", event, exc_info=True)
        if getattr(event, "message_id", None):
            self.deleted_ids.add(event.message_id)
        elif getattr(event, "author", None):
            self.banned_authors.add(event.author)

    async def _ingest(self) -> None:
        skip_commands = self.s.audience.skip_commands
        received = 0
        async for message in self.source.messages():
            received += 1
            if received % INGEST_YIELD_EVERY == 0:
                # A source with a backlog (a replay at full speed, a burst in one frame)
                # never suspends on its own; without this the scorer would wait for all of it.
                await asyncio.sleep(0)
            scorable = is_audience(message, bots=self.bots, skip_commands=skip_commands)
            if not self.journal.add(message, session_id=self.session_id, scorable=scorable):
                self.stats.duplicates += 1
                continue
            self.stats.messages += 1
            self.stats.recent_arrivals.append(time.monotonic())
            if not scorable:
                self.stats.not_scored += 1
                continue
            self.event_time = max(self.event_time, message.sent_at)
            self._close_windows(
                self.builder.add(
                    WindowItem(message.message_id, message.text, message.sent_at, message.author),
                    message.sent_at,
                )
            )

    def _now_for_windows(self) -> float:
        # A replay runs on the recording's clock, so its windows match the original stream.
        if self.s.source.kind == "replay":
            return self.event_time
        return time.time()

    def _close_windows(self, windows: Sequence[Any]) -> None:
        """Assign closed windows in the journal (committed) and queue them for scoring."""
        for window in windows:
            items = [
                i
                for i in window.items
                if i.key not in self.deleted_ids and i.author not in self.banned_authors
            ]
            self.stats.deleted += len(window.items) - len(items)
            if not items:
                continue
            keys = [i.key for i in items]
            batch_id = batch_id_for(keys)
            self.journal.assign(self.session_id, batch_id, self.seq, keys)
            self.scoring_queue.append(
                ScoringJob(batch_id, self.seq, items, window.start, window.end)
            )
            self.seq += 1
        if windows:
            self.scoring_wakeup.set()

    async def _housekeeping(self) -> None:
        last_flush = last_prune = time.monotonic()
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            now = time.monotonic()
            if now - last_flush >= JOURNAL_FLUSH_SECONDS:
                self.journal.flush()
                last_flush = now
            if self.s.source.kind != "replay" or self.event_time:
                self._close_windows(self.builder.tick(self._now_for_windows()))
            for part in self.spool.maybe_seal(time.time()):
                log.info("sealed %s", part)
                self.agent.sync_now()
            if now - last_prune >= 60:
                last_prune = now
                self.journal.prune(time.time())
                self.spool.enforce_bound()
            self._publish_status()

    # -- scoring -----------------------------------------------------------------------------

    async def _scoring(self) -> None:
        while not self.draining:
            await self.scoring_wakeup.wait()
            self.scoring_wakeup.clear()
            await self._score_pending()

    async def _score_pending(self) -> None:
        """Score the queued windows: small batches when quiet, big sorted ones when busy.

        The sampling plan looks at the whole backlog; the scoring goes in chunks of about
        SCORE_CHUNK messages, so the first readings of a backlog land (and show) while the
        rest is still being scored.
        """
        while self.scoring_queue:
            jobs, self.scoring_queue = self.scoring_queue, []
            sizes = [len(j.items) for j in jobs]
            plan = (
                sample_plan(sizes, self.scorer_rate, self.s.window.max_lag_seconds)
                if self.scorer_rate > 0
                else sizes
            )
            chosen = [
                uniform_sample(j.items, k, seed=j.batch_id) if k < len(j.items) else j.items
                for j, k in zip(jobs, plan, strict=True)
            ]
            start = 0
            while start < len(jobs):
                stop, count = start, 0
                while stop < len(jobs) and (count == 0 or count + len(chosen[stop]) <= SCORE_CHUNK):
                    count += len(chosen[stop])
                    stop += 1
                await self._score_jobs(jobs[start:stop], chosen[start:stop])
                start = stop

    async def _score_jobs(self, jobs: list[ScoringJob], chosen: list[list[WindowItem]]) -> None:
        texts = [i.text for items in chosen for i in items]
        started = time.perf_counter()
        scores = await asyncio.to_thread(self.scorer.score, texts)
        elapsed = max(time.perf_counter() - started, 1e-6)
        rate = len(texts) / elapsed
        self.scorer_rate = rate if self.scorer_rate == 0 else 0.7 * self.scorer_rate + 0.3 * rate
        offset = 0
        for job, items in zip(jobs, chosen, strict=True):
            block = scores[offset : offset + len(items)]
            offset += len(items)
            reading = self._reading_for(job, block)
            self._append(reading)
            self.stats.readings.append(reading)
            if self.agent.previews is not None:
                for item, row in zip(items, block, strict=True):
                    self.agent.previews.message(item.text, row)
                self.agent.previews.batch(reading)
        self._confirm_written()
        if self.stats.readings:
            self.agent._set_status(dominant=self.stats.readings[-1].dominant)

    def _append(self, reading: Reading) -> None:
        """Spool a reading; a full disk keeps it in memory (the spool retries) and says so."""
        self.unconfirmed.append(reading.batch_id)
        try:
            self.spool.append(reading)
        except SpoolError as exc:
            log.error("%s", exc)
            self.write_problem = str(exc)
            self.agent._set_status(state=AgentState.TROUBLE, problem=self.write_problem)

    def _confirm_written(self) -> None:
        # Only readings that reached the part file are confirmed; the rest stay 'assigned',
        # so a restart finds them (in the spool, or not: then they are scored again).
        if self.spool.pending:
            return
        self.write_problem = None
        if self.unconfirmed:
            self.journal.confirm(self.unconfirmed)
            self.unconfirmed = []

    def _reading_for(self, job: ScoringJob, scores: np.ndarray) -> Reading:
        return make_reading(
            session_id=self.session_id,
            platform=self.platform,
            channel=self.channel,
            batch_id=job.batch_id,
            seq=job.seq,
            window_start=job.start,
            window_end=job.end,
            message_count=len(job.items),
            scores=scores,
            displayed=self.displayed,
            model_id=self.scorer.model_id,
            agent_version=__version__,
        )

    # -- sync and status ---------------------------------------------------------------------

    def _start_uploader(self) -> None:
        sync = self.s.sync
        if not (sync.enabled and sync.bucket):
            self.agent._set_status(upload_state="off (no bucket set)")
            return
        from agent.sync import S3ObjectStore, Uploader

        store = S3ObjectStore(sync.bucket, region=sync.region or None)
        uploader = Uploader(
            Path(self.s.spool.dir), store, sync.prefix, interval=sync.interval_seconds
        )
        self.agent._uploader = uploader
        self.agent._uploader_stop.clear()
        thread = threading.Thread(
            target=uploader.run,
            args=(self.agent._uploader_stop,),
            name="captaflow-sync",
            daemon=True,
        )
        self.agent._uploader_thread = thread
        thread.start()

    def _stop_uploader(self) -> None:
        self.agent._uploader_stop.set()
        uploader = self.agent._uploader
        if uploader is not None:
            uploader.wake()
        if self.agent._uploader_thread is not None:
            self.agent._uploader_thread.join(timeout=5.0)
        self.agent._uploader = None

    def _publish_status(self) -> None:
        """Refresh the snapshot (once a second; the spool is looked at every few seconds)."""
        now = time.monotonic()
        if now - self.last_publish < STATUS_SECONDS:
            return
        self.last_publish = now
        if now - self.last_disk_check >= DISK_CHECK_SECONDS:
            self.last_disk_check = now
            self.parts_waiting = len(self.spool.sealed_parts())
            self.disk_problem = self.spool.disk_usage().warning
        uploader = self.agent._uploader
        current = self.agent.status()
        upload_state = current.upload_state
        if uploader is not None:
            upload_state = uploader.status().describe()
        source = current.source
        problem = (
            self.write_problem
            or self.disk_problem
            or (source.detail if source.state is SourceState.FAILED else None)
        )
        changes: dict[str, Any] = {}
        if current.state in (AgentState.RUNNING, AgentState.TROUBLE):
            changes["state"] = AgentState.TROUBLE if problem else AgentState.RUNNING
        self.agent._set_status(
            messages_per_second=self.stats.rate(now),
            messages_total=self.stats.messages,
            duplicates_total=self.stats.duplicates,
            readings_total=len(self.stats.readings),
            parts_waiting=self.parts_waiting,
            upload_state=upload_state,
            problem=problem,
            **changes,
        )
        self._write_status_file()

    def _write_status_file(self, force: bool = False) -> None:
        """`captaflow status` in another process reads this snapshot."""
        now = time.monotonic()
        if not force and now - self.last_status_write < 2.0:
            return
        self.last_status_write = now
        status = self.agent.status()
        payload = {
            "pid": os.getpid(),
            "written_at": time.time(),
            "state": str(status.state),
            "source": {"state": str(status.source.state), "detail": status.source.detail},
            "session_id": status.session_id,
            "channel": status.channel,
            "messages_per_second": round(status.messages_per_second, 2),
            "messages_total": status.messages_total,
            "duplicates_total": status.duplicates_total,
            "readings_total": status.readings_total,
            "parts_waiting": status.parts_waiting,
            "upload_state": status.upload_state,
            "dominant": status.dominant,
            "problem": status.problem,
        }
        path = Path(self.s.data_dir) / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
            os.replace(tmp, path)
