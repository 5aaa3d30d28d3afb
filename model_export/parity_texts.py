"""Chat-like texts the int8 model is compared on against the PyTorch original.

They cover what live chat throws at the scorer: emotes, slang, shouting, emoji, spam,
mentions, links, other scripts, a copypasta longer than the max length (so truncation is
exercised) and near-empty messages (so padding is exercised in the same batch).
"""

from __future__ import annotations

_COPYPASTA = (
    "I'm not even mad, I'm just disappointed. I stayed up until 4am for this stream, told my "
    "boss I was sick, ate cereal with water because the milk ran out, and you're telling me "
    "the final boss was beaten by a guy who pressed one button for twenty minutes straight? "
    "Incredible. Truly the peak of human achievement. I will be telling my grandchildren "
    "about this day, and they will not believe me, and honestly, neither do I. GG chat, GG. "
) * 2

PARITY_TEXTS: tuple[str, ...] = (
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
