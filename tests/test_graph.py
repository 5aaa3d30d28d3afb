"""The light export path: HF directories written with numpy, graphs written with onnx + numpy.

The graph built from the safetensors is checked against the PyTorch path it replaces: the
logits of transformers' eager RoBERTa on the same directory (max |Δ| ≤ 1e-4, same top
label), and the fused operators onnxruntime's optimizer makes of optimum's export of the
same model. Tests that need torch, transformers or optimum skip when they are absent; the
rest, and the no-PyTorch export itself, run on the export extra alone.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

from agent.bundle import load_bundle
from agent.errors import ExportError
from agent.scorer import KNOWN_INPUTS
from agent.vocab import LABELS
from model_export.graph import build_fp32_onnx, check_fp32_graph, numpy_logits, read_config
from model_export.hfdir import (
    load_tokenizer,
    roberta_config,
    roberta_tensor_shapes,
    write_config,
    write_random_weights,
    write_safetensors,
)
from model_export.parity_texts import PARITY_TEXTS
from model_export.tiny import TINY_LABEL, TINY_MODEL_ID, build_tiny_source

ROOT = Path(__file__).resolve().parents[1]
HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
HAVE_OPTIMUM = HAVE_TORCH and importlib.util.find_spec("optimum") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch + transformers")
needs_optimum = pytest.mark.skipif(not HAVE_OPTIMUM, reason="needs torch + optimum")

TEXTS = (
    *PARITY_TEXTS,
    "HYPERS HYPERS HYPERS",
    "@somebody 🤣🤣 nah",
    "<s> literal specials </s> and a <mask>",
    "   ",
    "x" * 600,
)
MAX_LENGTH = 128
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_source(tmp_path_factory.mktemp("light") / "source", seed=3)


@pytest.fixture(scope="module")
def light_onnx(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fp32_onnx(source, tmp_path_factory.mktemp("light-onnx") / "model.onnx")


def _encode(source: Path, texts: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    tokenizer = load_tokenizer(source)
    tokenizer.enable_truncation(MAX_LENGTH)
    encodings = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), 1, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _run(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], feeds)[0])


def _torch_logits(source: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        source, attn_implementation="eager"
    ).eval()
    with torch.inference_mode():
        return (
            model(
                input_ids=torch.from_numpy(feeds["input_ids"]),
                attention_mask=torch.from_numpy(feeds["attention_mask"]),
            )
            .logits.double()
            .numpy()
        )


# --- the graph's interface ------------------------------------------------------------------


def test_graph_has_the_bundle_interface(light_onnx: Path) -> None:
    model = onnx.load(str(light_onnx), load_external_data=False)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]
    assert set(inputs) <= set(KNOWN_INPUTS)
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor_type.shape.dim] == ["batch_size", "sequence_length"]
    (output,) = model.graph.output
    assert output.name == "logits"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = output.type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value) == ("batch_size", len(LABELS))
    # The weights are outside model.onnx, in the external data file written as they streamed.
    data = light_onnx.with_name("model.onnx.data")
    assert data.stat().st_size > light_onnx.stat().st_size
    onnx.checker.check_model(str(light_onnx))


def test_padding_and_batching_do_not_change_a_text_s_logits(source: Path, light_onnx: Path) -> None:
    texts = ["lol", "this is the best stream ever, what a play", "😂😂😂"]
    batched = _run(light_onnx, _encode(source, texts))
    for row, text in enumerate(texts):
        alone = _run(light_onnx, _encode(source, [text]))
        np.testing.assert_allclose(alone[0], batched[row], atol=1e-5)


# --- against the PyTorch path ---------------------------------------------------------------


@needs_torch
def test_logits_match_pytorch_within_1e_4_with_the_same_top_label(
    source: Path, light_onnx: Path
) -> None:
    feeds = _encode(source, TEXTS)
    expected = _torch_logits(source, feeds)
    got = _run(light_onnx, feeds)
    assert got.shape == (len(TEXTS), len(LABELS))
    assert float(np.abs(got - expected).max()) <= LOGIT_TOLERANCE
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert float(expected.std()) > 0.1  # the comparison is of outputs that actually differ


def test_graph_matches_an_independent_numpy_forward_pass(source: Path, light_onnx: Path) -> None:
    feeds = _encode(source, TEXTS)
    expected = numpy_logits(source, feeds["input_ids"], feeds["attention_mask"])
    assert float(np.abs(_run(light_onnx, feeds) - expected).max()) <= LOGIT_TOLERANCE


@needs_torch
def test_numpy_forward_pass_matches_pytorch(source: Path) -> None:
    feeds = _encode(source, TEXTS)
    expected = _torch_logits(source, feeds)
    got = numpy_logits(source, feeds["input_ids"], feeds["attention_mask"])
    assert float(np.abs(got - expected).max()) <= LOGIT_TOLERANCE


def test_the_export_s_graph_check_catches_a_wrong_graph(
    source: Path, light_onnx: Path, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(source)
    check = check_fp32_graph(source, light_onnx, tokenizer, TEXTS[:6], MAX_LENGTH)
    assert check["texts"] == 6 and check["max_abs_logit_diff"] <= LOGIT_TOLERANCE
    # The graph of other weights (another seed) stands in for a graph the builder got wrong.
    other = build_tiny_source(tmp_path / "other", seed=4)
    wrong = build_fp32_onnx(other, tmp_path / "wrong" / "model.onnx")
    with pytest.raises(ExportError, match="differs from a numpy forward pass"):
        check_fp32_graph(source, wrong, tokenizer, TEXTS[:6], MAX_LENGTH)


@needs_torch
def test_tokenizer_matches_transformers(source: Path) -> None:
    from transformers import AutoTokenizer, RobertaTokenizerFast

    from_dir = AutoTokenizer.from_pretrained(source)
    from_files = RobertaTokenizerFast(
        vocab_file=str(source / "vocab.json"), merges_file=str(source / "merges.txt")
    )
    ours = Tokenizer.from_file(str(source / "tokenizer.json"))
    rebuilt = load_tokenizer_without_json(source)
    for text in TEXTS:
        expected = from_files(text)["input_ids"]
        assert from_dir(text)["input_ids"] == expected
        assert ours.encode(text).ids == expected
        assert rebuilt.encode(text).ids == expected


def load_tokenizer_without_json(source: Path) -> Tokenizer:
    """load_tokenizer's fallback for a repository that ships vocab.json + merges.txt only."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(source / name, Path(scratch) / name)
        return load_tokenizer(Path(scratch))


def _fused(
    model_path: Path, config: dict, opt_level: int | None = None, choices: dict | None = None
) -> tuple[dict[str, int], Counter[str]]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name, value in (choices or {}).items():
        setattr(options, name, value)
    optimized = optimize_model(
        str(model_path),
        model_type="bert",
        num_heads=config["num_attention_heads"],
        hidden_size=config["hidden_size"],
        opt_level=opt_level,
        optimization_options=options,
    )
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return stats, Counter(node.op_type for node in optimized.model.graph.node)


@needs_optimum
def test_onnxruntime_fuses_it_like_the_optimum_export(
    source: Path, light_onnx: Path, tmp_path: Path
) -> None:
    from model_export.export import _export_onnx, _load_source

    tokenizer, model = _load_source(str(source), threads=1)
    with warnings.catch_warnings():  # torch's exporter warns about its own internals
        warnings.simplefilter("ignore")
        optimum_onnx = _export_onnx(model, tokenizer, tmp_path / "optimum")
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    # The light path fuses with opt_level 0 (no onnxruntime pass, no torch import), the
    # optimum path with the optimizer's default; both must give the same graph.
    ours, our_ops = _fused(light_onnx, config, opt_level=0)
    assert _fused(light_onnx, config) == (ours, our_ops)
    theirs, their_ops = _fused(optimum_onnx, config)
    assert ours == theirs
    layers = config["num_hidden_layers"]
    assert ours["Attention"] == layers and ours["BiasGelu"] == layers
    assert ours["SkipLayerNormalization"] == 2 * layers and ours["LayerNormalization"] == 1
    # Every node that does arithmetic is the same; what differs is only how optimum computes
    # the all-zero token type ids (Shape/Slice/Expand/Where), which this graph folds away.
    compute = (
        *("Attention", "BiasGelu", "SkipLayerNormalization", "LayerNormalization"),
        *("MatMul", "Gemm", "Tanh", "Add", "CumSum", "ReduceSum"),
    )
    assert {op: our_ops[op] for op in compute} == {op: their_ops[op] for op in compute}
    assert set(our_ops) <= set(their_ops)
    # And with the fusions the export picks (model_export.export.FUSION_CHOICES).
    from model_export.export import FUSION_CHOICES

    ours, our_ops = _fused(light_onnx, config, opt_level=0, choices=FUSION_CHOICES)
    theirs, their_ops = _fused(optimum_onnx, config, choices=FUSION_CHOICES)
    assert ours == theirs
    assert set(our_ops) <= set(their_ops)
    assert {op: n for op, n in our_ops.items() if op in ours or op in compute} == {
        op: n for op, n in their_ops.items() if op in ours or op in compute
    }
    feeds = _encode(source, TEXTS)
    np.testing.assert_allclose(_run(light_onnx, feeds), _run(optimum_onnx, feeds), atol=1e-5)


@needs_torch
def test_a_pytorch_bin_checkpoint_builds_the_same_graph(
    source: Path, light_onnx: Path, tmp_path: Path
) -> None:
    import shutil

    import torch

    only_bin = tmp_path / "bin"
    only_bin.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(source / name, only_bin / name)
    # What save_pretrained used to write: model.state_dict(), an OrderedDict with _metadata,
    # plus the position_ids buffer older transformers kept (int64, ignored by the graph).
    state: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    with safe_open(str(source / "model.safetensors"), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118
            state[name] = handle.get_tensor(name)
    state["roberta.embeddings.position_ids"] = torch.arange(130).expand((1, -1))
    state._metadata = collections.OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    # A transposed view, as some checkpoints hold: the reader must honour strides.
    state["classifier.dense.weight"] = state["classifier.dense.weight"].t().contiguous().t()
    torch.save(state, only_bin / "pytorch_model.bin")
    graph = build_fp32_onnx(only_bin, tmp_path / "from-bin" / "model.onnx")
    feeds = _encode(source, TEXTS[:10])
    np.testing.assert_array_equal(_run(graph, feeds), _run(light_onnx, feeds))


# --- the no-PyTorch export ------------------------------------------------------------------


# Runs the export as if torch, transformers and optimum were not installed: the path finder
# is wrapped so they are simply not found (find_spec gives None, import raises
# ModuleNotFoundError), as on a machine with only the export extra.
_NO_TORCH = """
import importlib.abc, importlib.machinery, sys
HEAVY = ("torch", "transformers", "optimum")
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    def find_distributions(self, *args, **kwargs):
        for dist in importlib.machinery.PathFinder.find_distributions(*args, **kwargs):
            if (dist.metadata["Name"] or "").lower() not in HEAVY:
                yield dist
sys.meta_path[:] = [
    Absent() if f is importlib.machinery.PathFinder else f for f in sys.meta_path
]
from model_export.cli import main
status = main(sys.argv[1:])
assert not set(HEAVY) & set(sys.modules), "a heavy module was imported"
raise SystemExit(status)
"""


def test_tiny_export_runs_without_pytorch(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "--tiny", "--out", str(out), "--threads", "1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Model producer not matched" not in result.stderr
    manifest = load_bundle(out).manifest
    assert manifest.source_model_id == TINY_MODEL_ID
    assert manifest.test_model == TINY_LABEL
    assert manifest.parity["reference"].startswith("the fp32 ONNX graph")
    assert manifest.optimization["fp32_exporter"].startswith("model_export.graph")
    assert manifest.optimization["fp32_check"]["max_abs_logit_diff"] <= LOGIT_TOLERANCE
    assert manifest.optimization["fused_operators"]["MultiHeadAttention"] == 2


def test_via_optimum_without_pytorch_says_what_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "--tiny", "--via", "optimum", "--out", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --via optimum needs torch, transformers, optimum: run `pip install "
        "'captaflow[export-torch]'`, or drop --via optimum (the light export needs no PyTorch)"
    )


def test_the_real_export_fetches_from_the_hub_cache_and_takes_the_light_path(
    tmp_path: Path,
) -> None:
    """`python -m model_export --model-id ...` (what a user runs) without torch: the files come
    through huggingface_hub (offline here, from a cache laid out as the Hub's), the graph from
    model_export.graph. Parity is skipped: random weights cannot meet the real tolerance."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--captaflow--fake-emotions"
    build_tiny_source(repo / "snapshots" / commit, seed=5)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    out = tmp_path / "bundle"
    args = ["--model-id", "captaflow/fake-emotions", "--out", str(out), "--skip-parity"]
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *args, "--threads", "1"],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HUB_OFFLINE": "1",
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "downloading captaflow/fake-emotions" in result.stderr
    assert "no PyTorch" in result.stderr
    manifest = load_bundle(out).manifest
    assert (manifest.source_model_id, manifest.source_revision) == (
        "captaflow/fake-emotions",
        commit,
    )
    assert manifest.test_model is None
    assert manifest.optimization["fp32_exporter"].startswith("model_export.graph")
    assert manifest.optimization["fp32_check"]["max_abs_logit_diff"] <= LOGIT_TOLERANCE


@needs_optimum
def test_via_optimum_still_exports_and_checks_against_pytorch(tmp_path: Path) -> None:
    from model_export.cli import main as export_main

    out = tmp_path / "bundle"
    assert export_main(["--tiny", "--via", "optimum", "--out", str(out), "--threads", "1"]) == 0
    manifest = load_bundle(out).manifest
    # int8 is measured against the fp32 graph, and that graph against PyTorch.
    assert manifest.parity["fp32_onnx_vs_pytorch_max_abs_diff"] < 1e-3
    assert manifest.optimization["fp32_exporter"].startswith("optimum")
    assert manifest.test_model == TINY_LABEL


# --- the numpy HF directory -----------------------------------------------------------------


def test_hf_dir_is_what_save_pretrained_writes(source: Path) -> None:
    names = {p.name for p in source.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= names
    config = read_config(source)
    assert tuple(config.id2label.values()) == LABELS
    assert config.pad_token_id == 1
    with safe_open(str(source / "model.safetensors"), framework="numpy") as handle:
        assert handle.metadata() == {"format": "pt"}
        raw = json.loads((source / "config.json").read_text(encoding="utf-8"))
        shapes = roberta_tensor_shapes(raw)
        assert sorted(handle.keys()) == sorted(shapes)
        for name, shape in shapes.items():
            assert handle.get_slice(name).get_shape() == list(shape)
        words = handle.get_tensor("roberta.embeddings.word_embeddings.weight")
        assert not words[1].any()  # the padding row, as nn.Embedding(padding_idx=1)
        assert (handle.get_tensor("roberta.embeddings.LayerNorm.weight") == 1).all()
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    assert [tokenizer.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]


def test_weights_are_seeded_and_the_transform_applies(tmp_path: Path) -> None:
    config = roberta_config(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=20,
    )
    paths = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / name).mkdir()
        paths.append(write_random_weights(tmp_path / name, config, seed))
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b and a != c

    def spread(name: str, array: np.ndarray) -> np.ndarray:
        return array * 10 if name == "classifier.out_proj.weight" else array

    (tmp_path / "t").mkdir()
    scaled = write_random_weights(tmp_path / "t", config, 1, transform=spread)
    with safe_open(str(paths[0]), "numpy") as plain, safe_open(str(scaled), "numpy") as big:
        name = "classifier.out_proj.weight"
        np.testing.assert_allclose(big.get_tensor(name), plain.get_tensor(name) * 10)

    def bad(name: str, array: np.ndarray) -> np.ndarray:
        return array[:1]

    with pytest.raises(ExportError, match="keep shapes"):
        write_random_weights(tmp_path / "t", config, 1, transform=bad)


# --- what the builder refuses ---------------------------------------------------------------


def _small_dir(tmp_path: Path, **changes: object) -> Path:
    directory = tmp_path / "small"
    directory.mkdir()
    config = roberta_config(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=20,
    )
    write_config(directory, {**config, **changes})
    write_random_weights(directory, config, 0)
    return directory


def test_missing_or_misshapen_tensors_are_named(tmp_path: Path) -> None:
    directory = _small_dir(tmp_path)
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    shapes = roberta_tensor_shapes(raw)
    del shapes["classifier.out_proj.bias"]
    write_safetensors(directory / "model.safetensors", shapes, lambda n, s: np.zeros(s))
    with pytest.raises(ExportError, match=r"no tensor 'classifier\.out_proj\.bias'"):
        build_fp32_onnx(directory, tmp_path / "out" / "model.onnx")

    raw["intermediate_size"] = 32  # config.json that does not match the weights
    write_config(directory, raw)
    write_random_weights(directory, {**raw, "intermediate_size": 16}, 0)
    with pytest.raises(ExportError, match=r"intermediate\.dense\.weight.*shape"):
        build_fp32_onnx(directory, tmp_path / "out" / "model.onnx")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model_type": "bert"}, "RoBERTa-family graphs only: pass --via optimum"),
        ({"hidden_act": "gelu_new"}, "exact GELU only: pass --via optimum"),
        ({"num_attention_heads": 3}, "not a multiple"),
        ({"position_embedding_type": "relative_key"}, "absolute ones only"),
    ],
)
def test_unsupported_configs_say_use_optimum(
    tmp_path: Path, changes: dict[str, object], expected: str
) -> None:
    directory = _small_dir(tmp_path, **changes)
    with pytest.raises(ExportError, match=expected):
        build_fp32_onnx(directory, tmp_path / "out" / "model.onnx")


def test_no_weights_and_no_config_are_one_line_errors(tmp_path: Path) -> None:
    directory = _small_dir(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(ExportError, match=r"holds no model\.safetensors"):
        build_fp32_onnx(directory, tmp_path / "out" / "model.onnx")
    (directory / "config.json").unlink()
    with pytest.raises(ExportError, match=r"config\.json is missing"):
        read_config(directory)


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    directory = _small_dir(tmp_path)
    (directory / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with zipfile.ZipFile(directory / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ExportError, match="refusing to unpickle"):
        build_fp32_onnx(directory, tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "pwned").exists()


# --- fusion and pre-processing with the weights left on disk (model_export.lean) -----------


def _tensors(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))  # external data resolved beside the file
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def _same_graph(a: Path, b: Path) -> None:
    ga, gb = (
        onnx.load(str(a), load_external_data=False),
        onnx.load(str(b), load_external_data=False),
    )
    assert [(n.op_type, list(n.input), list(n.output)) for n in ga.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in gb.graph.node
    ]
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name, value in ta.items():
        np.testing.assert_array_equal(value, tb[name], err_msg=name)


def test_lean_fusion_and_pre_processing_give_the_ordinary_graphs(
    source: Path, tmp_path: Path
) -> None:
    from onnxruntime.quantization import quant_pre_process
    from onnxruntime.transformers.optimizer import optimize_model

    from model_export.lean import fuse_bert, has_external_data, pre_process

    fp32 = build_fp32_onnx(source, tmp_path / "model.fp32.onnx")
    assert has_external_data(fp32)
    config = read_config(source)
    options = {
        "model_type": "bert",
        "num_heads": config.num_attention_heads,
        "hidden_size": config.hidden_size,
        "opt_level": 0,
    }
    lean = fuse_bert(fp32, tmp_path / "model.fused.onnx", **options)
    ordinary = tmp_path / "ordinary"
    ordinary.mkdir()
    reference = optimize_model(str(fp32), **options)
    reference.save_model_to_file(str(ordinary / "model.fused.onnx"))
    assert lean.get_fused_operator_statistics() == reference.get_fused_operator_statistics()
    # The lean output keeps its unchanged weights in the fp32 graph's data file.
    assert has_external_data(tmp_path / "model.fused.onnx")
    assert not has_external_data(ordinary / "model.fused.onnx")
    _same_graph(tmp_path / "model.fused.onnx", ordinary / "model.fused.onnx")

    pre_process(
        tmp_path / "model.fused.onnx",
        tmp_path / "model.prepared.onnx",
        skip_optimization=True,
        auto_merge=True,
    )
    quant_pre_process(
        str(ordinary / "model.fused.onnx"),
        str(ordinary / "model.prepared.onnx"),
        skip_optimization=True,
        auto_merge=True,
    )
    _same_graph(tmp_path / "model.prepared.onnx", ordinary / "model.prepared.onnx")
    lean_model = onnx.load(str(tmp_path / "model.prepared.onnx"), load_external_data=False)
    ordinary_model = onnx.load(str(ordinary / "model.prepared.onnx"), load_external_data=False)
    assert {v.name: v.type for v in lean_model.graph.value_info} == {
        v.name: v.type for v in ordinary_model.graph.value_info
    }
    assert {p.key: p.value for p in lean_model.metadata_props} == {
        p.key: p.value for p in ordinary_model.metadata_props
    }
    feeds = _encode(source, TEXTS[:8])
    np.testing.assert_array_equal(
        _run(tmp_path / "model.prepared.onnx", feeds), _run(ordinary / "model.prepared.onnx", feeds)
    )

    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    from model_export.lean import quantize_dynamic

    options = {"weight_type": QuantType.QInt8, "nodes_to_exclude": ["/classifier/dense/Gemm"]}
    quantize_dynamic(tmp_path / "model.prepared.onnx", tmp_path / "int8.onnx", **options)
    ort_quantize_dynamic(
        str(ordinary / "model.prepared.onnx"), str(ordinary / "int8.onnx"), **options
    )
    lean_int8, ordinary_int8 = (onnx.load(str(p / "int8.onnx")) for p in (tmp_path, ordinary))
    assert not has_external_data(tmp_path / "int8.onnx")  # the bundle's model is one file
    _same_graph(tmp_path / "int8.onnx", ordinary / "int8.onnx")
    for model in (lean_int8, ordinary_int8):
        model.graph.ClearField("initializer")  # compared above, tensor for tensor
    assert lean_int8 == ordinary_int8  # value_info, outputs, metadata, opsets


def test_lean_fusion_falls_back_when_the_output_is_elsewhere(
    light_onnx: Path, source: Path, tmp_path: Path
) -> None:
    from model_export.lean import fuse_bert, has_external_data

    config = read_config(source)
    out = tmp_path / "elsewhere" / "model.fused.onnx"
    out.parent.mkdir()
    fuse_bert(
        light_onnx,
        out,
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=0,
    )
    assert not has_external_data(out)  # a whole graph, not one pointing into another folder
    feeds = _encode(source, TEXTS[:4])
    np.testing.assert_allclose(_run(out, feeds), _run(light_onnx, feeds), atol=1e-5)
