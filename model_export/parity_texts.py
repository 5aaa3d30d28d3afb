"""Chat-like texts the int8 model is compared on against the fp32 original.

`HANDWRITTEN` covers what live chat throws at the scorer: emotes, slang, shouting, emoji,
spam, mentions, links, other scripts, a copypasta longer than the max length (so truncation
is exercised) and near-empty messages (so padding is exercised in the same batch).
`PARITY_TEXTS` adds a few hundred more built from a fixed seed the way chat is made: one-word
messages, emote walls, emote + words, short sentences, emoji runs and mixed-case shouting,
so the export's tolerance (mean, max and top-label agreement) is measured on a set the size
of a busy minute of chat. The set is part of the export: changing it changes every figure.
"""

from __future__ import annotations

import random

_COPYPASTA = (
    "I'm not even mad, I'm just disappointed. I stayed up until 4am for this stream, told my "
    "boss I was sick, ate cereal with water because the milk ran out, and you're telling me "
    "the final boss was beaten by a guy who pressed one button for twenty minutes straight? "
    "Incredible. Truly the peak of human achievement. I will be telling my grandchildren "
    "about this day, and they will not believe me, and honestly, neither do I. GG chat, GG. "
) * 2

HANDWRITTEN: tuple[str, ...] = (
    "W",
    "L",
    "KEKW",
    "LUL LUL LUL",
    "PogChamp",
    "BibleThump why did he die",
    "monkaS monkaS he's right behind you",
    "OMEGALUL that was so bad",
    "Kappa sure buddy",
    "5Head play",
    "lmao",
    "lol that's so true",
    "bro is cooked 💀💀💀",
    "no shot he hit that",
    "this is actually so wholesome, love this community <3",
    "I love you chat ❤️",
    "ratio + L + fell off",
    "WHAT WAS THAT",
    "LETS GOOOOOOOOOOOOOOO",
    "STOP SCREAMING I CAN'T HEAR ANYTHING",
    "😂😂😂😂",
    "🔥🔥🔥",
    "😭",
    "👀",
    "@streamer you missed the chest behind the waterfall",
    "@mod_bot can you ban this guy he's spamming slurs",
    "check out my clip https://clips.twitch.tv/SomeFunnyClipName-abc123",
    "watch the vod here: www.youtube.com/watch?v=dQw4w9WgXcQ",
    "I'm so scared of this boss fight ngl",
    "this is disgusting, who eats pizza with a fork",
    "I hope we win the next round, I believe in you",
    "we're never getting out of this lobby, it's over",
    "i'm so sad the series is ending",
    "wait he's actually alive?? no way",
    "trust the process",
    "gg ez",
    "first",
    "?",
    "...",
    "qué pasó aquí jajaja",
    "これはすごい",
    _COPYPASTA,
)

# Building blocks of the generated texts. Emote names as chat types them (the scorer turns
# the known ones into words, so both the translated and the raw path are exercised).
_EMOTES = (
    "LULW",
    "KEKW",
    "PogU",
    "OMEGALUL",
    "monkaW",
    "monkaS",
    "POGGERS",
    "PepeLaugh",
    "Kapp",
    "Sadge",
    "PepeHands",
    "FeelsGoodMan",
    "FeelsBadMan",
    "Clap",
    "EZ",
    "catJAM",
    "xqcL",
    "widepeepoHappy",
    "BibleThump",
    "WutFace",
    "ResidentSleeper",
    "HYPERS",
    "gachiHYPER",
    "FeelsStrongMan",
    "pepeLaugh",
    "Pog",
    "LUL",
    "Kappa",
    "4Head",
    "D:",
    "NotLikeThis",
)
_WORDS = (
    "W",
    "L",
    "lol",
    "lmao",
    "gg",
    "no",
    "way",
    "he",
    "she",
    "chat",
    "is",
    "this",
    "real",
    "actually",
    "so",
    "bad",
    "good",
    "insane",
    "clip",
    "it",
    "what",
    "why",
    "bro",
    "the",
    "game",
    "boss",
    "stream",
    "love",
    "hate",
    "scared",
    "sad",
    "happy",
    "angry",
    "cringe",
    "based",
    "cooked",
    "washed",
    "goat",
    "rigged",
    "lucky",
    "unlucky",
    "again",
    "please",
    "stop",
    "run",
    "hide",
    "win",
    "lose",
    "never",
    "always",
    "today",
    "tomorrow",
    "wow",
)
_EMOJI = ("😂", "💀", "😭", "🔥", "❤️", "👀", "😡", "😱", "🤣", "🙏", "💯", "😍", "🤡", "😴")
_SENTENCES = (
    "why does he always do this",
    "i can't believe what i just saw",
    "this is the best stream i've watched all week",
    "he is going to lose everything again",
    "i'm actually scared for him right now",
    "that was so disgusting i had to look away",
    "we are so back chat",
    "it's over, it's so over",
    "i hope the next round goes better",
    "he deserved that win honestly",
    "nobody talk to me for the rest of the day",
    "my heart can't take this anymore",
    "the timing on that was perfect",
    "i am never trusting him again",
    "how is this legal",
    "imagine losing to that",
)


def _generated(count: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    kinds = ("word", "emote", "wall", "mix", "sentence", "emoji", "shout", "mention")
    out: list[str] = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "word":
            text = rng.choice(_WORDS)
        elif kind == "emote":
            text = rng.choice(_EMOTES)
        elif kind == "wall":
            text = " ".join([rng.choice(_EMOTES)] * rng.randint(2, 12))
        elif kind == "mix":
            parts = [rng.choice(_WORDS) for _ in range(rng.randint(1, 6))]
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(_EMOTES))
            text = " ".join(parts)
        elif kind == "sentence":
            text = rng.choice(_SENTENCES)
            if rng.random() < 0.5:
                text += " " + rng.choice(_EMOTES)
        elif kind == "emoji":
            text = "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 6)))
        elif kind == "shout":
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 5))).upper()
            text += "!" * rng.randint(0, 4)
        else:
            text = f"@viewer{rng.randint(1, 999)} " + rng.choice(_SENTENCES)
        out.append(text)
    return tuple(out)


# 42 handwritten + 318 generated = 360 texts; distinct, so every one counts once.
PARITY_TEXTS: tuple[str, ...] = tuple(dict.fromkeys(HANDWRITTEN + _generated(420, seed=14)))[:360]

# What the export calibrates on (SmoothQuant's activation ranges, the stand-in's head): chat
# made the same way from another seed, with the parity texts removed, so the parity figures
# are measured on texts the calibration never saw.
CALIBRATION_TEXTS: tuple[str, ...] = tuple(
    t for t in dict.fromkeys(_generated(300, seed=7)) if t not in set(PARITY_TEXTS)
)
