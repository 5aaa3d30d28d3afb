"""The PyInstaller executable: build it (one folder), run `--version` and the headless demo.

The build takes about 4 minutes on 2 shared cores, so it runs only when asked:
`CAPTAFLOW_BUILD_EXE=1 python -m pytest tests/test_packaging.py` (CI sets it), or
`CAPTAFLOW_EXE=dist/captaflow/captaflow` to test an executable built before. The spec's
pure parts (what is excluded, what the smoke script checks) are tested every time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = os.environ.get("CAPTAFLOW_BUILD_EXE") == "1"


def test_the_spec_keeps_the_export_tooling_out() -> None:
    spec = (ROOT / "pyinstaller.spec").read_text(encoding="utf-8")
    excludes = re.search(r"excludes = \[(.*?)\n\]", spec, re.S)
    assert excludes is not None
    names = set(re.findall(r'"([\w.]+)"', excludes.group(1)))
    assert {"torch", "transformers", "optimum", "onnx", "model_export", "tkinter"} <= names
    assert "onnxruntime" not in names and "tokenizers" not in names
    assert 'collect_data_files("agent", includes=["data/*"])' in spec
    assert (ROOT / "packaging" / "icons" / "captaflow.ico").is_file()


@pytest.fixture(scope="module")
def built_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("CAPTAFLOW_EXE")
    if prebuilt:  # an executable built earlier by packaging/build.py: test it as it is
        return Path(prebuilt)
    if not BUILD:
        pytest.skip("set CAPTAFLOW_BUILD_EXE=1 to build the executable (about 4 minutes)")
    if shutil.which("pyinstaller") is None and not _has_pyinstaller():
        pytest.skip("PyInstaller is not installed (pip install -e '.[package]')")
    out = tmp_path_factory.mktemp("exe")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "packaging" / "build.py"),
            "--dist",
            str(out / "dist"),
            "--work",
            str(out / "work"),
        ],
        cwd=ROOT,
        check=True,
        timeout=1200,
    )
    exe = out / "dist" / "captaflow" / ("captaflow.exe" if sys.platform == "win32" else "captaflow")
    assert exe.is_file()
    return exe


def _has_pyinstaller() -> bool:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        return False
    return True


def exe_env(tmp_path: Path) -> dict[str, str]:
    env = dict(
        os.environ,
        CAPTAFLOW_DATA_DIR=str(tmp_path / "data"),
        CAPTAFLOW_CONFIG=str(tmp_path / "config.toml"),
        CAPTAFLOW_NO_KEYRING="1",
    )
    env.pop("DISPLAY", None)
    # The exe must not lean on this Python's packages.
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.slow
def test_the_executable_says_its_version(built_exe: Path, tmp_path: Path) -> None:
    from agent import __version__

    done = subprocess.run(
        [str(built_exe), "--version"],
        env=exe_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert __version__ in done.stdout
    # Nothing of the export tooling got in.
    internal = built_exe.parent / "_internal"
    for heavy in ("torch", "transformers", "optimum", "onnx"):
        assert not (internal / heavy).exists(), heavy


@pytest.mark.slow
def test_the_executable_explains_export_model(built_exe: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(built_exe), "export-model", "--tiny"],
        env=exe_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "pip install" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_executable_runs_the_demo_headless(
    built_exe: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("the smoke script needs bash")
    done = subprocess.run(
        ["bash", str(ROOT / "packaging" / "smoke.sh"), str(built_exe), str(tiny_bundle)],
        env=exe_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sealed part(s)" in done.stdout and "smoke: ok" in done.stdout
