"""The sans-I/O IRC parser and Twitch session protocol, fed with lines and explicit times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.sources.irc import (
    IrcParseError,
    Joined,
    JoinFailed,
    LinkDead,
    LoginFailed,
    MalformedLine,
    ModerationEvent,
    Reconnect,
    TwitchChatProtocol,
    chat_text,
    mask_secret_line,
    parse_emotes,
    parse_line,
    sender_login,
    unescape_tag_value,
)
from agent.vocab import ChatMessage, content_message_id


def _rows(testdata: Path) -> list[dict]:
    lines = (testdata / "twitch-irc-real.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# --------------------------------------------------------------------------- real traffic


def test_every_real_line_parses_to_the_expected_fields(testdata: Path) -> None:
    rows = _rows(testdata)
    assert len(rows) == 120
    checked = 0
    for row in rows:
        msg = parse_line(row["raw"])
        text, action = chat_text(msg)
        got = {
            "command": msg.command,
            "channel": msg.channel,
            "id": msg.tags.get("id"),
            "login": sender_login(msg),
            "text": text,
            "action": action,
        }
        for key, value in got.items():
            if row[key] is None:  # null = not asserted (see the row's note)
                continue
            assert value == row[key], f"{key} of {row['raw'][:80]!r}"
            checked += 1
    assert checked > 400  # the file really was compared, not skipped


def test_real_emote_ranges_count_code_points(testdata: Path) -> None:
    compared = 0
    for row in _rows(testdata):
        expected = (row.get("asserts") or {}).get("emotes_exclusive_end")
        if not expected or row["command"] != "PRIVMSG":
            continue
        msg = parse_line(row["raw"])
        text, _ = chat_text(msg)
        assert text is not None
        got = [[e.emote_id, e.start, e.end, e.name] for e in parse_emotes(msg.tags["emotes"], text)]
        assert got == [list(item) for item in expected]
        compared += 1
    assert compared >= 3


def test_broken_emote_ranges_are_kept_as_sent_or_skipped(testdata: Path) -> None:
    rows = {r["id"]: r for r in _rows(testdata) if r["id"]}
    nobru = parse_line(rows["03c3eec9-afd1-4858-a2e0-fccbf6ad8d1a"]["raw"])
    text, action = chat_text(nobru)
    assert action and text is not None
    names = [e.name for e in parse_emotes(nobru.tags["emotes"], text)]
    assert names == ["ibleThump ", "ortOne"]  # Twitch's off-by-one, as the asserts record
    assert parse_emotes("25:0-4,9-999,x-y,3/:1-2/7", "Kappa") == parse_emotes("25:0-4", "Kappa")
    [past_end] = parse_emotes("1:3-9", "Kappa")  # runs past the end: kept, name is what fits
    assert (past_end.start, past_end.end, past_end.name) == (3, 10, "pa")
    assert parse_emotes("", "text") == []


def test_real_capture_lines_all_parse(testdata: Path) -> None:
    import gzip

    with gzip.open(testdata / "xqcow-chat-2019-09-15.irc.gz", "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    commands: dict[str, int] = {}
    for line in lines:
        msg = parse_line(line)
        commands[msg.command] = commands.get(msg.command, 0) + 1
    assert commands == {"PRIVMSG": 4933, "CLEARCHAT": 58, "USERNOTICE": 9}


# --------------------------------------------------------------------------- parser


def test_tag_unescaping() -> None:
    assert unescape_tag_value(r"a\sb\:c\\d\re\nf") == "a b;c\\d\re\nf"
    assert unescape_tag_value("plain") == "plain"
    assert unescape_tag_value("x\\") == "x"  # a lone trailing backslash is dropped
    assert unescape_tag_value(r"\q") == "q"  # unknown escapes keep the character
    msg = parse_line(r"@system-msg=538\sraiders\shave\sjoined\n!;empty=;flag :tmi.twitch.tv PING")
    assert msg.tags == {"system-msg": "538 raiders have joined\n!", "empty": "", "flag": ""}


def test_prefix_params_and_trailing() -> None:
    msg = parse_line(":nick!user@host.tmi.twitch.tv PRIVMSG #chan :hello :world  x\r\n")
    assert (msg.nick, msg.user, msg.host) == ("nick", "user", "host.tmi.twitch.tv")
    assert msg.params == ("#chan", "hello :world  x")
    assert msg.channel == "chan" and msg.trailing == "hello :world  x"
    server = parse_line(":tmi.twitch.tv CLEARMSG #pajlada sup")
    assert server.nick == "tmi.twitch.tv" and server.user is None and server.host is None
    assert server.params == ("#pajlada", "sup") and not server.has_trailing
    assert parse_line("ping").command == "PING"
    assert parse_line("PING").params == ()
    assert parse_line(":x 001 me :Welcome").command == "001"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "@tags-only",
        ":prefix-only",
        "@a=b :prefix",
        "PRIV-MSG x",
        "é x",
        "12 x",
        "a\rb",
        "\0",
    ],
)
def test_bad_lines_raise_the_documented_error(line: str) -> None:
    with pytest.raises(IrcParseError):
        parse_line(line)


def test_action_wrapper_only_on_privmsg() -> None:
    me = parse_line(":a!a@a PRIVMSG #c :\x01ACTION waves\x01")
    assert chat_text(me) == ("waves", True)
    unterminated = parse_line(":a!a@a PRIVMSG #c :\x01ACTION waves")
    assert chat_text(unterminated) == ("waves", True)
    empty = parse_line(":a!a@a PRIVMSG #c :\x01ACTION\x01")
    assert chat_text(empty) == ("", True)
    notice = parse_line("@login=a :tmi.twitch.tv USERNOTICE #c :\x01ACTION waves\x01")
    assert chat_text(notice) == ("\x01ACTION waves\x01", False)


def test_secrets_are_masked_for_logs() -> None:
    assert mask_secret_line("PASS oauth:abc123") == "PASS ***"
    assert mask_secret_line("NICK me") == "NICK me"


# --------------------------------------------------------------------------- protocol


class FakeTime:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _session(
    token: str | None = None, nick: str | None = None
) -> tuple[TwitchChatProtocol, FakeTime]:
    clock = FakeTime(1568505700.0)  # near the recorded lines' tmi-sent-ts: sane times
    return TwitchChatProtocol("XQCow", nick=nick, token=token, now=clock), clock


def test_anonymous_login_sequence_then_join_after_welcome() -> None:
    proto, _ = _session()
    sent = proto.data_to_send()
    assert sent[0] == "CAP REQ :twitch.tv/tags twitch.tv/commands"
    assert len(sent) == 2 and sent[1].startswith("NICK justinfan")
    assert sent[1][len("NICK justinfan") :].isdigit()
    assert proto.data_to_send() == []  # handed over once
    proto.receive_text(":tmi.twitch.tv 001 justinfan1 :Welcome, GLHF!\r\n")
    assert proto.data_to_send() == ["JOIN #xqcow"]
    proto.receive_text("@emote-only=0;room-id=1 :tmi.twitch.tv ROOMSTATE #xqcow\r\n")
    assert proto.events_received() == [Joined("xqcow")]


def test_token_login_sends_pass_and_requires_a_nick() -> None:
    proto, _ = _session(token="abc123", nick="MyBot")
    assert proto.data_to_send()[1:] == ["PASS oauth:abc123", "NICK mybot"]
    proto2, _ = _session(token="oauth:abc123", nick="mybot")
    assert proto2.data_to_send()[1] == "PASS oauth:abc123"
    with pytest.raises(ValueError, match="nick"):
        TwitchChatProtocol("xqcow", token="abc", now=FakeTime())


def test_channel_names_are_validated_early() -> None:
    with pytest.raises(ValueError, match="not valid"):
        TwitchChatProtocol("../etc", now=FakeTime())


def test_ping_gets_pong_with_the_same_payload() -> None:
    proto, _ = _session()
    proto.data_to_send()
    proto.receive_text("PING :tmi.twitch.tv\r\n")
    assert proto.data_to_send() == ["PONG :tmi.twitch.tv"]
    proto.receive_text(":tmi.twitch.tv PING\r\n")
    assert proto.data_to_send() == ["PONG :tmi.twitch.tv"]


def test_privmsg_becomes_a_chat_message() -> None:
    proto, clock = _session()
    clock.now = 1568505702.5
    proto.receive_text(
        "@id=abc;user-id=42;tmi-sent-ts=1568505600501 :onche!onche@onche.tmi.twitch.tv "
        "PRIVMSG #xqcow :\x01ACTION dances\x01\r\n"
    )
    assert proto.events_received() == [
        ChatMessage(
            "twitch",
            "xqcow",
            "abc",
            "42",
            "dances",
            1568505600.501,
            1568505702.5,
            True,
            author_name="onche",
        )
    ]


def test_privmsg_without_tags_gets_a_content_id_and_login_author() -> None:
    proto, clock = _session()
    proto.receive_text(":tetyys!tetyys@tetyys.tmi.twitch.tv PRIVMSG #xqcow :KKona\r\n")
    [msg] = proto.events_received()
    assert isinstance(msg, ChatMessage)
    assert msg.author == "tetyys" and msg.sent_at == clock.now and msg.received_at == clock.now
    assert msg.message_id == content_message_id("twitch", "xqcow", "tetyys", clock.now, "KKona")


def test_usernotice_is_chat_only_when_it_has_text() -> None:
    proto, _ = _session()
    proto.receive_text(
        "@id=s1;login=a;user-id=1;msg-id=sub :tmi.twitch.tv USERNOTICE #xqcow\r\n"
        "@id=s2;login=b;user-id=2;msg-id=resub :tmi.twitch.tv USERNOTICE #xqcow :xqcL\r\n"
    )
    events = proto.events_received()
    assert [(m.message_id, m.author, m.text) for m in events if isinstance(m, ChatMessage)] == [
        ("s2", "2", "xqcL")
    ]


def test_moderation_events() -> None:
    proto, clock = _session()
    proto.receive_text(
        "@target-user-id=7;tmi-sent-ts=1568505600739 :tmi.twitch.tv CLEARCHAT #xqcow :onche\r\n"
        "@login=supibot;target-msg-id=m1 :tmi.twitch.tv CLEARMSG #xqcow :bye\r\n"
        ":tmi.twitch.tv CLEARCHAT #xqcow\r\n"
    )
    assert proto.events_received() == [
        ModerationEvent("twitch", "xqcow", "clearchat", None, "7", 1568505600.739),
        ModerationEvent("twitch", "xqcow", "clearmsg", "m1", "supibot", clock.now),
        ModerationEvent("twitch", "xqcow", "clearchat", None, None, clock.now),
    ]


def test_reconnect_and_login_failure_notices() -> None:
    proto, _ = _session()
    proto.receive_text(":tmi.twitch.tv RECONNECT\r\n")
    assert proto.events_received() == [Reconnect()]
    proto.receive_text(":tmi.twitch.tv NOTICE * :Login authentication failed\r\n")
    proto.receive_text(":tmi.twitch.tv NOTICE * :Improperly formatted auth\r\n")
    assert proto.events_received() == [
        LoginFailed("Login authentication failed"),
        LoginFailed("Improperly formatted auth"),
    ]
    proto.receive_text(
        "@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE #xqcow :This channel has been "
        "suspended.\r\n@msg-id=subs_on :tmi.twitch.tv NOTICE #xqcow :subscribers-only mode.\r\n"
    )
    assert proto.events_received() == [JoinFailed("xqcow", "This channel has been suspended.")]


def test_several_lines_in_one_frame_and_a_partial_line() -> None:
    proto, _ = _session()
    proto.receive_text(
        "@id=1;user-id=1 :a!a@a PRIVMSG #xqcow :one\r\n"
        "@id=2;user-id=2 :b!b@b PRIVMSG #xqcow :two\r\n@id=3;user-id=3 :c!c@c PRIV"
    )
    assert [m.message_id for m in proto.events_received() if isinstance(m, ChatMessage)] == [
        "1",
        "2",
    ]
    proto.receive_text("MSG #xqcow :three\r\n")
    assert [m.text for m in proto.events_received() if isinstance(m, ChatMessage)] == ["three"]


def test_malformed_lines_are_reported_and_skipped() -> None:
    proto = TwitchChatProtocol("xqcow", now=FakeTime(), max_partial_line=100)
    proto.receive_text("@only-tags\r\n:prefix-only\r\n12 x\r\n")
    events = proto.events_received()
    assert len(events) == 3 and all(isinstance(e, MalformedLine) for e in events)
    proto.receive_text("x" * 101)  # no terminator, past the cap: dropped, not kept
    assert isinstance(proto.events_received()[0], MalformedLine)
    proto.receive_text("@id=9;user-id=9 :a!a@a PRIVMSG #xqcow :ok\r\n")
    assert [e.text for e in proto.events_received() if isinstance(e, ChatMessage)] == ["ok"]


def test_messages_for_other_channels_are_ignored() -> None:
    proto, _ = _session()
    proto.receive_text("@id=1;user-id=1 :a!a@a PRIVMSG #forsen :hi\r\n")
    assert proto.events_received() == []
    assert proto.stats["ignored"] == 1


def test_keepalive_timeline() -> None:
    clock = FakeTime(0.0)
    proto = TwitchChatProtocol("xqcow", now=clock, ping_interval=30, pong_timeout=10)
    proto.data_to_send()
    proto.tick(29.9)
    assert proto.data_to_send() == []
    assert proto.next_tick() == 30.0
    proto.tick(30.0)
    assert proto.data_to_send() == ["PING :tmi.twitch.tv"]
    proto.tick(35.0)
    assert proto.data_to_send() == [] and proto.events_received() == []
    clock.now = 36.0
    proto.receive_text(":tmi.twitch.tv PONG tmi.twitch.tv :tmi.twitch.tv\r\n")  # link alive
    proto.tick(50.0)
    assert proto.data_to_send() == [] and not proto.dead
    proto.tick(66.0)
    assert proto.data_to_send() == ["PING :tmi.twitch.tv"]
    proto.tick(75.9)
    assert not proto.dead
    proto.tick(76.0)  # 40 s after the last data, 10 s after our PING: dead
    [event] = proto.events_received()
    assert isinstance(event, LinkDead) and proto.dead
    proto.tick(100.0)
    assert proto.events_received() == [] and proto.data_to_send() == []
