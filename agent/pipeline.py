"""The pipeline core: journal → windows → scorer → reading → spool, over objects passed in.

No settings, threads, tasks or clocks of its own: the caller (the live agent in
`agent.runtime`, `captaflow replay` in `agent.rescore`) feeds messages and instants in and
decides where scoring runs. Scoring is split so that the CPU work can go to a worker thread
while everything that touches the journal and the spool stays on the caller's thread:

    chunk = pipeline.next_chunk()           # caller's thread: plan (and sample) the backlog
    outcome = pipeline.attempt(chunk)       # any thread: only the scorer runs here
    pipeline.finish(chunk, outcome)         # caller's thread: readings → spool → journal

Exactly-once, step by step (guarantees 1, 2 and 4 of DESIGN.md):

1. every message is added to the journal (dedup on its key) before it joins a window;
2. a closed window is *assigned* in the journal (its messages get the batch id) before it is
   scored;
3. the reading is appended to the open spool part (flushed), then the batch is *confirmed*;
4. after a crash, assigned-but-unconfirmed batches are looked up in the spool: found → the
   reading survived, confirm it; not found → score the same messages again (same batch id);
   messages journaled but never assigned are windowed again.

Timelines: each (platform, channel) is windowed apart, with its own session, sequence and
S3 partition, so one bridge feed that mixes YouTube and Twitch chat gives two timelines.

Moderation, one rule for live and replay: a message deleted by id and every message of a
banned or timed-out author are left out of each window that closes after the event is known
(for the rest of the session); a window already closed keeps them.

No poison pill: a window that cannot be formed, scored or written is *set aside*: journaled
with its reason (`journal.set_aside`), counted, never retried, and the pipeline moves on.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent.audience import is_audience
from agent.errors import SpoolError
from agent.journal import Journal, JournalEntry, scoped_key
from agent.spool import Spool
from agent.vocab import ChatMessage, ModerationEvent, Reading, validate_name
from agent.windows import (
    LATEST_TIMESTAMP,
    Window,
    WindowBuilder,
    WindowPolicy,
    batch_id_for,
    make_reading,
    sample_plan,
    uniform_sample,
)

log = logging.getLogger("captaflow.pipeline")

SCORE_CHUNK = 128  # messages per scoring call when a backlog is drained (~1 s of work)
RESUME_WITHIN = 6 * 3600.0  # a crashed session active this recently is resumed


class Scorer(Protocol):
    """What the pipeline needs of `agent.scorer.Scorer`."""

    @property
    def model_id(self) -> str: ...

    def score(self, texts: Sequence[str]) -> np.ndarray: ...


class BatchLedger(Protocol):
    """Where batches are assigned, confirmed and set aside: the journal, live."""

    def assign(self, session_id: str, batch_id: str, seq: int, keys: Sequence[str]) -> None: ...

    def confirm(self, batch_ids: Iterable[str]) -> None: ...

    def set_aside(self, batch_id: str, reason: str) -> None: ...


class NoLedger:
    """For re-scoring: the batches of a past session are already in the journal, untouched."""

    def assign(self, session_id: str, batch_id: str, seq: int, keys: Sequence[str]) -> None:
        pass

    def confirm(self, batch_ids: Iterable[str]) -> None:
        pass

    def set_aside(self, batch_id: str, reason: str) -> None:
        log.warning("set aside batch %s: %s", batch_id, reason)


ReadingListener = Callable[[Reading], None]
# Previews want the texts and per-message scores of a window too.
WindowListener = Callable[[Reading, Sequence[str], np.ndarray], None]


@dataclass(frozen=True, slots=True)
class PipelineRules:
    """How windows are made and read: the pure settings of a run (the assembly fills them)."""

    policy: WindowPolicy
    displayed: tuple[str, ...]
    agent_version: str
    bots: frozenset[str] = frozenset()
    skip_commands: bool = True
    max_lag_seconds: float | None = 5.0  # None: score every message (re-scoring)
    own_session: bool = False  # a demo: a new session per run, dedup within it only
    # Each window scored in a call of its own: the int8 graph's scores shift a little with
    # batch-mates, and which windows share a call depends on timing; so a rerun (the demo)
    # gives bit-identical readings only this way.
    repeatable: bool = False
    recording_clock: bool = False  # a replay: windows follow the messages' own times
    via: str = ""  # the bridge of the source, for batches recovered from the journal
    channel: str = ""  # file every message under this channel (a replay given --channel)


@dataclass(slots=True)
class WindowItem:
    """What a window holds: just enough to score and to count."""

    key: str
    text: str
    at: float
    author: str
    via: str = ""


@dataclass(slots=True)
class Timeline:
    """One (platform, channel) of a run: its session, windows and sequence numbers."""

    platform: str
    channel: str
    session_id: str
    builder: WindowBuilder[WindowItem]
    seq: int
    scope: str = ""  # dedup scope of its journal keys ("" = across sessions)
    via: str = ""
    event_time: float = 0.0  # latest message time seen (the recording's clock on replay)


@dataclass(slots=True)
class ScoringJob:
    timeline: Timeline
    batch_id: str
    seq: int
    items: list[WindowItem]
    start: float
    end: float


@dataclass(slots=True)
class ScoringChunk:
    """Windows scored in one call, each with the items chosen (all, or a uniform sample)."""

    jobs: list[ScoringJob]
    chosen: list[list[WindowItem]]

    @property
    def texts(self) -> list[str]:
        return [i.text for items in self.chosen for i in items]


@dataclass(frozen=True, slots=True)
class ScoringOutcome:
    scores: np.ndarray | None
    error: Exception | None
    seconds: float


@dataclass
class RunStats:
    messages: int = 0
    duplicates: int = 0
    not_scored: int = 0  # bots and !commands: journaled, not scored
    deleted: int = 0
    unreadable: int = 0  # messages that could not be journaled or windowed (skipped)
    set_aside: int = 0  # windows that could not be scored or written
    last_set_aside: str = ""
    readings: list[Reading] = field(default_factory=list)
    # Which earlier sessions the duplicates were first recorded in (for "already recorded").
    duplicate_sessions: Counter[str] = field(default_factory=Counter)
    recent_arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def rate(self, now: float, span: float = 10.0) -> float:
        while self.recent_arrivals and self.recent_arrivals[0] < now - span:
            self.recent_arrivals.popleft()
        return len(self.recent_arrivals) / span


def duplicates_note(stats: RunStats) -> str | None:
    """One line for a run whose chat was (mostly) recorded before: how to score it again."""
    if not stats.duplicate_sessions or stats.messages > stats.duplicates:
        return None
    earlier = ", ".join(s for s, _ in stats.duplicate_sessions.most_common(3))
    first = stats.duplicate_sessions.most_common(1)[0][0]
    return (
        f"this chat was already recorded ({stats.duplicates} duplicates, in session {earlier}): "
        f"nothing new to read; to score it again run `captaflow replay --session {first}`"
    )


class Moderation:
    """What moderators removed, as known so far (the one rule of the module docstring)."""

    def __init__(self) -> None:
        self._deleted: set[str] = set()  # journal keys
        self._banned: set[tuple[str, str, str]] = set()  # (platform, channel, author)

    def note(self, event: ModerationEvent, channel: str, scope: str) -> None:
        """Apply an event to the chat (`event.platform`, `channel`) from now on."""
        if event.message_id:
            self._deleted.add(scoped_key(scope, event.message_id))
        elif event.author:
            self._banned.add((event.platform, channel, event.author.lower()))

    def keeps(self, timeline: Timeline, item: WindowItem) -> bool:
        return item.key not in self._deleted and (
            (timeline.platform, timeline.channel, item.author.lower()) not in self._banned
        )


def _notify(listeners: Sequence[Callable[..., None]], *args: object) -> None:
    for listener in list(listeners):
        try:
            listener(*args)
        except Exception:  # a listener (web UI, previews) never takes the pipeline down
            log.warning("a reading listener failed", exc_info=True)


class Pipeline:
    """One run: messages in, readings out. Drive it from one thread (see the module doc)."""

    def __init__(
        self,
        *,
        journal: Journal | None,
        spool: Spool,
        scorer: Scorer,
        rules: PipelineRules,
        ledger: BatchLedger | None = None,
    ) -> None:
        if ledger is None:
            if journal is None:
                raise ValueError("a pipeline needs a journal or a ledger")
            ledger = journal
        self.journal = journal
        self.ledger: BatchLedger = ledger
        self.spool = spool
        self.scorer = scorer
        self.rules = rules
        self.stats = RunStats()
        self.moderation = Moderation()
        self.timelines: dict[tuple[str, str], Timeline] = {}
        self.on_reading: list[ReadingListener] = []
        self.on_window: list[WindowListener] = []
        self.scorer_rate = 0.0  # messages/s the scorer has shown, an EMA
        self.write_problem: str | None = None
        self._queue: list[ScoringJob] = []
        self._planned: deque[ScoringChunk] = deque()
        self._unconfirmed: list[str] = []

    # -- timelines ---------------------------------------------------------------------------

    @property
    def primary(self) -> Timeline | None:
        """The first timeline of the run (what the status line names)."""
        return next(iter(self.timelines.values()), None)

    def open_timeline(self, platform: str, channel: str, now: float) -> Timeline:
        """The timeline of a chat: begun (or resumed after a crash) in the journal on first use,
        with what a crash left of it queued again."""
        key = (validate_name(platform, "platform"), validate_name(channel))
        timeline = self.timelines.get(key)
        if timeline is not None:
            return timeline
        journal = self._journal()
        session_id, resumed = journal.begin_session(
            *key, now=now, resume_within=-math.inf if self.rules.own_session else RESUME_WITHIN
        )
        timeline = Timeline(
            platform=key[0],
            channel=key[1],
            session_id=session_id,
            builder=WindowBuilder(self.rules.policy),
            seq=journal.next_seq(session_id),
            scope=session_id if self.rules.own_session else "",
            via=self.rules.via,
        )
        self.timelines[key] = timeline
        log.info(
            "%s session %s on %s/%s (model %s)",
            "resumed" if resumed else "started",
            session_id,
            *key,
            self.scorer.model_id,
        )
        self._recover(timeline)
        return timeline

    def adopt_timeline(
        self, session_id: str, platform: str, channel: str, *, scope: str = ""
    ) -> Timeline:
        """A timeline whose session is made elsewhere (re-scoring writes under a new id);
        `scope` is the dedup scope its journal keys were written in."""
        timeline = Timeline(
            platform, channel, session_id, WindowBuilder(self.rules.policy), seq=0, scope=scope
        )
        self.timelines[(platform, channel)] = timeline
        return timeline

    def resume_crashed(self, channel: str, now: float) -> None:
        """Open the timelines of this channel that a crash left open (any platform), so their
        unfinished windows are recovered at start, before any new message. Only sessions begun
        within the resume window: an older one would be ended and an empty one begun in its
        place (its platform's timeline opens, and recovers, with its next message)."""
        journal = self._journal()
        for info in journal.sessions():
            if (
                info.ended_at is None
                and info.channel == channel
                and info.message_count
                and now - info.started_at <= RESUME_WITHIN
            ):
                self.open_timeline(info.platform, info.channel, now)

    def _journal(self) -> Journal:
        if self.journal is None:
            raise RuntimeError("this pipeline re-scores; it has no journal to begin sessions in")
        return self.journal

    def _recover(self, timeline: Timeline) -> None:
        """Finish what a crash left (module docstring, step 4); scoring is the caller's."""
        journal = self._journal()
        session_id = timeline.session_id
        pending = journal.pending_batches(session_id)
        if pending:
            in_spool = self.spool.batch_ids_in(session_id)
            journal.confirm(p.batch_id for p in pending if p.batch_id in in_spool)
            redo = [p for p in pending if p.batch_id not in in_spool]
            if redo:
                wanted = {k for p in redo for k in p.keys}
                by_key = {e.key: e for e in journal.messages(session_id) if e.key in wanted}
                for p in redo:
                    items = [self.item_of(by_key[k], timeline) for k in p.keys if k in by_key]
                    if items:
                        self._queue.append(
                            ScoringJob(
                                timeline, p.batch_id, p.seq, items, items[0].at, items[-1].at
                            )
                        )
            log.info("recovered %d batches after a restart (%d re-scored)", len(pending), len(redo))
        for entry in journal.unassigned(session_id):
            if entry.scorable:
                self.feed(timeline, self.item_of(entry, timeline))

    @staticmethod
    def item_of(entry: JournalEntry, timeline: Timeline) -> WindowItem:
        return WindowItem(entry.key, entry.text, entry.sent_at, entry.author, timeline.via)

    # -- ingestion ---------------------------------------------------------------------------

    def add(self, message: ChatMessage, now: float) -> bool:
        """Journal one message and window it; False if it was a duplicate or unreadable."""
        journal = self._journal()
        try:
            channel = self.rules.channel or message.channel
            timeline = self.open_timeline(message.platform, channel, now)
        except ValueError as exc:  # a platform or channel name no file path may carry
            self._unreadable(message, exc)
            return False
        scorable = is_audience(
            message, bots=self.rules.bots, skip_commands=self.rules.skip_commands
        )
        try:
            new = journal.add(
                message, session_id=timeline.session_id, scorable=scorable, scope=timeline.scope
            )
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. text SQLite cannot encode
            self._unreadable(message, exc)
            return False
        if not new:
            self.stats.duplicates += 1
            earlier = journal.session_of(scoped_key(timeline.scope, message.message_id))
            if earlier is not None and earlier != timeline.session_id:
                self.stats.duplicate_sessions[earlier] += 1
            return False
        self.stats.messages += 1
        if not scorable:
            self.stats.not_scored += 1
            return True
        if message.via:
            timeline.via = message.via
        item = WindowItem(
            scoped_key(timeline.scope, message.message_id),
            message.text,
            message.sent_at,
            message.author,
            message.via,
        )
        self.feed(timeline, item)
        return True

    def _unreadable(self, message: ChatMessage, exc: Exception) -> None:
        self.stats.unreadable += 1
        log.warning("skipped a message that cannot be journaled (%s: %s)", type(exc).__name__, exc)

    def feed(self, timeline: Timeline, item: WindowItem) -> None:
        """Window one item already journaled (or, re-scoring, read from the journal)."""
        if not 0.0 <= item.at <= LATEST_TIMESTAMP:  # NaN too
            # A time no reading can carry would drag every later window of the timeline
            # with it (window times are monotone): this message is a window of its own.
            self._assign_and_set_aside(
                timeline, [item], f"holds a message sent at an impossible time ({item.at!r})"
            )
            return
        timeline.event_time = max(timeline.event_time, item.at)
        try:
            closed = timeline.builder.add(item, item.at)
        except (ValueError, OverflowError) as exc:
            # The builder cannot place this time (a poisoned clock): set the open window and
            # the item aside and start the timeline's windows afresh.
            stuck = [*timeline.builder.drain(), item]
            timeline.builder = WindowBuilder(self.rules.policy)
            self._assign_and_set_aside(timeline, stuck, f"cannot be windowed: {exc}")
            return
        self._close(timeline, closed)

    def moderate(self, event: ModerationEvent) -> None:
        """A moderation event from the source: journaled, and applied from now on."""
        if self.journal is not None:
            try:
                self.journal.record_moderation(event)
            except Exception:  # a moderation record is worth a log line, never the agent
                log.warning("could not record a moderation event %r", event, exc_info=True)
        channel = self.rules.channel or event.channel.lstrip("#").lower()
        timeline = self.timelines.get((event.platform, channel))
        self.moderation.note(event, channel, timeline.scope if timeline is not None else "")

    def tick(self, now: float) -> None:
        """Close the windows that are due at `now` (wall clock; a replay's own clock)."""
        for timeline in list(self.timelines.values()):
            if self.rules.recording_clock:
                if not timeline.event_time:
                    continue
                now_here = timeline.event_time
            else:
                now_here = now
            self._close(timeline, timeline.builder.tick(now_here))

    def flush_windows(self) -> None:
        """At stop: close every open window, whatever its size."""
        for timeline in list(self.timelines.values()):
            self._close(timeline, timeline.builder.flush())

    def _close(self, timeline: Timeline, windows: Sequence[Window[WindowItem]]) -> None:
        """Assign closed windows in the journal (committed) and queue them for scoring."""
        for window in windows:
            items = [i for i in window.items if self.moderation.keeps(timeline, i)]
            self.stats.deleted += len(window.items) - len(items)
            if not items:
                continue
            keys = [i.key for i in items]
            batch_id = batch_id_for(keys)
            self.ledger.assign(timeline.session_id, batch_id, timeline.seq, keys)
            self._queue.append(
                ScoringJob(timeline, batch_id, timeline.seq, items, window.start, window.end)
            )
            timeline.seq += 1

    def _assign_and_set_aside(self, timeline: Timeline, items: list[WindowItem], why: str) -> None:
        keys = [i.key for i in items]
        batch_id = batch_id_for(keys)
        self.ledger.assign(timeline.session_id, batch_id, timeline.seq, keys)
        timeline.seq += 1
        self._set_aside(timeline, batch_id, len(items), why)

    def _set_aside(self, timeline: Timeline, batch_id: str, count: int, why: str) -> None:
        reason = f"window of {count} message(s) {why}"
        self.ledger.set_aside(batch_id, reason)
        self.stats.set_aside += 1
        self.stats.last_set_aside = reason

    # -- scoring -----------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self._queue or self._planned)

    @property
    def backlog(self) -> int:
        """Messages waiting to be scored."""
        return sum(len(j.items) for j in self._queue) + sum(
            len(items) for c in self._planned for items in c.chosen
        )

    def next_chunk(self) -> ScoringChunk | None:
        """The next windows to score: small batches when quiet, big sorted ones when busy.

        The sampling plan looks at the whole backlog; the chunks hold about SCORE_CHUNK
        messages, so the first readings of a backlog land (and show) while the rest waits.
        """
        if not self._planned and self._queue:
            self._plan()
        return self._planned.popleft() if self._planned else None

    def _plan(self) -> None:
        jobs, self._queue = self._queue, []
        sizes = [len(j.items) for j in jobs]
        lag = self.rules.max_lag_seconds
        plan = sample_plan(sizes, self.scorer_rate, lag) if lag and self.scorer_rate > 0 else sizes
        chosen = [
            uniform_sample(j.items, k, seed=j.batch_id) if k < len(j.items) else j.items
            for j, k in zip(jobs, plan, strict=True)
        ]
        start = 0
        while start < len(jobs):
            stop, count = start, 0
            limit = 0 if self.rules.repeatable else SCORE_CHUNK
            while stop < len(jobs) and (count == 0 or count + len(chosen[stop]) <= limit):
                count += len(chosen[stop])
                stop += 1
            self._planned.append(ScoringChunk(jobs[start:stop], chosen[start:stop]))
            start = stop

    def attempt(self, chunk: ScoringChunk) -> ScoringOutcome:
        """Score a chunk. Touches only the scorer, so it may run in a worker thread."""
        started = time.perf_counter()
        try:
            scores = self.scorer.score(chunk.texts)
        except Exception as exc:  # any failure of this batch is this batch's, not the run's
            return ScoringOutcome(None, exc, time.perf_counter() - started)
        return ScoringOutcome(scores, None, time.perf_counter() - started)

    def finish(self, chunk: ScoringChunk, outcome: ScoringOutcome) -> list[Reading]:
        """Turn a scored chunk into readings in the spool; set aside what cannot be."""
        if outcome.error is not None or outcome.scores is None:
            if len(chunk.jobs) > 1:
                # One bad window must not take its neighbours along: score each alone.
                self._planned.extendleft(
                    ScoringChunk([j], [c])
                    for j, c in reversed(list(zip(chunk.jobs, chunk.chosen, strict=True)))
                )
                return []
            job = chunk.jobs[0]
            error = outcome.error
            why = f"could not be scored: {type(error).__name__}: {error}"
            self._set_aside(job.timeline, job.batch_id, len(job.items), why)
            return []
        rate = len(chunk.texts) / max(outcome.seconds, 1e-6)
        self.scorer_rate = rate if self.scorer_rate == 0 else 0.7 * self.scorer_rate + 0.3 * rate
        readings = []
        offset = 0
        for job, items in zip(chunk.jobs, chunk.chosen, strict=True):
            block = outcome.scores[offset : offset + len(items)]
            offset += len(items)
            reading = self._write(job, block)
            if reading is None:
                continue
            readings.append(reading)
            _notify(self.on_window, reading, [i.text for i in items], block)
            _notify(self.on_reading, reading)
        self.confirm_written()
        return readings

    def _write(self, job: ScoringJob, scores: np.ndarray) -> Reading | None:
        timeline = job.timeline
        try:
            reading = make_reading(
                session_id=timeline.session_id,
                platform=timeline.platform,
                channel=timeline.channel,
                batch_id=job.batch_id,
                seq=job.seq,
                window_start=job.start,
                window_end=job.end,
                message_count=len(job.items),
                scores=scores,
                displayed=self.rules.displayed,
                model_id=self.scorer.model_id,
                agent_version=self.rules.agent_version,
                via=job.items[0].via if job.items else timeline.via,
            )
            self._unconfirmed.append(reading.batch_id)
            try:
                self.spool.append(reading)
            except SpoolError as exc:
                # A full disk: the spool keeps the reading in memory and retries; the batch
                # stays unconfirmed, so a restart re-makes it if it never reached a part.
                log.error("%s", exc)
                self.write_problem = str(exc)
        except (ValueError, OverflowError) as exc:
            if self._unconfirmed and self._unconfirmed[-1] == job.batch_id:
                self._unconfirmed.pop()
            self._set_aside(timeline, job.batch_id, len(job.items), f"cannot be written: {exc}")
            return None
        self.stats.readings.append(reading)
        return reading

    def confirm_written(self) -> None:
        # Only readings that reached the part file are confirmed; the rest stay 'assigned',
        # so a restart finds them (in the spool, or not: then they are scored again).
        if self.spool.pending:
            return
        self.write_problem = None
        if self._unconfirmed:
            self.ledger.confirm(self._unconfirmed)
            self._unconfirmed = []

    def score_pending(self) -> None:
        """Score everything queued, in this thread (re-scoring, tests, the end of a run)."""
        while (chunk := self.next_chunk()) is not None:
            self.finish(chunk, self.attempt(chunk))

    def end_sessions(self, now: float) -> None:
        journal = self._journal()
        for timeline in self.timelines.values():
            journal.end_session(timeline.session_id, now=now)
