"""How closely the int8 model agrees with the original: pure functions over probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.errors import ExportError
from agent.vocab import DEFAULT_DISPLAYED


@dataclass(frozen=True, slots=True)
class ParityTolerance:
    """The largest disagreement an export may have and still be published.

    `max_abs_diff` bounds the worst probability of any label on any text; `max_mean_abs_diff`
    the mean over all texts and labels (what a window's mean reading moves by);
    `min_top_label_agreement` the share of texts whose top emotion among the displayed ones
    is the same (what a chart shows as dominant). Random-weight models (--tiny,
    --random-base) have no trained margins between labels, so for them only the probability
    difference is checked.
    """

    max_abs_diff: float
    min_top_label_agreement: float | None = None
    max_mean_abs_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_mean_abs_diff": self.max_mean_abs_diff,
            "min_top_label_agreement": self.min_top_label_agreement,
        }


# The real model and the trained-like stand-in: a window's mean moves by at most 0.005 on
# average, no probability by more than 0.03, and the dominant displayed emotion is the same
# on at least 99 texts in 100 (the earlier 0.10 / 85% let one window in seven change colour).
REAL_MODEL_TOLERANCE = ParityTolerance(
    max_abs_diff=0.03, min_top_label_agreement=0.99, max_mean_abs_diff=0.005
)
STAND_IN_TOLERANCE = REAL_MODEL_TOLERANCE
RANDOM_MODEL_TOLERANCE = ParityTolerance(
    max_abs_diff=0.10, min_top_label_agreement=None, max_mean_abs_diff=0.02
)


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
    displayed: Sequence[str] = DEFAULT_DISPLAYED,
) -> ParityReport:
    """Compare two (texts x labels) probability matrices row by row.

    Top-label agreement is over the `displayed` labels (those a chart shows), all labels if
    none of them is among `labels`.
    """
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
    shown = [i for i, label in enumerate(labels) if label in displayed] or list(range(len(labels)))
    agreement = np.mean(
        np.argmax(reference[:, shown], axis=1) == np.argmax(candidate[:, shown], axis=1)
    )
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


def parity_problem(report: ParityReport, tolerance: ParityTolerance, what: str) -> str | None:
    """What is out of tolerance in `report`, as one sentence; None when it is within."""
    if report.max_abs_diff > tolerance.max_abs_diff:
        return (
            f"{what} disagrees with the original by {report.max_abs_diff:.4f} "
            f"(tolerance {tolerance.max_abs_diff}) on label {report.worst_label!r} of text "
            f"{report.worst_text[:60]!r} ({report.worst_reference:.4f} vs "
            f"{report.worst_candidate:.4f})"
        )
    mean_limit = tolerance.max_mean_abs_diff
    if mean_limit is not None and report.mean_abs_diff > mean_limit:
        return (
            f"{what} disagrees with the original by {report.mean_abs_diff:.5f} on average "
            f"over {report.texts} texts (tolerance {mean_limit})"
        )
    minimum = tolerance.min_top_label_agreement
    if minimum is not None and report.top_label_agreement < minimum:
        return (
            f"{what} picks the same top emotion as the original on only "
            f"{report.top_label_agreement:.1%} of {report.texts} texts (needs {minimum:.0%})"
        )
    return None


def check_parity(report: ParityReport, tolerance: ParityTolerance, what: str) -> None:
    """Raise ExportError naming the largest difference when `report` is out of tolerance."""
    problem = parity_problem(report, tolerance, what)
    if problem is not None:
        raise ExportError(
            f"{problem}: the export is not published; report this with --debug output"
        )
