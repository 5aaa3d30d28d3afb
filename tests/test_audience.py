"""Known bots and !commands are journaled but not scored."""

from __future__ import annotations

import pytest

from agent.audience import KNOWN_BOTS, bot_names, is_audience, is_command
from agent.vocab import ChatMessage


def chat(author: str, text: str) -> ChatMessage:
    return ChatMessage("twitch", "xqcow", "id", author, text, 0.0, 0.0)


@pytest.mark.parametrize(
    "author", ["Nightbot", "nightbot", "StreamElements", "MOOBOT", "Fossabot", "@Streamlabs"]
)
def test_known_bots_are_not_audience_whatever_the_case(author: str) -> None:
    assert not is_audience(chat(author, "Follow the socials!"), bots=KNOWN_BOTS)


def test_configured_bots_are_added_to_the_known_ones() -> None:
    bots = bot_names([" MyChannelBot ", "@Helper_Bot", ""])
    assert {"mychannelbot", "helper_bot", "nightbot"} <= bots
    assert "" not in bots
    assert not is_audience(chat("mychannelbot", "hi"), bots=bots)
    assert not is_audience(chat("Helper_Bot", "hi"), bots=bots)
    assert is_audience(chat("mychannelbot", "hi"), bots=KNOWN_BOTS)


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("!discord", True),
        ("  !so @someone", True),
        ("!#showemote xqcT", True),
        ("!ÄÖ", True),
        ("!1v1", True),
        ("!!!", False),
        ("! hello", False),
        ("!?", False),
        ("wow!", False),
        ("PogU !", False),
        ("", False),
    ],
)
def test_commands(text: str, command: bool) -> None:
    assert is_command(text) is command
    assert is_audience(chat("viewer", text), bots=KNOWN_BOTS) is not command


def test_commands_can_be_kept_for_scoring() -> None:
    assert is_audience(chat("viewer", "!discord"), bots=KNOWN_BOTS, skip_commands=False)
    assert not is_audience(chat("nightbot", "hello"), bots=KNOWN_BOTS, skip_commands=False)


def test_people_whose_names_merely_contain_a_bot_name_are_audience() -> None:
    assert is_audience(chat("nightbotfan", "LULW"), bots=KNOWN_BOTS)
    assert is_audience(chat("not_moobot", "LULW"), bots=KNOWN_BOTS)


def test_a_twitch_bot_is_told_apart_by_login_though_author_is_its_user_id() -> None:
    from agent.sources.irc import TwitchChatProtocol

    protocol = TwitchChatProtocol("somechannel", now=lambda: 1_700_000_000.0)
    protocol.receive_text(
        "@badge-info=;badges=moderator/1;display-name=Nightbot;id=7b1c0a44-0000-4000-8000-"
        "000000000001;mod=1;tmi-sent-ts=1700000000000;user-id=19264788 "
        ":nightbot!nightbot@nightbot.tmi.twitch.tv PRIVMSG #somechannel :Follow the rules!\r\n"
    )
    [message] = [e for e in protocol.events_received() if isinstance(e, ChatMessage)]
    assert message.author == "19264788"  # moderation events name users by id
    assert message.author_name == "nightbot"
    assert not is_audience(message, bots=bot_names())
