"""Shared fixtures. Fakes here stand in for remote peers only, never for our own code."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"{TESTDATA} is absent (it ships beside the repository in CI, not in a clone)")
    return TESTDATA
