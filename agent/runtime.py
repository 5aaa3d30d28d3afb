"""The agent: the event loop, its tasks, start/stop and the status snapshot.

One asyncio event loop owns I/O (the source, the journal, the spool). Scoring is CPU work and
runs in a worker thread (onnxruntime releases the GIL), so a slow batch never stalls the
socket. Uploads run in their own thread and wait on an Event, so stopping is immediate. The
tray and the command line talk to the agent only through `start`, `stop`, `status` and
`sync_now`; the web UI subscribes to `on_reading` and `on_status`.

What happens to each message (journal, windows, scores, readings, spool, the exactly-once
steps) is `agent.pipeline`; how each part is made from the settings is `agent.assembly`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.assembly import (
    StatusFileWriter,
    attach_previews,
    expected_timeline,
    open_journal,
    open_scorer,
    open_source,
    open_spool,
    open_uploader,
    pipeline_rules,
)
from agent.config import Settings
from agent.errors import CaptaFlowError, SourceError, SpoolError
from agent.pipeline import Pipeline, RunStats, Scorer, duplicates_note
from agent.sources.base import ChatSource
from agent.vocab import (
    AgentState,
    AgentStatus,
    Reading,
    SourceState,
    SourceStatus,
    validate_name,
)

if TYPE_CHECKING:
    from agent.previews import ConsolePreviews
    from agent.sync import Uploader
    from agent.webui import LiveServices

log = logging.getLogger("captaflow.agent")

JOURNAL_FLUSH_SECONDS = 0.25  # guarantee 4: at most the last second of messages is lost
HOUSEKEEPING_SECONDS = 0.25
STATUS_SECONDS = 1.0
INGEST_YIELD_EVERY = 64  # let scoring and housekeeping run during a burst of messages
DISK_CHECK_SECONDS = 5.0
PRUNE_SECONDS = 60.0

StatusListener = Callable[[AgentStatus], None]
ReadingListener = Callable[[Reading], None]


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


def _final_source_status(status: SourceStatus) -> SourceStatus:
    """What the source line says once the agent has stopped: why it ended, or just stopped."""
    # The counts of replaced times and skipped frames stay: they are the run's record.
    ended = status.state in (SourceState.FAILED, SourceState.FINISHED)
    return SourceStatus(
        status.state if ended else SourceState.STOPPED,
        status.detail if ended else "",
        times_replaced=status.times_replaced,
        frames_skipped=status.frames_skipped,
    )


class Agent:
    """The whole flow behind start/stop/status. Safe to drive from the tray's thread.

    `on_status` and `on_reading` are plain listener lists (append before `start`); they are
    called on the agent's thread, must be cheap, and an exception in one is logged only.
    `own_session`: every run is a session of its own, counting its messages afresh (the demo).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        previews: ConsolePreviews | None = None,
        scorer: Scorer | None = None,
        on_status: StatusListener | None = None,
        own_session: bool = False,
    ) -> None:
        self.settings = settings
        self.previews = previews
        self.own_session = own_session
        self.on_status: list[StatusListener] = [on_status] if on_status is not None else []
        self.on_reading: list[ReadingListener] = []
        self._scorer = scorer
        self._status = AgentStatus()
        self._status_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._done = threading.Event()
        self._done.set()
        self._error: BaseException | None = None
        self._uploader: Uploader | None = None
        self._uploader_stop = threading.Event()
        self._uploader_thread: threading.Thread | None = None
        self._pipeline: Pipeline | None = None
        self._status_file = StatusFileWriter(settings.paths.status_file)
        self._scoring_wakeup: asyncio.Event | None = None
        self._draining = False
        self._last_publish = 0.0
        self._last_disk_check = -DISK_CHECK_SECONDS
        self._parts_waiting = 0
        self._disk_problem: str | None = None
        self.stats = RunStats()
        self.live: LiveServices | None = None  # live moments, markers, the web UI

    # ---- the interface the tray and the command line use -------------------------------

    def start(self) -> None:
        """Start in a background thread; returns at once (see `status`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._done.clear()
        self._error = None
        self._open_live()
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
        self._open_live()
        try:
            with contextlib.suppress(KeyboardInterrupt):  # handled inside _main normally
                asyncio.run(self._main())
        finally:
            if self.live is not None:
                self.live.close()
                self.live = None
        if self._error is not None:
            raise self._error
        return 0

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def session_id(self) -> str | None:
        """The session of the run's first timeline (None before its first message)."""
        primary = self._pipeline.primary if self._pipeline is not None else None
        return primary.session_id if primary is not None else None

    def duplicates_note(self) -> str | None:
        """A line for a run that found only chat already recorded, saying how to re-score."""
        return duplicates_note(self.stats)

    # ---- internals ----------------------------------------------------------------------

    def _open_live(self) -> None:
        """Once: live moments, Twitch markers and the local web UI (agent/webui.py)."""
        if self.live is None:
            from agent.webui import attach

            try:
                self.live = attach(self, self.settings)
            except OSError as exc:
                # The live extras are a courtesy: a full disk or a locked folder (the UI's
                # token file) must not keep the agent from reading chat.
                log.warning("live moments and the web UI are off: %s", exc)

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
        for listener in list(self.on_status):
            try:
                listener(snapshot)
            except Exception:  # a listener (tray, web UI) never takes the agent down
                log.warning("a status listener failed", exc_info=True)

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
        problem: str | None = None
        try:
            await self._run(stop_requested)
        except CaptaFlowError as exc:
            self._error = exc
            problem = str(exc)
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        finally:
            # The last word, after everything stopped: the file says so ("stopped", not the
            # "running" of the last tick).
            final = self.status()
            self._set_status(
                state=AgentState.STOPPED,
                source=_final_source_status(final.source),
                messages_per_second=0.0,
                problem=problem if problem is not None else self._settled_problem(),
            )
            self._status_file.write(self.status(), force=True)
            self._done.set()
            self._loop = None

    def _settled_problem(self) -> str | None:
        """The problem a stopped agent still has to report (readings a full disk held back).
        Set-aside windows have their own count (`set_aside_total`), not a problem line."""
        return self._pipeline.write_problem if self._pipeline is not None else None

    async def _run(self, stop_requested: asyncio.Event) -> None:
        s = self.settings
        scorer = self._scorer
        if scorer is None:
            scorer = await asyncio.to_thread(open_scorer, s)
        self._status_file.model_id = scorer.model_id
        self._status_file.model_dir = str(Path(s.model.dir).absolute())
        expected = expected_timeline(s)
        Path(s.data_dir).mkdir(parents=True, exist_ok=True)
        journal = open_journal(s)
        try:
            spool = open_spool(s)
            pipeline = Pipeline(
                journal=journal,
                spool=spool,
                scorer=scorer,
                rules=pipeline_rules(s, own_session=self.own_session),
            )
            pipeline.on_reading = self.on_reading  # one list: listeners added later count
            if self.previews is not None:
                attach_previews(pipeline, self.previews)
            self._pipeline = pipeline
            self.stats = pipeline.stats
            self._scoring_wakeup = asyncio.Event()
            self._draining = False
            now = time.time()
            if expected is not None:
                pipeline.open_timeline(*expected, now)
            if s.source.channel and not self.own_session:
                pipeline.resume_crashed(validate_name(s.source.channel), now)
            # A fresh run counts from zero (the tray may start the same Agent again).
            fresh = AgentStatus(state=AgentState.RUNNING, source=self.status().source)
            reset = {f.name: getattr(fresh, f.name) for f in fields(fresh)}
            self._set_status(**(reset | self._session_fields()))
            await self._score_pending()
            self._start_uploader()
            source = open_source(
                s, on_status=self._on_source_status, on_moderation=pipeline.moderate
            )
            source_error = await self._run_tasks(source, pipeline, stop_requested)
            await self._score_pending()
            try:
                sealed = spool.seal_open()
            except SpoolError as exc:
                # The journal still holds those messages as assigned: a restart with free
                # disk scores them again. Nothing collected is dropped.
                log.error("%s", exc)
                raise
            if sealed is not None:
                log.info("sealed %s", sealed)
            pipeline.confirm_written()
            pipeline.end_sessions(time.time())
            self._set_status(
                parts_waiting=len(spool.sealed_parts()),
                readings_total=len(self.stats.readings),
                messages_total=self.stats.messages,
                duplicates_total=self.stats.duplicates,
                set_aside_total=self.stats.set_aside,
                **self._session_fields(),
            )
            if self.previews is not None:
                self.previews.summary(self.stats.readings)
            if source_error is not None:
                raise source_error
        finally:
            self._stop_uploader()
            journal.close()

    async def _run_tasks(
        self, source: ChatSource, pipeline: Pipeline, stop_requested: asyncio.Event
    ) -> CaptaFlowError | None:
        """Ingest until the source ends or a stop; then drain what was received."""
        ingest = asyncio.create_task(self._ingest(source, pipeline), name="ingest")
        housekeeping = asyncio.create_task(self._housekeeping(pipeline), name="housekeeping")
        scoring = asyncio.create_task(self._scoring(), name="scoring")
        stop_wait = asyncio.create_task(stop_requested.wait(), name="stop")
        await asyncio.wait({ingest, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        await source.close()
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
        assert pipeline.journal is not None
        pipeline.journal.flush()
        pipeline.flush_windows()
        # Let the scorer finish what it holds: cancelling it mid-batch would leave those
        # windows assigned but unwritten until the next start.
        self._draining = True
        self._wake_scoring()
        await scoring
        return source_error

    def _wake_scoring(self) -> None:
        if self._scoring_wakeup is not None:
            self._scoring_wakeup.set()

    async def _ingest(self, source: ChatSource, pipeline: Pipeline) -> None:
        received = 0
        async for message in source.messages():
            received += 1
            if received % INGEST_YIELD_EVERY == 0:
                # A source with a backlog (a replay at full speed, a burst in one frame)
                # never suspends on its own; without this the scorer would wait for all of it.
                await asyncio.sleep(0)
            if pipeline.add(message, time.time()):
                self.stats.recent_arrivals.append(time.monotonic())
            if pipeline.has_work:
                self._wake_scoring()

    async def _housekeeping(self, pipeline: Pipeline) -> None:
        assert pipeline.journal is not None
        journal = pipeline.journal
        last_flush = last_prune = time.monotonic()
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            now = time.monotonic()
            if now - last_flush >= JOURNAL_FLUSH_SECONDS:
                journal.flush()
                last_flush = now
            pipeline.tick(time.time())
            if pipeline.has_work:
                self._wake_scoring()
            for part in pipeline.spool.maybe_seal(time.time()):
                log.info("sealed %s", part)
                self.sync_now()
            if now - last_prune >= PRUNE_SECONDS:
                last_prune = now
                journal.prune(time.time())
                pipeline.spool.enforce_bound()
            self._publish_status()

    async def _scoring(self) -> None:
        assert self._scoring_wakeup is not None
        while not self._draining:
            await self._scoring_wakeup.wait()
            self._scoring_wakeup.clear()
            await self._score_pending()

    async def _score_pending(self) -> None:
        """Score what is queued: the CPU work in a worker thread, the writing on this one."""
        pipeline = self._pipeline
        assert pipeline is not None
        while (chunk := pipeline.next_chunk()) is not None:
            outcome = await asyncio.to_thread(pipeline.attempt, chunk)
            pipeline.finish(chunk, outcome)
            if pipeline.write_problem:
                self._set_status(state=AgentState.TROUBLE, problem=pipeline.write_problem)
        if self.stats.readings:
            self._set_status(dominant=self.stats.readings[-1].dominant)

    # -- sync and status ---------------------------------------------------------------------

    def _start_uploader(self) -> None:
        uploader = open_uploader(self.settings)
        if uploader is None:
            self._set_status(upload_state="off (no bucket set)")
            return
        self._uploader = uploader
        self._uploader_stop.clear()
        thread = threading.Thread(
            target=uploader.run, args=(self._uploader_stop,), name="captaflow-sync", daemon=True
        )
        self._uploader_thread = thread
        thread.start()

    def _stop_uploader(self) -> None:
        self._uploader_stop.set()
        uploader = self._uploader
        if uploader is not None:
            uploader.wake()
        if self._uploader_thread is not None:
            self._uploader_thread.join(timeout=5.0)
        if uploader is not None:
            self._set_status(upload_state=f"stopped; last: {uploader.status().describe()}")
        self._uploader = None

    def _session_fields(self) -> dict[str, Any]:
        pipeline = self._pipeline
        primary = pipeline.primary if pipeline is not None else None
        if primary is None:
            return {}
        return {"session_id": primary.session_id, "channel": primary.channel}

    def _publish_status(self) -> None:
        """Refresh the snapshot (once a second; the spool is looked at every few seconds)."""
        now = time.monotonic()
        if now - self._last_publish < STATUS_SECONDS:
            return
        self._last_publish = now
        pipeline = self._pipeline
        assert pipeline is not None
        if now - self._last_disk_check >= DISK_CHECK_SECONDS:
            self._last_disk_check = now
            self._parts_waiting = len(pipeline.spool.sealed_parts())
            self._disk_problem = pipeline.spool.disk_usage().warning
        current = self.status()
        upload_state = current.upload_state
        if self._uploader is not None:
            upload_state = self._uploader.status().describe()
        source = current.source
        trouble = (
            pipeline.write_problem
            # A full disk: what waits in memory, said live until it is written (store).
            or pipeline.spool.problem
            or (pipeline.journal.problem if pipeline.journal is not None else None)
            or self._disk_problem
            or (source.detail if source.state is SourceState.FAILED else None)
            or source.problem  # the link works but needs the streamer (agent.sources.link)
        )
        changes: dict[str, Any] = {}
        if current.state in (AgentState.RUNNING, AgentState.TROUBLE):
            changes["state"] = AgentState.TROUBLE if trouble else AgentState.RUNNING
        self._set_status(
            messages_per_second=self.stats.rate(now),
            messages_total=self.stats.messages,
            duplicates_total=self.stats.duplicates,
            readings_total=len(self.stats.readings),
            parts_waiting=self._parts_waiting,
            upload_state=upload_state,
            # A set-aside window is counted, not an alarm: the readings go on.
            set_aside_total=self.stats.set_aside,
            problem=trouble,
            **self._session_fields(),
            **changes,
        )
        self._status_file.write(self.status())
