"""A seeded synthetic Twitch chat corpus, and the real #xqcow capture, for the scorer benchmark.

`synthetic_chat(n, seed)` imitates a busy chat the way it matters to an emotion scorer:

* lengths: most messages are a few words (median about 7 tokens with `<s>`/`</s>`), the
  mean is pulled up to about 10 by a long tail of sentences and copypastas (up to ~80);
* repetition: about half of all messages repeat an earlier one exactly: emotes and emote
  walls, "W"/"L", crowd phrases ("LETS GO"), copypastas, and people echoing a recent
  message. Popularity follows a Zipf law, so a few texts make most of the repeats.

The generator knows words, not tokens: `run.py` measures the lengths with the model's
tokenizer and prints them, so a changed tokenizer cannot silently change the corpus' shape.
Everything here is pure (a `random.Random(seed)` in, texts out) except `load_capture`.
"""

from __future__ import annotations

import gzip
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CAPTURE_NAME = "xqcow-chat-2019-09-15.irc.gz"

# Texts chat repeats verbatim. Order is popularity rank (Zipf weights below).
CROWD_TEXTS: tuple[str, ...] = (
    "LULW",
    "W",
    "KEKW",
    "PogU",
    "OMEGALUL",
    "L",
    "monkaW",
    "POGGERS",
    "LULW LULW LULW",
    "FeelsGoodMan Clap",
    "PepeLaugh",
    "Kapp",
    "KEKW KEKW",
    "gachiHYPER",
    "LETS GOOO",
    "Pog",
    "3Head",
    "monkaS",
    "gg",
    "Sadge",
    "EZ Clap",
    "pepeLaugh pepeLaugh",
    "WW",
    "?",
    "no way",
    "Kappa",
    "FeelsBadMan",
    "PogChamp",
    "LUL",
    "Clap",
    "widepeepoHappy",
    "BibleThump",
    "monkaW monkaW monkaW",
    "WutFace",
    "LMAO",
    "HYPERS",
    "OMEGALUL OMEGALUL",
    "ResidentSleeper",
    "catJAM",
    "xqcL",
    "chat is this real",
    "LETS GO",
    "lol",
    "lmao",
    "F",
    "1",
    "2",
    "FeelsStrongMan",
    "PepeHands",
    "POGGERS POGGERS POGGERS POGGERS",
)

COPYPASTAS: tuple[str, ...] = (
    "I'm not even mad, that's amazing. Honestly the way he just walked into that room without "
    "checking a single corner and still came out alive is the most xQc thing I have ever seen "
    "on this website LULW",
    "Hey chat, sorry for being late! I just got home from work, what did I miss? Did he win "
    "the last game or did he throw again like yesterday? PepeHands",
    "This is the worst stream I have ever watched in my entire life. I have been here for "
    "six hours and I regret every single minute of it. I am never coming back. See you "
    "tomorrow chat FeelsGoodMan. Also whoever keeps gifting subs to random people in this "
    "chat, please stop, my notifications have not stopped buzzing since noon OMEGALUL",
    "monkaW monkaW monkaW monkaW monkaW monkaW monkaW monkaW monkaW monkaW",
    "Chat, I need everyone to stay calm. Nobody panic. He is going to make the right "
    "decision this time, I can feel it. Trust the process monkaS",
    "Juicer juicing juicy juice, he's been juicing since the stream began and he will keep "
    "juicing until the end of time Kapp",
    "📢 ATTENTION: the streamer is currently NOT reading chat. Please do not spam questions, "
    "they will not be answered. Thank you for your cooperation! 📢",
    "gachiHYPER 👉 🚪 gachiHYPER 👉 🚪 gachiHYPER 👉 🚪 gachiHYPER 👉 🚪",
)

# The words fresh (non-repeated) messages are made of: chat English, names, slang, emotes.
_WORDS_TEXT = """
    the a to is it that this he you i what and of in no was just so not why on be for
    game chat bro man dude lol lmao omg wtf yes yeah nah wait holy god actually literally
    play playing played win won lose lost throw threw again next round boss fight dead
    died kill kills shot aim gun map run running jump clutch insane crazy sick cracked
    bad good great nice best worst ever never always really very too much more less
    streamer stream mods ban banned timeout sub subs prime follow raid clip clipped vod
    today tonight tomorrow yesterday time hours minutes now later soon first last again
    how when where who which can can't cant don't dont won't didn't isn't he's it's that's
    love hate like want need think know see look looks watching watch said says say
    funny sad scary angry happy hype excited tired bored hungry scared worried proud
    Pog KEKW LULW monkaW PepeLaugh OMEGALUL Sadge Clap EZ xqcL forsenE Kapp 3Head
    WAYTOODANK pepeD HandsUp gachiBASS peepoHappy FeelsOkayMan 5Head monkaHmm
    juice juicer xqc x adept poke moxy jerma summit forsen twitch youtube discord
    minecraft gta rp server cops car chase bank heist guy guys girl friends everyone
    hi hello bye gn gm welcome back thanks thank please sorry pls ok okay sure maybe
    right wrong true false real fake lie lying cap no-cap based cringe ratio mid goated
    one two three four five ten hundred 100 69 420 1v1 gg ff rematch
"""
_WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())

# Fraction of messages drawn from the crowd's repertoire (CROWD_TEXTS, COPYPASTAS) and of
# messages that echo a recent message; the rest are fresh. Tuned so that about half of
# all messages repeat an earlier text (run.py prints the measured fraction).
CROWD_SHARE = 0.37
COPYPASTA_SHARE = 0.03
ECHO_SHARE = 0.08
ECHO_WINDOW = 30
# Fresh message length in words: log-normal (median ~5.5 words), capped; chat is short.
FRESH_WORDS_MU = 1.7
FRESH_WORDS_SIGMA = 0.7
FRESH_WORDS_MAX = 30
ZIPF_EXPONENT = 1.1


def _zipf_weights(n: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, n + 1)]


def _fresh_message(rng: random.Random) -> str:
    count = min(
        FRESH_WORDS_MAX, max(1, round(rng.lognormvariate(FRESH_WORDS_MU, FRESH_WORDS_SIGMA)))
    )
    words = [rng.choice(_WORDS) for _ in range(count)]
    # Chat style: some shout, some end with punctuation, some tag someone.
    style = rng.random()
    if style < 0.08:
        words = [w.upper() for w in words]
    elif style < 0.25:
        words[-1] += rng.choice(("?", "!", "!!", "??", "...", " LULW", " KEKW"))
    if rng.random() < 0.05:
        words.insert(0, f"@{rng.choice(('xqcow', 'moxy', 'adeptthebest', 'pokelawls'))}")
    return " ".join(words)


def synthetic_chat(n: int, seed: int = 0) -> list[str]:
    """`n` chat messages, the same for the same (n, seed)."""
    rng = random.Random(seed)
    crowd_weights = _zipf_weights(len(CROWD_TEXTS))
    pasta_weights = _zipf_weights(len(COPYPASTAS), 0.8)
    messages: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if roll < CROWD_SHARE:
            text = rng.choices(CROWD_TEXTS, crowd_weights)[0]
        elif roll < CROWD_SHARE + COPYPASTA_SHARE:
            text = rng.choices(COPYPASTAS, pasta_weights)[0]
        elif roll < CROWD_SHARE + COPYPASTA_SHARE + ECHO_SHARE and messages:
            text = rng.choice(messages[-ECHO_WINDOW:])
        else:
            text = _fresh_message(rng)
        messages.append(text)
    return messages


def load_capture(path: Path) -> list[str]:
    """The PRIVMSG texts of a raw Twitch IRC capture (gzip or plain), in order."""
    from agent.sources.irc import IrcParseError, chat_text, parse_line

    opener = gzip.open if path.suffix == ".gz" else open
    texts: list[str] = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if not line:
                continue
            try:
                message = parse_line(line)
            except IrcParseError:
                continue
            if message.command != "PRIVMSG":
                continue
            text, _action = chat_text(message)
            if text is not None:
                texts.append(text)
    return texts


@dataclass(frozen=True, slots=True)
class CorpusShape:
    """What a corpus looks like to the model: token lengths and repetition."""

    messages: int
    distinct: int
    repeat_fraction: float  # messages whose exact text occurred earlier
    median_tokens: float
    mean_tokens: float
    p99_tokens: float
    max_tokens: int

    def describe(self) -> str:
        return (
            f"{self.messages} messages, {self.distinct} distinct, "
            f"{self.repeat_fraction:.0%} repeats; tokens incl. <s>/</s>: median "
            f"{self.median_tokens:g}, mean {self.mean_tokens:.1f}, p99 {self.p99_tokens:g}, "
            f"max {self.max_tokens}"
        )


def corpus_shape(texts: Sequence[str], token_lengths: Sequence[int]) -> CorpusShape:
    """Shape of `texts`, given each one's token count (with the special tokens)."""
    if not texts or len(texts) != len(token_lengths):
        raise ValueError("corpus_shape needs one token length per text, and some texts")
    ordered = sorted(token_lengths)
    distinct = len(set(texts))
    return CorpusShape(
        messages=len(texts),
        distinct=distinct,
        repeat_fraction=(len(texts) - distinct) / len(texts),
        median_tokens=statistics.median(ordered),
        mean_tokens=statistics.fmean(ordered),
        p99_tokens=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        max_tokens=ordered[-1],
    )
