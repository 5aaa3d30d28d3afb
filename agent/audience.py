"""What counts as audience chat: known bots and `!commands` are journaled but not scored.

On big channels bots and commands are a tenth to a fifth of chat; scoring them would tint
every reading with "Thanks for the follow!" and "!discord".

Matching is on `ChatMessage.author`, case-insensitively. Every source puts the sender's
*login / user name* there (Twitch: the IRC prefix nick, which is the login; Streamer.bot:
`user.login`; Social Stream Ninja: `chatname`), never a numeric id, so a bot is recognised by
the name streamers know it by. Display names that differ from logins only by case
("StreamElements" / "streamelements") match too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agent.vocab import ChatMessage

# Chat bots that post on behalf of a channel: announcements, timers, command replies.
KNOWN_BOTS: frozenset[str] = frozenset(
    {
        "nightbot",
        "streamelements",
        "moobot",
        "fossabot",
        "streamlabs",
        "wizebot",
        "sery_bot",
        "botisimo",
        "coebot",
        "deepbot",
        "phantombot",
        "ankhbot",
        "streamholics",
        "soundalerts",
        "pretzelrocks",
        "streamcaptainbot",
        "kofistreambot",
        "tangiabot",
        "commanderroot",
        "blerp",
        "own3d",
        "lumiastream",
        "songlistbot",
        "restreambot",
        "streamstickers",
        "botrixoficial",  # Kick
        "kickbot",
    }
)

# '!' then a word character ("!discord", "!so @x"), also behind a '#' as in the emote
# showcase command "!#showemote"; "!!!" and "! hello" are people shouting, not commands.
_COMMAND_RE = re.compile(r"^\s*!#?\w", re.UNICODE)


def bot_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """The known bots plus a configured list, normalised (lower case, no '@', no spaces)."""
    cleaned = {name.strip().lstrip("@").lower() for name in extra}
    return KNOWN_BOTS | frozenset(name for name in cleaned if name)


def is_command(text: str) -> bool:
    return _COMMAND_RE.match(text) is not None


def is_audience(
    msg: ChatMessage, *, bots: frozenset[str] = KNOWN_BOTS, skip_commands: bool = True
) -> bool:
    """True if the message is audience chat worth scoring.

    `bots` must be lower-case names (use `bot_names()`)."""
    for name in (msg.author_name, msg.author):
        if name and name.strip().lstrip("@").lower() in bots:
            return False
    return not (skip_commands and is_command(msg.text))
