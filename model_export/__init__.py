"""The one-time export: Hugging Face model -> fp32 ONNX -> fused -> outliers migrated ->
int8 -> parity through the scorer -> model bundle.

`python -m model_export --out DIR` (or `captaflow export-model`) runs it; `--tiny`,
`--random-base` and `--stand-in` (the trained-like stand-in, `model_export.standin`) run the
same path on locally built stand-ins.
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
