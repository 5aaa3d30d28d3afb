"""agent.textprep: CardiffNLP preprocessing, emote translation, and safety on any text."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from agent.errors import SettingsError
from agent.textprep import (
    MAX_CHARS,
    clean_text,
    load_emote_table,
    parse_emote_table,
    prepare,
)


@pytest.fixture(scope="module")
def emotes() -> dict[str, str]:
    return load_emote_table(None)


# --- CardiffNLP preprocessing ---------------------------------------------------------------


def test_mentions_become_at_user() -> None:
    assert prepare("@xQcOW you are insane @Greekgodx") == "@user you are insane @user"


def test_a_lone_at_sign_is_kept() -> None:
    assert prepare("meet @ 5") == "meet @ 5"


def test_links_become_http() -> None:
    assert prepare("look https://clips.twitch.tv/Abc?x=1 lol") == "look http lol"
    assert prepare("http://x.y") == "http"


def test_mention_rule_matches_the_model_card_on_chat_lines() -> None:
    def model_card_preprocess(text: str) -> str:
        # The reference from CardiffNLP's model cards, applied to already-normalised text.
        out = []
        for t in text.split(" "):
            t = "@user" if t.startswith("@") and len(t) > 1 else t
            t = "http" if t.startswith("http") else t
            out.append(t)
        return " ".join(out)

    for line in ["@a b http://c d", "@ @@ @x", "httpfoo bar", "no change here"]:
        assert prepare(line) == model_card_preprocess(line)


# --- emotes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("emote", "words"),
    [
        ("KEKW", "laughing"),
        ("BibleThump", "crying"),
        ("PogU", "amazed"),
        ("LULW", "laughing"),
        ("monkaW", "scared"),
        ("Kappa", "sarcastic"),
        ("Kapp", "sarcastic"),
        ("FeelsGoodMan", "feeling good"),
        ("Clap", "applause"),
    ],
)
def test_shipped_table_translates_common_emotes(
    emotes: dict[str, str], emote: str, words: str
) -> None:
    assert emotes[emote] == words
    assert prepare(emote, emotes) == words


def test_emote_combination_is_translated_token_by_token(emotes: dict[str, str]) -> None:
    assert prepare("FeelsGoodMan Clap", emotes) == "feeling good applause"


def test_emotes_match_whole_tokens_case_sensitively(emotes: dict[str, str]) -> None:
    # "lulw" and "KEKWait" are not emotes; "LULW," with punctuation is a different token.
    assert prepare("lulw KEKWait LULW, LULW", emotes) == "lulw KEKWait LULW, laughing"


def test_translation_off_keeps_emotes(emotes: dict[str, str]) -> None:
    assert prepare("PogU @someone", None) == "PogU @user"


def test_shipped_table_covers_the_capture_s_most_frequent_emotes(
    testdata: Path, emotes: dict[str, str]
) -> None:
    counts: Counter[str] = Counter()
    with gzip.open(testdata / "xqcow-chat-2019-09-15.irc.gz", "rt", encoding="utf-8") as f:
        for line in f:
            if " PRIVMSG " in line:
                text = line.rstrip("\r\n").split(" PRIVMSG ", 1)[1].split(" :", 1)[1]
                counts.update(text.split())
    # The capture's most frequent emotes (all-caps ones included, which the check below skips).
    named = ["LULW", "PogU", "POGGERS", "gachiHYPER", "Kapp", "PepeLaugh", "monkaW"]
    named += ["FeelsGoodMan", "Clap", "OMEGALUL", "3Head", "KEKVV", "ANELE", "Kreygasm"]
    for emote in named:
        assert counts[emote] >= 30, emote  # they really are among the frequent ones
        assert emote in emotes, emote
    # The 40 most frequent mixed-case tokens, leaving out mentions, capitalised words and
    # channels' own subscriber emotes (a streamer prefix: xqc..., squad..., m0xy...), are
    # all in the table.
    channel_prefixes = ("@", "xqc", "squad", "m0xy", "lac", "itssli")
    frequent = [
        t
        for t, _ in counts.most_common()
        if any(c.islower() for c in t)
        and any(c.isupper() for c in t)
        and not t.startswith(channel_prefixes)
        and not (t[0].isupper() and t[1:].islower())
    ][:40]
    assert [t for t in frequent if t not in emotes] == []


# --- bad texts ------------------------------------------------------------------------------


def byte_level_tokenizer() -> Tokenizer:
    # Byte-level BPE like RoBERTa's: it raises on lone surrogates, which is what prepare avoids.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tok


@pytest.mark.parametrize(
    "text",
    ["", "   \t\n ", "😂😂🔥", "x" * 50_000, "\ud800", "a\udfffb\ud83d", "\x00\x01ACTION\x01"],
)
def test_bad_texts_prepare_to_something_a_tokenizer_encodes(
    text: str, emotes: dict[str, str]
) -> None:
    prepared = prepare(text, emotes)
    assert len(prepared) <= MAX_CHARS
    prepared.encode("utf-8")  # valid Unicode: this raises on a lone surrogate
    byte_level_tokenizer().encode(prepared)


def test_empty_and_whitespace_become_empty() -> None:
    assert prepare("") == ""
    assert prepare(" \t\r\n\u3000 ") == ""


def test_emoji_only_is_kept() -> None:
    assert prepare("😂 😂🔥") == "😂 😂🔥"


def test_a_valid_surrogate_pair_is_joined_and_a_lone_one_replaced() -> None:
    assert clean_text("\ud83d\ude02") == "😂"
    assert clean_text("ok\ud800") == "ok\ufffd"


def test_long_text_is_cut_to_the_cap() -> None:
    assert len(prepare("ab " * 30_000)) <= MAX_CHARS


def test_invisible_filter_dodges_do_not_make_texts_differ() -> None:
    # Chatterino/7TV append U+E0000 to repeat a message; zero-width spaces dodge filters.
    assert prepare("LULW \U000e0000") == prepare("LULW")
    assert prepare("a\u200bb") == "a b"
    assert prepare("\x01ACTION waves\x01") == "ACTION waves"


def test_whitespace_is_normalised() -> None:
    assert prepare("  so \t  many\n\nspaces  ") == "so many spaces"


@given(st.text())
def test_prepare_never_raises_and_is_idempotent(text: str) -> None:
    once = prepare(text)
    once.encode("utf-8")
    assert prepare(once) == once
    assert once == once.strip()


@given(st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)))
def test_any_surrogate_soup_is_repaired(text: str) -> None:
    prepare(text).encode("utf-8")


# --- the table file -------------------------------------------------------------------------


def test_user_table_with_sections_and_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "emotes.toml"
    path.write_text(
        '# mine\nxqcL = "love"\n[bttv]\n"D:" = "shocked"\nPogU = "  very   amazed "\n',
        encoding="utf-8",
    )
    assert load_emote_table(path) == {"xqcL": "love", "D:": "shocked", "PogU": "very amazed"}


@pytest.mark.parametrize(
    ("body", "line", "hint"),
    [
        ('[a]\nKEKW = "laughing"\nLULW = laughing\n', 3, "not valid TOML"),
        ('[a]\nKEKW = "laughing"\n\nLULW = 3\n', 4, "plain words in quotes"),
        ('[a]\nKEKW = "laughing"\n[b]\nKEKW = "lol"\n', 4, "listed twice"),
        ('"Feels Good" = "good"\n', 1, "has spaces"),
        ('OK = "   "\n', 1, "maps to nothing"),
    ],
)
def test_bad_user_table_names_file_and_line(
    tmp_path: Path, body: str, line: int, hint: str
) -> None:
    path = tmp_path / "emotes.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_emote_table(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"line {line}" in message
    assert hint in message


def test_missing_user_table_says_so(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_emote_table(tmp_path / "nope.toml")


def test_shipped_table_parses_without_duplicates() -> None:
    # parse_emote_table raises on duplicates across sections, so this also guards edits.
    table = parse_emote_table(
        (Path(__file__).resolve().parents[1] / "agent" / "data" / "emotes.toml").read_text(
            encoding="utf-8"
        )
    )
    assert table == load_emote_table(None)
    assert len(table) >= 200
    assert all(" " not in k and v == " ".join(v.split()) for k, v in table.items())
