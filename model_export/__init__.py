"""The one-time export: Hugging Face model -> ONNX -> fused -> int8 -> model bundle.

`python -m model_export --out DIR` (or `captaflow export-model`) runs it; `--tiny` and
`--random-base` run the same path on locally built random-weight stand-ins.
"""

from __future__ import annotations

from model_export.export import (
    DEFAULT_MAX_LENGTH,
    QuantizationSettings,
    StageClock,
    default_model_dir,
    export_bundle,
)
from model_export.tiny import build_random_base_source, build_tiny_source

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "QuantizationSettings",
    "StageClock",
    "build_random_base_source",
    "build_tiny_source",
    "default_model_dir",
    "export_bundle",
]
