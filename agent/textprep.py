"""Chat text → the text the emotion model reads. Pure functions, safe for any input.

The model is CardiffNLP's Twitter-RoBERTa, so texts get the preprocessing it was trained with
(a user mention becomes `@user`, a link becomes `http`). Twitch chat is mostly emotes the model
never saw in tweets (`LULW`, `PogU`, `monkaW`); an editable table turns them into plain words
that carry the same feeling (`laughing`, `amazed`, `scared`). Everything else is kept as
written: slang and emoji are signal, not noise.

`prepare` never raises on a `str`: empty, whitespace-only, emoji-only, huge texts and lone
surrogates (which `tokenizers` cannot encode) all come out as a short valid string.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import SettingsError

# Texts are cut to this many characters before anything else. The model reads at most
# `max_length` (128-512) tokens and a token is rarely less than one character, so 2,000
# characters never change what the model sees; the cap bounds the work a 50,000-character
# copypasta costs (splitting, table look-ups, byte-level BPE) to that of a normal message.
MAX_CHARS = 2_000

MENTION_PLACEHOLDER = "@user"
LINK_PLACEHOLDER = "http"

EMOTE_TABLE_RESOURCE = ("agent", "data", "emotes.toml")

# Characters that carry nothing the model could read and only make identical messages look
# different: C0/C1 controls (IRC's \x01ACTION framing, NUL), zero-width spaces/joiners used
# to dodge spam filters, the BOM, and U+E0000, which Chatterino and 7TV append to get past
# Twitch's "identical message" rule. The zero-width joiner (U+200D) is kept: emoji sequences
# such as 👨‍👩‍👧 need it.
_INVISIBLE_RE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\u200c\u200e\u200f\u2060\u2061-\u2064\ufeff\U000e0000]"
)


def clean_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """Cap the length, repair lone surrogates, drop invisible characters, normalise spaces."""
    if len(text) > max_chars:
        text = text[:max_chars]
    # A str can hold surrogate code points that are not valid Unicode text (from a bad JSON
    # escape or a cut inside a pair); `tokenizers` raises on them. A round trip through
    # UTF-16 joins valid pairs into their character and turns every lone one into U+FFFD.
    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    text = _INVISIBLE_RE.sub(" ", text)
    return " ".join(text.split())


def cardiff_token(token: str) -> str:
    """CardiffNLP's tweet preprocessing for one token (see the model card's `preprocess`)."""
    if token.startswith("@") and len(token) > 1:
        return MENTION_PLACEHOLDER
    if token.startswith("http"):
        return LINK_PLACEHOLDER
    return token


def prepare(text: str, emotes: Mapping[str, str] | None = None) -> str:
    """The text the model should read for one chat message.

    Tokens are whitespace-separated words; an emote is translated only when a whole token
    matches a table key exactly (Twitch emote names are case-sensitive: `LULW` is an emote,
    `lulw` is not), so "FeelsGoodMan Clap" becomes "feeling good applause".
    """
    tokens = clean_text(text).split(" ")
    out: list[str] = []
    for token in tokens:
        if not token:
            continue
        token = cardiff_token(token)
        if emotes is not None:
            token = emotes.get(token, token)
        out.append(token)
    return " ".join(out)


# --- the emote table ------------------------------------------------------------------------


def default_emote_table_text() -> str:
    """The shipped table; read through importlib.resources so a PyInstaller build finds it."""
    package, *parts = EMOTE_TABLE_RESOURCE
    resource = importlib.resources.files(package)
    for part in parts:  # one level at a time: zip-based Traversables do not split "a/b"
        resource = resource.joinpath(part)
    return resource.read_text(encoding="utf-8")


def load_emote_table(path: Path | None = None) -> dict[str, str]:
    """Read an emote table: the shipped one when `path` is None, else the user's copy.

    The file is TOML: `Emote = "plain words"` pairs, at the top level or in sections
    (`[twitch]`, `[bttv]`, `[ffz]`, `[7tv]`, or any name the user likes). Raises
    SettingsError with one line naming the file and line of the first problem.
    """
    if path is None:
        source = "the shipped emote table (agent/data/emotes.toml)"
        text = default_emote_table_text()
    else:
        source = str(path)
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise SettingsError(
                f"emote table {path} does not exist: fix the path, or leave it unset to use "
                f"the shipped table"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(
                f"emote table {path} cannot be read ({exc}): save it as UTF-8 text"
            ) from exc
    return parse_emote_table(text, source)


def parse_emote_table(text: str, source: str = "emote table") -> dict[str, str]:
    """Parse and check the TOML text of an emote table (see `load_emote_table`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise SettingsError(f"{source} is not valid TOML: {exc}; fix that line") from exc
    table: dict[str, str] = {}
    where: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for emote, words in value.items():
                _add_entry(table, where, emote, words, f"[{key}]", text, source)
        else:
            _add_entry(table, where, key, value, "the top level", text, source)
    return table


def _add_entry(
    table: dict[str, str],
    where: dict[str, str],
    emote: str,
    words: Any,
    section: str,
    text: str,
    source: str,
) -> None:
    # A duplicate is reported where it occurs the second time.
    line = _line_of(text, emote, occurrence=2 if emote in table else 1)
    at = f"{source}, line {line}" if line else source
    if not isinstance(words, str):
        raise SettingsError(
            f"{at}: {emote!r} maps to {words!r}; write plain words in quotes, "
            f'e.g. {emote} = "laughing"'
        )
    if not emote or emote != emote.strip() or len(emote.split()) != 1:
        raise SettingsError(
            f"{at}: emote name {emote!r} has spaces; an emote is one token, "
            f"list each word of a combination on its own line"
        )
    cleaned = " ".join(words.split())
    if not cleaned:
        raise SettingsError(f"{at}: {emote!r} maps to nothing; give it a word or delete the line")
    if emote in table:
        raise SettingsError(
            f"{at}: {emote!r} is listed twice (in {where[emote]} and {section}); keep one"
        )
    table[emote] = cleaned
    where[emote] = section


def _line_of(text: str, key: str, occurrence: int = 1) -> int | None:
    """The 1-based line where `key` is defined (bare or quoted), for error messages."""
    pattern = re.compile(
        r"^\s*(?:" + re.escape(key) + r"|\"" + re.escape(key) + r"\"|'" + re.escape(key) + r"')\s*="
    )
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            occurrence -= 1
            if occurrence == 0:
                return number
    return None
