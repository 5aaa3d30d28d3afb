"""The whole pipeline under hostile input: source frames → session → pipeline → readings → spool.

Hypothesis draws feeds of JSON frames as a generic WebSocket bridge would send them (mapped
with `where = "type=chat"` and a `=constant` platform, as the README documents), mixing good
chat with hostile values: impossible times (1e400, 1e300, -1, NaN-as-text, past the year
9999), huge and odd numbers, deep nesting, oversized and invalid-UTF-8 frames, emoji and
surrogates, bots and !commands, and the same frame repeated (reconnect replays). Then it
checks the guarantees of DESIGN.md on what the real journal and the real spool hold:

* nothing raises out of the session or the pipeline (the agent keeps running);
* no message is counted twice: every journaled scorable message is in at most one batch,
  batch ids are unique in the spool, and readings' message counts add up per batch;
* every scorable message is in a sealed reading or in a batch set aside with its reason.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.journal import Journal
from agent.pipeline import Pipeline, PipelineRules
from agent.scorer import Scorer
from agent.sources.jsonws import MappedSession, parse_mapping
from agent.spool import Spool, iter_readings
from agent.vocab import DEFAULT_DISPLAYED, ChatMessage, ModerationEvent
from agent.windows import WindowPolicy

NOW = 1_764_000_000.0  # the receive clock of the whole run (2025-11-24)

MAPPING = parse_mapping(
    {
        "where": "type=chat",
        "text": "msg.text",
        "id": "msg.id",
        "author": "user.name",
        "time": "ts",
        "platform": "=youtube",
        "channel": "=streamer",
    },
    channel="streamer",
)

HOSTILE_TIMES: list[Any] = [
    NOW,
    NOW * 1000,  # milliseconds
    "2025-11-24T16:00:05Z",
    "1e400",  # as text: JSON has no literal for it
    1e300,
    -1,
    0,
    253402300800000,  # the year 10000 in milliseconds
    "NaN",
    None,
    True,
    [1, 2],
]
TEXTS = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["PogChamp", "KEKW KEKW", "W", "!drop", "😂😂😂", "\ud800", "a" * 3000, " "]),
)


@st.composite
def chat_frame(draw: Any) -> str | bytes:
    n = draw(st.integers(min_value=0, max_value=40))  # small id space: duplicates happen
    obj: dict[str, Any] = {
        "type": draw(st.sampled_from(["chat", "chat", "chat", "follow", None, 7])),
        "msg": {
            "text": draw(TEXTS),
            "id": draw(st.sampled_from([f"id{n}", None, n, "", "x" * 300])),
        },
        "user": {"name": draw(st.sampled_from(["ann", "bob", "nightbot", "", None, 1e308]))},
        "ts": draw(st.one_of(st.sampled_from(HOSTILE_TIMES), st.floats(), st.integers())),
    }
    text = json.dumps(obj, allow_nan=True)  # NaN/Infinity literals too: the boundary refuses them
    return text


hostile_frame = st.one_of(
    chat_frame(),
    chat_frame(),
    chat_frame(),
    st.just("[" * 5000 + "]" * 5000),  # deep nesting, small frame
    st.just('{"type": "chat", "msg": {"text": "' + "x" * (2 << 20) + '"}}'),  # oversized
    st.binary(max_size=40),  # invalid UTF-8 and garbage
    st.just(b'{"type":"chat","msg":{"text":"\xff\xfe"}}'),
    st.just("not json at all"),
    st.just('{"type":"chat","msg":{"text":"far","id":"far1"},"ts":1e400}'),  # inf when parsed
    st.just('[{"type":"chat","msg":{"text":"one"}},{"type":"chat","msg":{"text":"two"}}]'),
)


@pytest.fixture(scope="module")
def scorer(tiny_bundle: Path) -> Scorer:
    return Scorer.open(tiny_bundle)


def run_feed(folder: Path, scorer: Scorer, frames: list[str | bytes]) -> Pipeline:
    session = MappedSession(MAPPING, wall_clock=lambda: NOW)
    journal = Journal.open(folder / "journal.sqlite3")
    spool = Spool(folder / "spool")
    spool.recover()
    pipeline = Pipeline(
        journal=journal,
        spool=spool,
        scorer=scorer,
        rules=PipelineRules(
            policy=WindowPolicy(max_messages=4, max_age=1e6),
            displayed=DEFAULT_DISPLAYED,
            agent_version="0.test",
            max_lag_seconds=None,  # score every message: nothing sampled away
        ),
    )
    for frame in frames:
        session.receive_frame(frame)
        for event in session.events_received():
            if isinstance(event, ChatMessage):
                pipeline.add(event, now=NOW)
            elif isinstance(event, ModerationEvent):
                pipeline.moderate(event)
        pipeline.tick(NOW)
    pipeline.flush_windows()
    pipeline.score_pending()
    spool.seal_open()
    pipeline.end_sessions(NOW + 1)
    journal.close()
    return pipeline


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(hostile_frame, min_size=1, max_size=30))
def test_hostile_feeds_keep_the_guarantees(scorer: Scorer, frames: list[str | bytes]) -> None:
    # Each example gets a fresh folder: hypothesis reruns the body many times per fixture.
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frames = frames + frames[: len(frames) // 2]  # a reconnect replays part of the feed
        pipeline = run_feed(folder, scorer, frames)

        db = sqlite3.connect(folder / "journal.sqlite3")
        scorable = db.execute("SELECT key, batch_id FROM messages WHERE scorable = 1").fetchall()
        states = dict(db.execute("SELECT batch_id, state FROM batches").fetchall())
        db.close()

        readings = list(iter_readings(folder / "spool"))
        # No reading twice, and each reading's count is exactly its batch's messages.
        per_batch = Counter(batch for _, batch in scorable)
        assert len({r.batch_id for r in readings}) == len(readings)
        for reading in readings:
            assert reading.message_count == per_batch[reading.batch_id]
            assert reading.scored_count == reading.message_count
            assert states.get(reading.batch_id) == "written"

        # Every scorable message is in a reading or in a batch set aside (with its reason).
        written = {r.batch_id for r in readings}
        aside = {b for b, state in states.items() if state == "set_aside"}
        for key, batch in scorable:
            assert batch is not None, f"message {key} was never windowed"
            assert batch in written or batch in aside, f"message {key} is in no reading"
        assert sum(r.message_count for r in readings) + sum(per_batch[b] for b in aside) == len(
            scorable
        )
        assert pipeline.stats.set_aside == len(aside)
        with Journal.open(folder / "journal.sqlite3") as journal:
            assert all(b.reason for b in journal.set_aside_batches())


def test_a_known_feed_with_poison_in_it_gives_exactly_these_readings(
    scorer: Scorer, tmp_path: Path
) -> None:
    good = [
        json.dumps({"type": "chat", "msg": {"text": f"hype {n} PogChamp", "id": f"g{n}"},
                    "user": {"name": f"v{n}"}, "ts": NOW - 60 + n})
        for n in range(10)
    ]  # fmt: skip
    poison = [
        '{"type":"chat","msg":{"text":"far","id":"p1"},"ts":1e400}',
        '{"type":"chat","msg":{"text":"old","id":"p2"},"ts":1e300}',
        "[" * 100_000,
        b"\xff\xfe\xfd",
    ]
    frames: list[str | bytes] = [*good[:5], *poison, *good[5:], *good]  # the replay at the end
    pipeline = run_feed(tmp_path, scorer, frames)
    readings = sorted(iter_readings(tmp_path / "spool"), key=lambda r: r.seq)
    # 12 unique scorable messages (10 good, 2 whose times were replaced by the receive time),
    # windows of 4: three readings, none set aside, the replayed ten counted as duplicates.
    assert [r.message_count for r in readings] == [4, 4, 4]
    assert {r.platform for r in readings} == {"youtube"} and {r.via for r in readings} == {"ws"}
    assert pipeline.stats.duplicates == 10 and pipeline.stats.set_aside == 0
