"""Readings from a test model say so: in the previews, the report's banner and the tray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.cli import main as cli_main
from agent.model_download import bundle_test_label, model_labels


@pytest.fixture
def labelled_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The tiny bundle with the manifest's `test_model` label (as the export writes it)."""
    copy = tmp_path / "labelled"
    copy.mkdir()
    for name in ("model.onnx", "tokenizer.json", "manifest.json"):
        shutil.copy(tiny_bundle / name, copy / name)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["test_model"] = "tiny random model"
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return copy


def test_the_demo_and_its_report_say_test_model(
    labelled_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert bundle_test_label(labelled_bundle) == "tiny random model"
    monkeypatch.setenv("CAPTAFLOW_CONFIG", str(tmp_path / "c.toml"))
    args = ["--data-dir", str(tmp_path / "data")]
    assert cli_main(["demo", "--model", str(labelled_bundle), *args]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("⚠ TEST MODEL: tiny random model.")
    assert "⚠ TEST MODEL (tiny random model)" in out  # under the summary's heading
    page = (tmp_path / "data" / "reports" / "demo.html").read_text(encoding="utf-8")
    assert "TEST MODEL (tiny random model)" in page
    assert "captaflow/tiny-random-roberta" in page  # the banner names the model


def test_a_real_model_gets_no_warning_but_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    import pandas as pd

    from agent.report import model_banner_html

    session = pd.DataFrame({"model_id": ["cardiffnlp/twitter-roberta-base-emotion-multilabel"]})
    banner = model_banner_html(session, {})
    assert "TEST MODEL" not in banner and "cardiffnlp/twitter-roberta" in banner
    labels = model_labels(tiny_bundle)
    assert list(labels) == ["captaflow/tiny-random-roberta"]
    # An id naming random weights is flagged even without its bundle (older sessions).
    session = pd.DataFrame({"model_id": ["captaflow/tiny-random-roberta"]})
    assert "TEST MODEL (random weights)" in model_banner_html(session, {})
