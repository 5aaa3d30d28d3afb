"""Generate agent/data/demo_chat.jsonl: the chat recording `captaflow demo` replays.

A made-up, seeded twelve-minute stream with moods a streamer would recognise: small talk,
a clutch play (hype), a death (sadness), a jump scare (fear), a fail (laughter), a raid.
Run: python packaging/make_demo_chat.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "agent" / "data" / "demo_chat.jsonl"
START = 1_764_000_000.0  # 2025-11-24 16:00:00 UTC

CALM = [
    "hi chat",
    "hello!",
    "good evening everyone",
    "how was your day",
    "first time here",
    "what game is this",
    "love the new overlay",
    "o7",
    "hey @captaflow_demo",
    "this song is a vibe",
    "ResidentSleeper",
    "can't wait for tonight",
    "hmm",
    "monkaHmm",
    "any tips for the boss?",
    "drink some water",
    "Kappa",
    "I think he goes left",
]

# (seconds, messages/s, lines). Calm stretches between the moments give the report's
# moment detection a baseline to measure each spike against.
PHASES = [
    (240, 1.5, CALM),
    (
        45,
        6.0,
        [
            "PogU",
            "W",
            "WWWW",
            "POGGERS",
            "LETS GOOO",
            "no way!!!",
            "insane play",
            "what a clutch",
            "PogChamp",
            "HYPE",
            "GIGACHAD",
            "that was incredible",
            "clip it!",
            "EZ Clap",
        ],
    ),
    (
        90,
        1.5,
        [
            "I'm happy for you",
            "good game",
            "gg",
            "nice",
            "proud of you",
            "that was fun",
            "love this stream <3",
            "peepoHappy",
            "you deserved it",
            *CALM,
        ],
    ),
    (
        40,
        4.0,
        [
            "F",
            "BibleThump",
            "noooo",
            "so sad",
            "pain",
            "Sadge",
            "he was so close",
            "I'm crying",
            "why",
            "FeelsBadMan",
            "unlucky",
        ],
    ),
    (90, 1.5, CALM),
    (
        35,
        5.0,
        [
            "monkaS",
            "monkaW",
            "AAAAAAAH",
            "WHAT WAS THAT",
            "I jumped",
            "scary",
            "nope nope nope",
            "D:",
            "run!!",
            "I'm scared",
        ],
    ),
    (60, 1.5, CALM),
    (
        50,
        5.0,
        [
            "KEKW",
            "LUL",
            "OMEGALUL",
            "LMAO",
            "he fell off the map",
            "LULW",
            "😂😂😂",
            "PepeLaugh",
            "I can't breathe",
            "that fail KEKW",
            "clip that LUL",
        ],
    ),
    (30, 1.5, ["!uptime", "!discord", "!song", *CALM]),
    (
        60,
        3.0,
        [
            "this is trash",
            "so annoying",
            "the devs ruined it",
            "stop camping!",
            "BabyRage",
            "cheater",
            "that's so unfair",
            "DansGame",
            "ugh",
        ],
    ),
    (
        45,
        3.0,
        [
            "see you tomorrow",
            "good stream",
            "thanks for the stream!",
            "<3",
            "bye chat",
            "love you all",
            "peepoLove",
            "can't wait for next time",
            "gn",
        ],
    ),
]
CHATTERS = [f"viewer{i:03d}" for i in range(180)]
BOTS = ["nightbot", "streamelements"]


def main() -> None:
    rng = random.Random(2026)
    t = START
    rows = []
    n = 0
    for seconds, rate, lines in PHASES:
        end = t + seconds
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            text = rng.choice(lines)
            author = rng.choice(CHATTERS)
            if text.startswith("!"):
                rows.append(_row(n, t, author, text))
                n += 1
                t += 0.4
                rows.append(
                    _row(n, t, rng.choice(BOTS), f"@{author} here you go: captaflow.example")
                )
            else:
                rows.append(_row(n, t, author, text))
            n += 1
    with OUT.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} messages over {t - START:.0f} s to {OUT}")


def _row(n: int, t: float, author: str, text: str) -> dict[str, object]:
    return {
        "platform": "twitch",
        "channel": "captaflow_demo",
        "id": f"demo-{n:05d}",
        "author": author,
        "text": text,
        "sent_at": round(t, 3),
    }


if __name__ == "__main__":
    main()
