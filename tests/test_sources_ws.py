"""Streamer.bot, Social Stream Ninja and generic JSON WebSocket sources: the pure payload
parsers on payloads shaped as each platform documents them. The same sources against
loopback servers are in test_bridges_loopback.py; through the real CLI in test_platforms.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.errors import SettingsError, SourceError
from agent.sources import open_source
from agent.sources.irc import ModerationEvent
from agent.sources.jsonws import (
    FieldMapping,
    get_path,
    parse_mapped_object,
    parse_mapping,
)
from agent.sources.ssn import html_to_text, parse_ssn_message
from agent.sources.streamerbot import (
    authentication_string,
    parse_streamerbot_event,
    parse_streamerbot_moderation,
    subscribe_request,
)
from agent.vocab import ChatMessage

NOW = 1_764_085_882.0

# --------------------------------------------------------------------------- payloads

TWITCH_EVENT = {
    "timeStamp": "2025-11-25T10:51:22.4588947-05:00",
    "event": {"source": "Twitch", "type": "ChatMessage"},
    "data": {
        "messageId": "5d1b6a3e-0f44-4b42-9b1a-5fbd8d3b2f1c",
        "text": "PogU that clutch",
        "user": {"login": "somefan", "name": "SomeFan", "id": "123456", "role": 1},
        "meta": {"isMe": False, "firstMessage": False},
        "emotes": [],
        "isReply": False,
        "isTest": False,
    },
}
TWITCH_LEGACY = {
    "timeStamp": "2023-04-01T12:00:00Z",
    "event": {"source": "Twitch", "type": "ChatMessage"},
    "data": {
        "message": {
            "msgId": "0b9d3a4e-aaaa-bbbb-cccc-123456789abc",
            "userId": "42",
            "username": "oldfan",
            "displayName": "OldFan",
            "channel": "streamer",
            "message": "dances",
            "isMe": True,
            "emotes": [],
        }
    },
}
YOUTUBE_EVENT = {
    "timeStamp": "2025-11-25T15:51:23Z",
    "event": {"source": "YouTube", "type": "Message"},
    "data": {
        "eventId": "LCC.CjgKDQoLX3l0Y2hhdF9pZBIn",
        "message": "this is so wholesome",
        "publishedAt": "2025-11-25T15:51:22.9+00:00",
        "user": {"id": "UCp9noRfodywhm2MX0000000", "name": "Viewer Name", "isModerator": False},
    },
}
KICK_EVENT = {
    "timeStamp": "2025-11-25T15:51:24Z",
    "event": {"source": "Kick", "type": "ChatMessage"},
    "data": {
        "isAnonymous": False,
        "user": {"id": "777", "login": "kickfan", "name": "KickFan", "role": 1},
        "messageId": "e3c1b3a4-1111-2222-3333-444455556666",
        "text": "LETS GO",
        "isReply": False,
        "isInternal": False,
        "isTest": False,
    },
}


def test_streamerbot_twitch_new_and_legacy_shapes() -> None:
    msg = parse_streamerbot_event(TWITCH_EVENT, channel="streamer", received_at=NOW)
    assert msg == ChatMessage(
        "twitch",
        "streamer",
        "5d1b6a3e-0f44-4b42-9b1a-5fbd8d3b2f1c",
        "123456",  # the user id: what Twitch.UserBanned's target_user_id names
        "PogU that clutch",
        pytest.approx(1764085882.4588947),  # type: ignore[arg-type]
        NOW,
        False,
        author_name="somefan",
        via="streamerbot",
    )
    legacy = parse_streamerbot_event(TWITCH_LEGACY, channel="streamer", received_at=NOW)
    assert legacy is not None
    assert (legacy.message_id, legacy.author, legacy.text, legacy.action) == (
        "0b9d3a4e-aaaa-bbbb-cccc-123456789abc",
        "42",
        "dances",
        True,
    )
    assert legacy.author_name == "oldfan"
    assert legacy.sent_at == 1680350400.0


def test_streamerbot_youtube_and_kick() -> None:
    yt = parse_streamerbot_event(YOUTUBE_EVENT, channel="streamer", received_at=NOW)
    assert yt is not None
    assert (yt.platform, yt.message_id, yt.author, yt.text) == (
        "youtube",
        "LCC.CjgKDQoLX3l0Y2hhdF9pZBIn",
        "UCp9noRfodywhm2MX0000000",
        "this is so wholesome",
    )
    assert yt.sent_at == pytest.approx(1764085882.9)
    kick = parse_streamerbot_event(KICK_EVENT, channel="streamer", received_at=NOW)
    assert kick is not None
    assert (kick.platform, kick.author, kick.author_name, kick.text) == (
        "kick",
        "777",
        "kickfan",
        "LETS GO",
    )


def test_streamerbot_ignores_other_events_and_tolerates_holes() -> None:
    for other in (
        {"event": {"source": "Obs", "type": "SceneChanged"}, "data": {"text": "x"}},
        {"event": {"source": "Twitch", "type": "Follow"}, "data": {"user_login": "a"}},
        {"request": "Hello", "info": {}},
        {"id": "captaflow-subscribe", "status": "ok"},
        [1, 2],
        "text",
        {"event": {"source": "Twitch", "type": "ChatMessage"}, "data": None},
        {"event": {"source": "Twitch", "type": "ChatMessage"}, "data": {"text": "   "}},
    ):
        assert parse_streamerbot_event(other, channel="c", received_at=NOW) is None
    bare = {"event": {"source": "Twitch", "type": "ChatMessage"}, "data": {"text": "hi"}}
    msg = parse_streamerbot_event(bare, channel="c", received_at=NOW)
    assert msg is not None and msg.message_id.startswith("h:") and msg.sent_at == NOW


def test_streamerbot_moderation_and_protocol_helpers() -> None:
    deleted = {
        "timeStamp": "2025-11-25T15:51:30Z",
        "event": {"source": "Twitch", "type": "ChatMessageDeleted"},
        "data": {"targetMessageId": "abc", "message": "x", "userName": "x", "role": 1},
    }
    assert parse_streamerbot_moderation(deleted, channel="c", received_at=NOW) == ModerationEvent(
        "twitch", "c", "clearmsg", "abc", None, 1764085890.0
    )
    banned = {
        "event": {"source": "Twitch", "type": "UserBanned"},
        "data": {"target_user_login": "Bad"},
    }
    event = parse_streamerbot_moderation(banned, channel="c", received_at=NOW)
    assert event is not None and (event.kind, event.author) == ("clearchat", "bad")
    by_id = {"event": {"source": "Twitch", "type": "UserTimedOut"}, "data": {"target_user_id": "9"}}
    timed_out = parse_streamerbot_moderation(by_id, channel="c", received_at=NOW)
    assert timed_out is not None and timed_out.author == "9"
    assert parse_streamerbot_moderation(TWITCH_EVENT, channel="c", received_at=NOW) is None
    request = subscribe_request()
    assert request["request"] == "Subscribe"
    assert "ChatMessage" in request["events"]["Twitch"]
    assert request["events"]["YouTube"][0] == "Message"
    # The documented recipe, worked out once with hashlib and base64 by hand.
    assert authentication_string("pw", "salt", "challenge") == (
        "u2LyppGkAjwgvCNaKsAc4tztRWLqv1i85slC7KiH71Q="
    )


SSN_YOUTUBE = {
    "chatname": "Jane Doe",
    "chatmessage": 'so good <img src="https://yt3.ggpht.com/x" alt=":hand-pink-waving:" '
    'class="regular-emote"> &amp; &lt;3 <b>wow</b>',
    "chatimg": "https://yt3.ggpht.com/avatar",
    "type": "youtube",
    "id": 17,
    "userid": "UC123",
    "timestamp": 1764085882500,
    "hasDonation": "",
    "membership": "",
    "textonly": False,
}


def test_ssn_message_html_is_stripped_and_ids_are_stable() -> None:
    msg = parse_ssn_message(SSN_YOUTUBE, channel="streamer", received_at=NOW)
    assert msg is not None
    assert msg.text == "so good :hand-pink-waving: & <3 wow"
    assert (msg.platform, msg.author, msg.author_name, msg.sent_at, msg.via) == (
        "youtube",
        "UC123",
        "Jane Doe",
        1764085882.5,
        "ssn",
    )
    again = parse_ssn_message(
        {"overlayNinja": dict(SSN_YOUTUBE)}, channel="streamer", received_at=NOW + 5
    )
    assert again is not None and again.message_id == msg.message_id
    restarted = parse_ssn_message(
        {**SSN_YOUTUBE, "timestamp": 1764090000000}, channel="streamer", received_at=NOW
    )
    assert restarted is not None and restarted.message_id != msg.message_id
    tiktok = parse_ssn_message(
        {"chatname": "t", "chatmessage": "a<b", "type": "tiktok", "textonly": True},
        channel="streamer",
        received_at=NOW,
    )
    assert tiktok is not None and (tiktok.text, tiktok.platform) == ("a<b", "tiktok")
    rumble = parse_ssn_message(
        {"chatname": "r", "chatmessage": "hi", "type": "rumble"}, channel="s", received_at=NOW
    )
    assert rumble is not None and rumble.platform == "other"


def test_ssn_skips_events_and_non_chat() -> None:
    for other in (
        {"chatname": "x", "chatmessage": "followed", "event": "new_follower", "type": "twitch"},
        {"action": "getQueueSize"},
        {"chatname": "x", "chatmessage": "<img src='a.png'>", "type": "youtube"},
        ["a"],
        None,
    ):
        assert parse_ssn_message(other, channel="s", received_at=NOW) is None
    assert html_to_text("<div>a<br>b</div>") == "a b"
    assert html_to_text("a &lt;3 <i>b") == "a <3 b"
    assert html_to_text("<<<>>>&&&") == "<<<>>>&&&"  # not HTML: kept as typed


def test_generic_mapping() -> None:
    mapping = parse_mapping(
        {
            "text": "payload.body",
            "id": "payload.uuid",
            "author": "user.name",
            "time": "ts",
            "platform": "=YouTube",
            "where": "kind=chat",
        },
        channel="Streamer",
    )
    obj = {
        "kind": "chat",
        "ts": 1764085882000,
        "user": {"name": "ann"},
        "payload": {"body": "hello", "uuid": 99},
    }
    msg = parse_mapped_object(obj, mapping, received_at=NOW)
    assert msg == ChatMessage(
        "youtube", "streamer", "99", "ann", "hello", 1764085882.0, NOW, via="ws"
    )
    assert parse_mapped_object({**obj, "kind": "join"}, mapping, received_at=NOW) is None
    assert parse_mapped_object({"kind": "chat"}, mapping, received_at=NOW) is None
    plain = parse_mapped_object({"text": "x"}, FieldMapping(), received_at=NOW)
    assert plain is not None and plain.message_id.startswith("h:") and plain.platform == "other"
    assert get_path({"a": [{"b": 1}]}, "a.0.b") == 1
    assert get_path({"a": [1]}, "a.5") is None and get_path({"a": 1}, "a.b") is None
    with pytest.raises(SettingsError, match="'txt'"):
        parse_mapping({"txt": "x"}, channel="c")
    with pytest.raises(SettingsError, match="path=value"):
        parse_mapping({"where": "novalue"}, channel="c")


@dataclass
class Source:
    kind: str
    channel: str = ""
    server_url: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def test_settings_errors_name_the_fix() -> None:
    with pytest.raises(SettingsError, match="--server-url"):
        open_source(Source("ws", "c"), secrets={})
    with pytest.raises(SourceError, match="captaflow secrets set ssn_session"):
        open_source(Source("ssn", "c"), secrets={})


def test_streamerbot_trovo_chat_and_a_super_sticker_without_words() -> None:
    trovo = {
        "timeStamp": "2025-11-25T15:51:25Z",
        "event": {"source": "Trovo", "type": "ChatMessage"},
        "data": {"messageId": "tr1", "text": "hi trovo", "user": {"id": "55", "login": "TrovoFan"}},
    }
    msg = parse_streamerbot_event(trovo, channel="c", received_at=NOW)
    assert msg is not None and (msg.platform, msg.author, msg.author_name) == (
        "trovo",
        "55",
        "trovofan",
    )
    # Docs trigger "Super Sticker": no message, a sticker description (stickerAltText).
    sticker = {
        "timeStamp": "2025-11-25T15:51:26Z",
        "event": {"source": "YouTube", "type": "SuperSticker"},
        "data": {
            "eventId": "ss1",
            "amount": "$2.00",
            "stickerAltText": "a cat dancing with joy",
            "user": {"id": "UC9", "name": "Sticker Fan"},
        },
    }
    got = parse_streamerbot_event(sticker, channel="c", received_at=NOW)
    assert got is not None and (got.platform, got.text) == ("youtube", "a cat dancing with joy")
