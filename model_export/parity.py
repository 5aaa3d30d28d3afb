"""How closely the int8 model agrees with the original: pure functions over probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.errors import ExportError


@dataclass(frozen=True, slots=True)
class ParityTolerance:
    """The largest disagreement an export may have and still be published.

    For the real model a probability off by 0.10 can move a window's mean visibly but not
    change which emotion dominates a busy chat; top-label agreement guards the latter.
    Random-weight models (--tiny, --random-base) have no trained margins between labels, so
    for them only the probability difference is checked.
    """

    max_abs_diff: float
    min_top_label_agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "min_top_label_agreement": self.min_top_label_agreement,
        }


REAL_MODEL_TOLERANCE = ParityTolerance(max_abs_diff=0.10, min_top_label_agreement=0.85)
RANDOM_MODEL_TOLERANCE = ParityTolerance(max_abs_diff=0.10, min_top_label_agreement=None)


@dataclass(frozen=True, slots=True)
class ParityReport:
    texts: int
    max_abs_diff: float
    mean_abs_diff: float
    top_label_agreement: float
    worst_text: str
    worst_label: str
    worst_reference: float
    worst_candidate: float

    def to_json(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "max_abs_diff": round(self.max_abs_diff, 6),
            "mean_abs_diff": round(self.mean_abs_diff, 6),
            "top_label_agreement": round(self.top_label_agreement, 6),
            "worst_text": self.worst_text[:80],
            "worst_label": self.worst_label,
        }


def compare_probabilities(
    reference: np.ndarray,
    candidate: np.ndarray,
    texts: Sequence[str],
    labels: Sequence[str],
) -> ParityReport:
    """Compare two (texts x labels) probability matrices row by row."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    expected_shape = (len(texts), len(labels))
    if reference.shape != expected_shape or candidate.shape != expected_shape:
        raise ValueError(
            f"expected probabilities of shape {expected_shape}, "
            f"got {reference.shape} and {candidate.shape}"
        )
    diff = np.abs(reference - candidate)
    row, column = (int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    agreement = np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1))
    return ParityReport(
        texts=len(texts),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        top_label_agreement=float(agreement),
        worst_text=texts[row],
        worst_label=labels[column],
        worst_reference=float(reference[row, column]),
        worst_candidate=float(candidate[row, column]),
    )


def check_parity(report: ParityReport, tolerance: ParityTolerance, what: str) -> None:
    """Raise ExportError naming the largest difference when `report` is out of tolerance."""
    if report.max_abs_diff > tolerance.max_abs_diff:
        raise ExportError(
            f"{what} disagrees with the PyTorch model by {report.max_abs_diff:.4f} "
            f"(tolerance {tolerance.max_abs_diff}) on label {report.worst_label!r} of text "
            f"{report.worst_text[:60]!r} ({report.worst_reference:.4f} vs "
            f"{report.worst_candidate:.4f}): the export is broken, report this with --debug output"
        )
    minimum = tolerance.min_top_label_agreement
    if minimum is not None and report.top_label_agreement < minimum:
        raise ExportError(
            f"{what} picks the same top emotion as the PyTorch model on only "
            f"{report.top_label_agreement:.0%} of {report.texts} texts (needs {minimum:.0%}): "
            f"the export is broken, report this with --debug output"
        )
