"""Property tests: no input makes the IRC parser or the Twitch protocol raise anything but
the documented IrcParseError (the parser) or nothing at all (the protocol)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources.irc import IrcParseError, TwitchChatProtocol, parse_emotes, parse_line

# Text shaped like IRC, so the fuzzer reaches deep into the grammar, plus plain noise.
_irc_alphabet = st.sampled_from(list("@:;=\\ !#.-_/,\r\n\x01\0abcPRIVMSGNOTICE0123456789sé😂"))
irc_like = st.lists(_irc_alphabet, max_size=120).map("".join)
any_text = st.one_of(st.text(max_size=300), irc_like)
any_bytes_as_text = st.tuples(
    st.binary(max_size=300), st.sampled_from(["surrogateescape", "replace"])
).map(lambda pair: pair[0].decode("utf-8", errors=pair[1]))

SETTINGS = settings(max_examples=400, deadline=None)


def _parse_or_documented_error(line: str) -> None:
    try:
        msg = parse_line(line)
    except IrcParseError:
        return
    # Whatever parsed must be usable without raising either.
    _ = (msg.channel, msg.trailing, msg.command, msg.tags)


@SETTINGS
@given(any_text)
def test_parse_line_text(line: str) -> None:
    _parse_or_documented_error(line)


@SETTINGS
@given(any_bytes_as_text)
def test_parse_line_bytes(line: str) -> None:
    _parse_or_documented_error(line)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            any_text,
            any_bytes_as_text,
            st.sampled_from(
                [
                    "@id=1;user-id=2;tmi-sent-ts=x :a!a@a PRIVMSG #xqcow :\x01ACTION\r\n",
                    ":tmi.twitch.tv CLEARCHAT #xqcow\r\n",
                    "@target-msg-id= :tmi.twitch.tv CLEARMSG #xqcow\r\n",
                    "@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE #xqcow\r\n",
                    ":tmi.twitch.tv USERNOTICE #xqcow :\r\n",
                    "PRIVMSG #xqcow :no prefix\r\n",
                    "PING\r\n",
                ]
            ),
        ),
        max_size=12,
    ),
    st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=4),
)
def test_protocol_never_raises(frames: list[str], ticks: list[float]) -> None:
    proto = TwitchChatProtocol("xqcow", nick="tester", now=lambda: 0.0, max_partial_line=200)
    for frame in frames:
        proto.receive_text(frame)
        proto.events_received()
        proto.data_to_send()
    for t in ticks:
        proto.tick(t)
    proto.events_received()


@SETTINGS
@given(st.text(max_size=80), st.text(max_size=40))
def test_parse_emotes_never_raises(value: str, text: str) -> None:
    for emote in parse_emotes(value, text):
        assert 0 <= emote.start < emote.end and emote.start < len(text)
        assert emote.name == text[emote.start : emote.end]
