"""The PyInstaller executable: build it (one folder, the tiny model packed in), run `--version`,
the headless demo with its packed model and with --model, and `model get` from a loopback server.

The build takes about 4 minutes on 2 shared cores, so it runs only when asked:
`CAPTAFLOW_BUILD_EXE=1 python -m pytest tests/test_packaging.py`, or
`CAPTAFLOW_EXE=dist/captaflow/captaflow` to test an executable built before (CI builds it with
`build.py --model build/tiny-model` and sets CAPTAFLOW_EXE_HAS_MODEL=1). The spec's pure
parts (what is excluded, what is packed) are tested every time.
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
    # GTK (the Linux tray's menu) stays out of Windows and macOS builds.
    assert 'if sys.platform != "linux":' in spec and '"gi"' in spec
    assert 'collect_submodules("rich._unicode_data")' in spec


def test_the_spec_packs_only_the_bundle_files_under_the_agreed_name() -> None:
    from agent.paths import BUNDLED_MODEL_NAME

    spec = (ROOT / "pyinstaller.spec").read_text(encoding="utf-8")
    assert 'os.environ.get("CAPTAFLOW_PACK_MODEL", "")' in spec
    assert f'"{BUNDLED_MODEL_NAME}")' in spec
    assert '("manifest.json", "model.onnx", "tokenizer.json")' in spec


def test_build_refuses_a_model_that_is_not_a_bundle(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "build.py"), "--model", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("build.py: --model: ") and done.stderr.count("\n") == 1


def test_the_bundled_model_is_used_when_none_is_set(tmp_path: Path, tiny_bundle: Path) -> None:
    from agent.config import load_settings
    from agent.paths import BUNDLED_MODEL_ENV, bundled_model_dir

    env = {BUNDLED_MODEL_ENV: str(tiny_bundle)}
    assert bundled_model_dir(env) == tiny_bundle
    assert bundled_model_dir({}) is None  # not frozen: nothing packed
    # The settings' default model looks for a packed bundle in the process environment.
    os.environ[BUNDLED_MODEL_ENV] = str(tiny_bundle)
    try:
        settings = load_settings(tmp_path / "c.toml", {"data_dir": tmp_path / "data"})
        assert settings.model.dir == tiny_bundle
        own = tmp_path / "data" / "model"  # one exported or downloaded later wins
        shutil.copytree(tiny_bundle, own, ignore=shutil.ignore_patterns("*.d"))
        settings = load_settings(tmp_path / "c.toml", {"data_dir": tmp_path / "data"})
        assert settings.model.dir == own
        flagged = load_settings(
            tmp_path / "c.toml", {"data_dir": tmp_path / "data", "model.dir": str(tmp_path)}
        )
        assert flagged.model.dir == tmp_path  # --model always wins
    finally:
        del os.environ[BUNDLED_MODEL_ENV]


@pytest.fixture(scope="module")
def built_exe(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
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
            "--model",
            str(tiny_bundle),
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


def _has_packed_model(exe: Path) -> bool:
    if os.environ.get("CAPTAFLOW_EXE"):
        return os.environ.get("CAPTAFLOW_EXE_HAS_MODEL") == "1"
    return True  # the fixture built it with --model


@pytest.mark.slow
def test_the_executable_brings_its_model(built_exe: Path, tmp_path: Path) -> None:
    """No --model, no settings, no export: the demo runs on the model packed in, and seals."""
    if not _has_packed_model(built_exe):
        pytest.skip("this executable was built without --model (CAPTAFLOW_EXE_HAS_MODEL unset)")
    if shutil.which("bash") is None:
        pytest.skip("the smoke script needs bash")
    done = subprocess.run(
        ["bash", str(ROOT / "packaging" / "smoke.sh"), str(built_exe)],
        env=exe_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sealed part(s)" in done.stdout and "smoke: ok" in done.stdout
    internal = built_exe.parent / "_internal"
    assert (internal / "captaflow-model" / "manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.network
def test_the_executable_downloads_a_model_through_a_cut(
    built_exe: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """`captaflow model get` inside the executable: served from 127.0.0.1, cut halfway."""
    import hashlib

    from agent.model_download import make_bundle_archive
    from tests.test_model_download import BundleServer

    archive = make_bundle_archive(tiny_bundle, tmp_path / "m.tar.gz").read_bytes()
    with BundleServer({"/m.tar.gz": archive}) as server:
        server.cut_after = len(archive) // 2
        server.cuts_left = 1
        done = subprocess.run(
            [
                str(built_exe),
                "model",
                "get",
                "--url",
                server.base + "/m.tar.gz",
                "--sha256",
                hashlib.sha256(archive).hexdigest(),
            ],
            env=exe_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert "model installed" in done.stderr and "resuming after" in done.stderr
    assert (tmp_path / "data" / "model" / "manifest.json").is_file()
