"""The model bundle: the contract between the one-time export and the scorer.

A bundle is a directory holding `model.onnx` (int8), `tokenizer.json` and `manifest.json`.
The manifest says where the model came from, the labels in output order, the max length,
how it was quantised, the sha256 of each file and how closely the int8 model agreed with
the original. The agent refuses a bundle whose files or labels do not match it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ModelBundleError
from agent.vocab import LABELS

BUNDLE_FORMAT = "captaflow-model-bundle"
BUNDLE_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (MODEL_FILE, TOKENIZER_FILE)

FIX_HINT = "run `captaflow export-model` again to rebuild it"

# What the graph's first output holds: raw logits (the scorer applies a sigmoid) or
# probabilities already (a graph ending in its own Sigmoid).
OUTPUTS = ("logits", "probabilities")


@dataclass(frozen=True, slots=True)
class QuantizationSettings:
    """How the export quantised the model: chosen before it runs, saved as data.

    `smooth_alpha`: SmoothQuant migration strength (0 keeps the activations' outliers, 1
    moves them all into the weights; None: no migration). `fp32_head`: the classification
    head (it runs on one token per text) stays fp32. `op_types`: what onnxruntime's dynamic
    quantiser may turn into int8; the embedding tables (Gather) are left fp32 on purpose.
    """

    method: str = "dynamic"
    weight_type: str = "QInt8"
    activation_type: str = "QUInt8"
    per_channel: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Attention")
    smooth_alpha: float | None = 0.5
    fp32_head: bool = True
    # Large embedding tables (Gather not quantised) are stored as float16 and cast back to
    # float32 after the look-up: half the size on disk and in memory, ~5e-4 relative error.
    embeddings: str = "float16"

    def __post_init__(self) -> None:
        if self.method != "dynamic":
            raise ValueError(f"quantization method {self.method!r} is not 'dynamic'")
        if self.weight_type not in ("QInt8", "QUInt8"):
            raise ValueError(f"weight_type {self.weight_type!r} is not QInt8 or QUInt8")
        if self.embeddings not in ("float16", "float32"):
            raise ValueError(f"embeddings {self.embeddings!r} is not float16 or float32")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha {self.smooth_alpha} is outside 0..1")

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "weight_type": self.weight_type,
            "activation_type": self.activation_type,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "op_types": list(self.op_types),
            "smooth_alpha": self.smooth_alpha,
            "fp32_head": self.fp32_head,
            "embeddings": self.embeddings,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QuantizationSettings:
        """Read the settings back (older manifests lack the newer keys: their defaults then
        describe what those exports did, i.e. no migration and an int8 head)."""
        alpha = data.get("smooth_alpha")
        return cls(
            method=str(data.get("method", "dynamic")),
            weight_type=str(data.get("weight_type", "QInt8")),
            activation_type=str(data.get("activation_type", "QUInt8")),
            per_channel=bool(data.get("per_channel", False)),
            reduce_range=bool(data.get("reduce_range", False)),
            op_types=tuple(str(x) for x in data.get("op_types", ("MatMul", "Attention", "Gather"))),
            smooth_alpha=None if alpha is None else float(alpha),
            fp32_head=bool(data.get("fp32_head", False)),
            embeddings=str(data.get("embeddings", "float32")),
        )


@dataclass(frozen=True, slots=True)
class ParityFigures:
    """How closely the bundle's int8 model agreed with its fp32 original at export time.

    Measured by the export through the scorer itself (its session options and batching) on
    `texts` chat-like texts. `top_label_agreement` is over the displayed emotions.
    """

    texts: int
    mean_abs_diff: float
    max_abs_diff: float
    top_label_agreement: float
    reference: str
    passed: bool

    def describe(self) -> str:
        return (
            f"mean |dp| {self.mean_abs_diff:.4f}, max {self.max_abs_diff:.4f}, same top "
            f"emotion {self.top_label_agreement:.1%} of {self.texts} texts (vs {self.reference})"
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParityFigures | None:
        """None when the export skipped parity or the manifest predates these figures."""
        try:
            return cls(
                texts=int(data["texts"]),
                mean_abs_diff=float(data["mean_abs_diff"]),
                max_abs_diff=float(data["max_abs_diff"]),
                top_label_agreement=float(data["top_label_agreement"]),
                reference=str(data.get("reference", "the original")),
                passed=bool(data.get("passed", True)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    """What `manifest.json` holds. Validated on creation, so a loaded manifest is usable."""

    source_model_id: str
    source_revision: str
    labels: tuple[str, ...]
    max_length: int
    pad_token_id: int
    files: Mapping[str, Mapping[str, Any]]  # name -> {"sha256": str, "bytes": int}
    quantization: Mapping[str, Any] = field(default_factory=dict)
    optimization: Mapping[str, Any] = field(default_factory=dict)
    parity: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    created_at: str = ""
    problem_type: str = "multi_label_classification"
    # A short label for a test model ("tiny random model", ...); None for the real export.
    test_model: str | None = None
    outputs: str = "logits"

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be a non-empty list of distinct names")
        if not 8 <= self.max_length <= 4096:
            raise ValueError(f"max_length {self.max_length} is outside 8..4096")
        for name in BUNDLE_FILES:
            entry = self.files.get(name)
            if not entry or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"files.{name}.sha256 is missing")
        if self.outputs not in OUTPUTS:
            raise ValueError(f"outputs {self.outputs!r} is not one of {list(OUTPUTS)}")

    @property
    def quantization_settings(self) -> QuantizationSettings:
        """The typed settings the export quantised with (see QuantizationSettings)."""
        return QuantizationSettings.from_json(self.quantization)

    @property
    def parity_figures(self) -> ParityFigures | None:
        """The int8-vs-fp32 figures of the export, for `captaflow status`; None if skipped."""
        return ParityFigures.from_json(self.parity)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "source_model": {"id": self.source_model_id, "revision": self.source_revision},
            "problem_type": self.problem_type,
            "labels": list(self.labels),
            "max_length": self.max_length,
            "pad_token_id": self.pad_token_id,
            "files": {k: dict(v) for k, v in self.files.items()},
            "quantization": dict(self.quantization),
            "optimization": dict(self.optimization),
            "parity": dict(self.parity),
            "versions": dict(self.versions),
            "created_at": self.created_at,
            "test_model": self.test_model,
            "outputs": self.outputs,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        if data.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise ValueError(
                f"format_version {data.get('format_version')!r} is not supported "
                f"(this agent reads {BUNDLE_FORMAT_VERSION})"
            )
        source = data["source_model"]
        return cls(
            source_model_id=str(source["id"]),
            source_revision=str(source.get("revision") or ""),
            labels=tuple(str(x) for x in data["labels"]),
            max_length=int(data["max_length"]),
            pad_token_id=int(data["pad_token_id"]),
            files=data["files"],
            quantization=data.get("quantization", {}),
            optimization=data.get("optimization", {}),
            parity=data.get("parity", {}),
            versions=data.get("versions", {}),
            created_at=str(data.get("created_at", "")),
            problem_type=str(data.get("problem_type", "multi_label_classification")),
            test_model=str(data["test_model"]) if data.get("test_model") else None,
            outputs=str(data.get("outputs", "logits")),
        )


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """A verified bundle (`load_bundle`). The file names are the bundle's own; the export
    points them elsewhere to run its work graphs through the scorer before publishing."""

    path: Path
    manifest: Manifest
    model_file: str = MODEL_FILE
    tokenizer_file: str = TOKENIZER_FILE

    @property
    def model_path(self) -> Path:
        return self.path / self.model_file

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.tokenizer_file

    @property
    def test_model(self) -> str | None:
        """The stand-in's label ("tiny random model", ...), None for the real model."""
        return self.manifest.test_model

    @property
    def parity_figures(self) -> ParityFigures | None:
        return self.manifest.parity_figures

    @property
    def model_id(self) -> str:
        return self.manifest.source_model_id


def model_present(model_dir: Path) -> bool:
    """Cheap first-run check (the agent verifies the bundle's checksums when it starts)."""
    return (model_dir / MANIFEST_FILE).is_file() and (model_dir / MODEL_FILE).is_file()


def load_bundle(path: Path | str, *, verify_checksums: bool = True) -> ModelBundle:
    """Open a bundle, or raise ModelBundleError with one line that says what to do."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelBundleError(
            f"no model bundle at {root}: export the model once with `captaflow export-model` "
            f"(downloads about 500 MB once, needs internet) or pass --model DIR"
        )
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelBundleError(
            f"{manifest_path} is missing, so {root} is not a complete bundle: {FIX_HINT}"
        )
    try:
        manifest = Manifest.from_json(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelBundleError(
            f"{manifest_path} is not a valid manifest ({exc}): {FIX_HINT}"
        ) from exc
    if manifest.labels != LABELS:
        raise ModelBundleError(
            f"the bundle at {root} has labels {list(manifest.labels)}, but CaptaFlow needs the "
            f"11 CardiffNLP emotion labels in order {list(LABELS)}: {FIX_HINT}"
        )
    for name in BUNDLE_FILES:
        file_path = root / name
        if not file_path.is_file():
            raise ModelBundleError(f"{file_path} is missing from the bundle: {FIX_HINT}")
        expected = manifest.files[name]
        size = file_path.stat().st_size
        if "bytes" in expected and int(expected["bytes"]) != size:
            raise ModelBundleError(
                f"{file_path} is {size} bytes but the manifest says {expected['bytes']} "
                f"(truncated or replaced): {FIX_HINT}"
            )
        if verify_checksums and sha256_of(file_path) != expected["sha256"]:
            raise ModelBundleError(
                f"{file_path} does not match its sha256 in the manifest (corrupt or tampered): "
                f"{FIX_HINT}"
            )
    return ModelBundle(path=root, manifest=manifest)


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def publish_bundle(staging: Path, final: Path, manifest: Manifest) -> Path:
    """Write the manifest into a fully built staging directory and move it into place.

    The manifest is written last and the directory appears under its final name in one
    rename, so a half-written bundle never looks complete. An older bundle at `final` is
    replaced only once the new one is ready.
    """
    manifest_tmp = staging / (MANIFEST_FILE + ".tmp")
    with manifest_tmp.open("w", encoding="utf-8") as handle:
        json.dump(manifest.to_json(), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(manifest_tmp, staging / MANIFEST_FILE)
    final = final.expanduser()
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
