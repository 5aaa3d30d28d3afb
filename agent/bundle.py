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

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be a non-empty list of distinct names")
        if not 8 <= self.max_length <= 4096:
            raise ValueError(f"max_length {self.max_length} is outside 8..4096")
        for name in BUNDLE_FILES:
            entry = self.files.get(name)
            if not entry or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"files.{name}.sha256 is missing")

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
        )


@dataclass(frozen=True, slots=True)
class ModelBundle:
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

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
