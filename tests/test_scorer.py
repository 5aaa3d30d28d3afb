"""agent.scorer on the tiny int8 bundle exported through the real export path."""

from __future__ import annotations

import json
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from agent.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Manifest,
    file_entry,
    load_bundle,
)
from agent.errors import ModelBundleError
from agent.scorer import Scorer, plan_batches, sigmoid
from agent.vocab import LABELS

# How far the score of one text may move when it is scored in a different batch (cache
# off). The int8 graph quantises activations with DynamicQuantizeLinear, whose scale and zero
# point come from the min/max of the WHOLE activation tensor (every row of the batch, padding
# included), so a text's score depends slightly on its batch-mates (see agent/scorer.py).
# Measured one-at-a-time against all-at-once on 400 distinct chat-like texts:
#   tiny random 2-layer model (this bundle):  max 0.061, mean 0.0063
#   full-size random roberta-base bundle:     max 0.0066, mean 0.0014 (300 texts)
# The tiny model's random weights make its activations spiky, hence its looser bound.
# Order alone never matters (bit-identical): the batch plan is a function of the texts.
BATCH_MAX_DIFF = 0.1
BATCH_MEAN_DIFF = 0.02

# int8 ONNX scorer against the PyTorch fp32 tiny model, same prepared texts, same truncation.
# Measured on 322 texts: max 0.062, mean 0.0072, top label agreeing on 97.5%.
PYTORCH_MAX_DIFF = 0.1
PYTORCH_MEAN_DIFF = 0.02

BAD_TEXTS = ["", "   \t\n", "😂😂🔥🔥", "x" * 50_000, "\ud800", "LULW \U000e0000", "\x00\x01"]

CHAT = [
    "LULW",
    "PogU",
    "W",
    "FeelsGoodMan Clap",
    "@xQcOW you are actually insane https://clips.twitch.tv/abc",
    "KEKW KEKW KEKW",
    "no way he hit that",
    "monkaW this game is scary",
    "BibleThump rip",
    "that was the best play i have seen all year, this guy is a machine honestly",
    "gg",
    "L",
    "Kapp sure buddy",
    "why is chat so toxic today",
    "i love this stream so much <3",
]


def chat_corpus(n: int, seed: int = 0) -> list[str]:
    """Chat-like texts with real variety in length (1-60 words) and some repeats."""
    rng = random.Random(seed)
    words = "lol what a play KEKW insane W chat gg no way he did that omg LULW PogU".split()  # noqa: SIM905
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            out.append(rng.choice(CHAT))
        else:
            length = min(60, int(rng.expovariate(1 / 6)) + 1)
            out.append(" ".join(rng.choice(words) for _ in range(length)))
    return out


@pytest.fixture(scope="module")
def scorer(tiny_bundle: Path) -> Scorer:
    return Scorer.open(tiny_bundle)


@pytest.fixture(scope="module")
def uncached(tiny_bundle: Path) -> Scorer:
    return Scorer.open(tiny_bundle, cache_size=0)


def copy_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def rewrite_manifest_checksums(bundle_dir: Path) -> None:
    """Make the manifest match the files again (a corrupt file that passes its checksum)."""
    path = bundle_dir / MANIFEST_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    manifest = Manifest.from_json(data)
    files = {name: file_entry(bundle_dir / name) for name in (MODEL_FILE, TOKENIZER_FILE)}
    fixed = Manifest.from_json({**manifest.to_json(), "files": files})
    path.write_text(json.dumps(fixed.to_json()), encoding="utf-8")


# --- shape, range, bad texts ---------------------------------------------------------------


def test_scores_are_probabilities_in_input_order(scorer: Scorer) -> None:
    scores = scorer.score(CHAT)
    assert scores.shape == (len(CHAT), 11)
    assert scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    assert scorer.labels == LABELS
    # Row i belongs to text i: scoring a text alone lands on the same row's values.
    for i in (0, 4, 9):
        assert np.allclose(scorer.score([CHAT[i]])[0], scores[i])


def test_empty_list_gives_an_empty_array(scorer: Scorer) -> None:
    assert scorer.score([]).shape == (0, 11)


def test_bad_texts_all_score(uncached: Scorer) -> None:
    scores = uncached.score(BAD_TEXTS)
    assert scores.shape == (len(BAD_TEXTS), 11)
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0) & (scores <= 1))


def test_long_text_is_truncated_to_the_manifest_length(scorer: Scorer) -> None:
    assert len(scorer.token_ids("word " * 50_000)) == scorer.max_length


def test_model_id_comes_from_the_manifest(scorer: Scorer, tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert scorer.model_id == manifest["source_model"]["id"]


def test_emote_translation_setting(tiny_bundle: Path, tmp_path: Path) -> None:
    table = tmp_path / "emotes.toml"
    table.write_text('[mine]\nxqcL = "love"\n', encoding="utf-8")
    assert Scorer.open(tiny_bundle).prepare("FeelsGoodMan Clap") == "feeling good applause"
    assert Scorer.open(tiny_bundle, translate_emotes=False).prepare("LULW @x") == "LULW @user"
    custom = Scorer.open(tiny_bundle, emote_table=table)
    assert custom.prepare("xqcL LULW") == "love LULW"


# --- the cache -----------------------------------------------------------------------------


def test_repeats_hit_the_cache_with_identical_scores(tiny_bundle: Path) -> None:
    scorer = Scorer.open(tiny_bundle)
    first = scorer.score(["W", "LULW", "W"])
    assert scorer.cache_info().misses == 2  # "W" twice in one call is scored once
    assert scorer.cache_info().hits == 1
    again = scorer.score(["LULW", "W"])
    assert scorer.cache_info().hits == 3
    assert np.array_equal(again, first[[1, 0]])
    assert np.array_equal(first[0], first[2])


def test_cache_is_keyed_by_the_prepared_text(tiny_bundle: Path) -> None:
    scorer = Scorer.open(tiny_bundle)
    a = scorer.score(["@alice hi  there"])
    b = scorer.score(["@bob hi there"])  # same prepared text: "@user hi there"
    assert np.array_equal(a, b)
    assert scorer.cache_info().hits == 1


def test_cache_is_bounded_lru(tiny_bundle: Path) -> None:
    scorer = Scorer.open(tiny_bundle, cache_size=2)
    scorer.score(["a"])
    scorer.score(["b"])
    scorer.score(["a"])  # refreshes "a"
    scorer.score(["c"])  # evicts "b", the least recently used
    assert scorer.cache_info().currsize == 2
    before = scorer.cache_info().hits
    scorer.score(["a"])
    assert scorer.cache_info().hits == before + 1
    scorer.score(["b"])
    assert scorer.cache_info().hits == before + 1


def test_cache_off_scores_every_text(uncached: Scorer) -> None:
    before = uncached.cache_info()
    uncached.score(["W", "W", "W"])
    after = uncached.cache_info()
    assert (after.hits, after.misses - before.misses, after.currsize) == (0, 3, 0)


def test_cached_rows_cannot_be_changed_by_callers(tiny_bundle: Path) -> None:
    scorer = Scorer.open(tiny_bundle)
    out = scorer.score(["W"])
    out[:] = 5.0
    assert scorer.score(["W"]).max() <= 1.0


# --- batching ------------------------------------------------------------------------------


def test_run_stats_count_real_and_padded_tokens(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    scorer = Scorer(bundle, cache_size=0, max_batch_sequences=2, max_batch_tokens=999)
    texts = ["a", "a b c d e f g h", "a b", "a b c d e f g h i j"]
    lengths = sorted(len(scorer.token_ids(t)) for t in texts)
    scorer.score(texts)
    stats = scorer.run_stats()
    assert (stats.batches, stats.sequences, stats.tokens) == (2, 4, sum(lengths))
    # Sorted, so the two short texts share a batch and the two long ones the other.
    assert stats.padded_tokens == 2 * lengths[1] + 2 * lengths[3]


def test_plan_batches_respects_limits_and_covers_everything() -> None:
    rng = random.Random(3)
    lengths = [rng.randint(2, 130) for _ in range(500)]
    plan = plan_batches(lengths, max_sequences=64, max_tokens=2048)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(500))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for batch in plan:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert len(batch) <= 64
        assert len(batch) == 1 or padded <= 2048
        assert len(batch) == 1 or padded <= 1.25 * sum(lengths[i] for i in batch)


def test_plan_batches_cuts_where_padding_would_dominate() -> None:
    # Thirty 6-token texts and one of 60: the long one must not pad the others to 60.
    lengths = [6] * 30 + [60]
    assert plan_batches(lengths, max_sequences=64, max_tokens=10_000) == [list(range(30)), [30]]
    # Without the cap they share one batch, 1,860 padded tokens for 240 real ones.
    assert len(plan_batches(lengths, max_sequences=64, max_tokens=10_000, max_padding=99)) == 1


def test_plan_batches_gives_an_oversized_sequence_its_own_batch() -> None:
    assert plan_batches([3, 5000, 4], max_sequences=8, max_tokens=100) == [[0, 2], [1]]


def test_plan_is_a_function_of_the_texts_not_their_order() -> None:
    texts = ["b", "a", "c", "dd", "ee"]
    lengths = [3, 3, 3, 4, 4]
    plan = plan_batches(lengths, max_sequences=2, tie_keys=texts)
    assert [[texts[i] for i in batch] for batch in plan] == [["a", "b"], ["c", "dd"], ["ee"]]


def test_sigmoid_is_stable_and_exact_enough() -> None:
    x = np.array([[-1000.0, -20.0, -1.5, 0.0, 0.5, 20.0, 1000.0]], dtype=np.float32)
    y = sigmoid(x)  # must not warn about overflow (warnings are errors here)
    assert y.dtype == np.float32
    expected = [0.0, 2.0611537e-09, 0.18242552, 0.5, 0.62245933, 1.0, 1.0]
    assert np.allclose(y, expected, atol=1e-7, rtol=1e-6)


def test_shuffled_input_gives_bit_identical_scores(uncached: Scorer) -> None:
    # Distinct texts: with the cache off, copies of one text may straddle a batch boundary,
    # and which copy lands in which batch then depends on the input order.
    texts = list(dict.fromkeys(chat_corpus(400, seed=1)))
    assert len(texts) > 2 * 64
    together = uncached.score(texts)
    order = list(range(len(texts)))
    random.Random(2).shuffle(order)
    shuffled = uncached.score([texts[i] for i in order])
    restored = np.empty_like(shuffled)
    restored[order] = shuffled
    assert np.array_equal(restored, together)


def test_one_at_a_time_and_all_at_once_agree(uncached: Scorer, tiny_bundle: Path) -> None:
    # Slow chat: the agent scores each message as it comes; busy chat: large sorted batches.
    texts = chat_corpus(200, seed=4)
    one_by_one = np.vstack([uncached.score([t]) for t in texts])
    together = uncached.score(texts)
    diff = np.abs(one_by_one - together)
    assert diff.max() <= BATCH_MAX_DIFF, f"max abs diff {diff.max():.4f}"
    assert diff.mean() <= BATCH_MEAN_DIFF, f"mean abs diff {diff.mean():.5f}"
    # A scorer limited to batches of one runs exactly the one-at-a-time path.
    single = Scorer(uncached.bundle, cache_size=0, max_batch_sequences=1)
    assert np.array_equal(single.score(texts), one_by_one)


def test_with_the_cache_a_text_keeps_its_first_score_in_any_batch(tiny_bundle: Path) -> None:
    scorer = Scorer.open(tiny_bundle)
    texts = chat_corpus(120, seed=5)
    one_by_one = np.vstack([scorer.score([t]) for t in texts])
    assert np.array_equal(scorer.score(texts), one_by_one)
    assert np.array_equal(scorer.score(list(reversed(texts))), one_by_one[::-1])


def test_usable_from_worker_threads(tiny_bundle: Path) -> None:
    scorer = Scorer.open(tiny_bundle, cache_size=0)
    texts = chat_corpus(40, seed=6)
    expected = scorer.score(texts)
    start = threading.Barrier(4)

    def work(_: int) -> np.ndarray:
        start.wait(timeout=30)
        return scorer.score(texts)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4), timeout=120))
    for result in results:
        assert np.array_equal(result, expected)


# --- agreement with PyTorch ----------------------------------------------------------------


def test_int8_scorer_agrees_with_the_pytorch_model(tiny_bundle: Path, tiny_source: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    scorer = Scorer.open(tiny_bundle, cache_size=0)
    texts = [*CHAT, *chat_corpus(60, seed=7), *BAD_TEXTS]
    prepared = [scorer.prepare(t) for t in texts]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_source))
    model = transformers.RobertaForSequenceClassification.from_pretrained(str(tiny_source))
    model.eval()
    with torch.no_grad():
        batch = tokenizer(
            prepared,
            truncation=True,
            max_length=scorer.max_length,
            padding=True,
            return_tensors="pt",
        )
        reference = torch.sigmoid(model(**batch).logits).numpy()
    # The bundle's tokenizer.json reads texts exactly as the source tokenizer does.
    for text, ids, mask in zip(prepared, batch["input_ids"], batch["attention_mask"], strict=True):
        assert scorer.token_ids(text) == ids[mask.bool()].tolist()
    ours = scorer.score(texts)
    diff = np.abs(ours - reference)
    assert diff.max() <= PYTORCH_MAX_DIFF, f"max abs diff {diff.max():.4f}"
    assert diff.mean() <= PYTORCH_MEAN_DIFF, f"mean abs diff {diff.mean():.5f}"
    # Quantisation noise must not decide what the model thinks most texts are about.
    assert (ours.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.85


# --- refused bundles -----------------------------------------------------------------------


def test_tampered_model_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="sha256") as info:
        Scorer.open(bundle)
    assert "\n" not in str(info.value)
    assert "export-model" in str(info.value)


def test_truncated_tokenizer_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    text = (bundle / TOKENIZER_FILE).read_bytes()
    (bundle / TOKENIZER_FILE).write_bytes(text[: len(text) // 2])
    with pytest.raises(ModelBundleError, match="truncated"):
        Scorer.open(bundle)


def test_corrupt_model_that_passes_its_checksum_gives_one_line(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    (bundle / MODEL_FILE).write_bytes(b"\x08\x07not an onnx model" * 100)
    rewrite_manifest_checksums(bundle)
    with pytest.raises(ModelBundleError, match="onnxruntime") as info:
        Scorer.open(bundle)
    assert "\n" not in str(info.value)
    assert str(bundle / MODEL_FILE) in str(info.value)


def test_corrupt_tokenizer_that_passes_its_checksum_gives_one_line(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    (bundle / TOKENIZER_FILE).write_text('{"version": "1.0", "model": 7}', encoding="utf-8")
    rewrite_manifest_checksums(bundle)
    with pytest.raises(ModelBundleError, match="tokenizer") as info:
        Scorer.open(bundle)
    assert "\n" not in str(info.value)


def test_missing_bundle_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ModelBundleError, match="export-model"):
        Scorer.open(tmp_path / "nowhere")
