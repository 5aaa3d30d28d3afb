"""Whatever a peer sends, the sessions accept or skip it: never an exception, and every message
that comes out holds the boundary's guarantees (agent.sources.entry)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.sources.entry import EARLIEST, MAX_AHEAD, MAX_NAME, MAX_TEXT, BadFrame, load_json
from agent.sources.irc import TwitchChatProtocol
from agent.sources.jsonws import MappedSession, parse_mapping
from agent.sources.link import Skipped
from agent.sources.ssn import SsnSession
from agent.sources.streamerbot import StreamerbotSession
from agent.vocab import PLATFORMS, ChatMessage, ModerationEvent, validate_name

NOW = time.time()

numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e300, -1e300, 1e11, 1e13, 1e16, 0, NOW * 1000, NOW]),
)
texts = st.one_of(
    st.text(max_size=50),
    st.sampled_from(["", " ", "<b>x</b>", "&amp;", "2025-11-25T15:51:22Z", "1e400", "NaN"]),
    st.text(min_size=2500, max_size=3000),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
KEYS = ["timeStamp", "event", "data", "text", "message", "user", "messageId", "eventId",
        "chatmessage", "chatname", "type", "userid", "timestamp", "meta", "textonly", "status",
        "id", "request", "authentication", "body", "t", "where"]  # fmt: skip


@st.composite
def shaped(draw: Any) -> Any:
    """Objects with the field names the parsers look for, filled with anything."""
    obj = {key: draw(json_values) for key in draw(st.lists(st.sampled_from(KEYS), max_size=8))}
    if draw(st.booleans()):
        source = draw(st.sampled_from(["Twitch", "YouTube", "Kick", "Trovo", "Obs"]))
        kind = draw(st.sampled_from(["ChatMessage", "Message", "SuperChat", "SuperSticker",
                                     "UserBanned", "ChatMessageDeleted", "Follow"]))  # fmt: skip
        obj["event"] = {"source": source, "type": kind}
        obj["data"] = draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
    return obj


frames = st.one_of(
    shaped().map(json.dumps),
    json_values.map(lambda v: json.dumps(v)),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(['{"t": 1e400, "text": "x"}', '{"t": NaN}', "[[[[", '{"a": Infinity}']),
)


def check(events: list[Any]) -> None:
    for event in events:
        if isinstance(event, ChatMessage):
            assert EARLIEST <= event.sent_at <= event.received_at + MAX_AHEAD
            assert math.isfinite(event.sent_at) and event.text.strip()
            assert len(event.text) <= MAX_TEXT and len(event.author) <= MAX_NAME
            assert event.platform in PLATFORMS
            assert validate_name(event.channel) == event.channel
            assert 0 < len(event.message_id) <= 200
        elif isinstance(event, ModerationEvent):
            assert math.isfinite(event.at) and event.at >= EARLIEST
            assert event.author is None or len(event.author) <= MAX_NAME


def sessions() -> list[Any]:
    mapping = parse_mapping(
        {"text": "text", "time": "t", "author": "user", "platform": "type", "where": "type=chat"},
        channel="c",
    )
    return [
        StreamerbotSession(channel="c", password=None, now=0.0),
        SsnSession(channel="c", session="s", in_channel=None),
        MappedSession(mapping),
        MappedSession(parse_mapping({}, channel="c")),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, min_size=1, max_size=6))
def test_json_sessions_never_raise_and_messages_keep_the_guarantees(batch: list[Any]) -> None:
    for session in sessions():
        for frame in batch:
            session.receive_frame(frame)
            events = session.events_received()
            check(events)
            assert all(not isinstance(e, BaseException) for e in events)


@settings(max_examples=300, deadline=None)
@given(
    ts=st.one_of(st.integers(0, 10**25).map(str), st.text(max_size=30)),
    text=st.text(max_size=3000).filter(lambda t: "\r" not in t and "\n" not in t),
    user_id=st.text(alphabet="0123456789abcdef", max_size=300),
)
def test_irc_lines_keep_the_guarantees(ts: str, text: str, user_id: str) -> None:
    proto = TwitchChatProtocol("chan", now=lambda: NOW)
    safe_ts = ts.replace(";", "").replace(" ", "").replace("\\", "")
    proto.receive_text(
        f"@id=x;user-id={user_id};tmi-sent-ts={safe_ts} :v!v@v.tmi.twitch.tv PRIVMSG #chan "
        f":{text}\r\n"
        f"@tmi-sent-ts={safe_ts};target-user-id={user_id} :tmi.twitch.tv CLEARCHAT #chan :v\r\n"
    )
    check(proto.events_received())


def test_the_json_bound_is_a_skipped_frame_not_a_recursion_error() -> None:
    deep = "[" * 200_000 + "]" * 200_000
    for frame in (deep, '{"a": ' * 65 + "1" + "}" * 65, '"' + "\\" * 10_001 + '"'):
        with pytest.raises(BadFrame):
            load_json(frame)
    # Brackets inside strings are text, not nesting; 64 levels are allowed.
    assert load_json(json.dumps({"t": "[" * 5000})) == {"t": "[" * 5000}
    assert load_json("[" * 64 + "]" * 64) is not None
    session = MappedSession(parse_mapping({}, channel="c"))
    session.receive_frame(deep)
    assert [type(e) for e in session.events_received()] == [Skipped]
