"""Build the CaptaFlow executable: `python packaging/build.py [--onefile] [--model DIR]`.

One folder (default): dist/captaflow/captaflow[.exe] beside its libraries; fast start.
One file (--onefile): dist/captaflow[.exe]; one thing to hand around, slower start (it unpacks
itself to a temp folder on each launch).

--model DIR packs an exported model bundle (`captaflow export-model --out DIR`) into the
executable; it then scores with that model when no other is set (--model, [model] dir, or
one exported/downloaded into the data folder). Without --model the build is slim: its first
run downloads the bundle pinned in the settings (`captaflow model get`, or the tray).

Run it from a Python install that has the runtime dependencies and PyInstaller
(`pip install -e ".[package]"`). The export tooling (torch, transformers) may be installed
too: the spec excludes it. Prints the build time and the size on disk at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def built_executable(dist: Path, onefile: bool) -> Path:
    suffix = ".exe" if sys.platform == "win32" else ""
    return dist / f"captaflow{suffix}" if onefile else dist / "captaflow" / f"captaflow{suffix}"


MODEL_ENV = "CAPTAFLOW_PACK_MODEL"  # read by pyinstaller.spec


def checked_model(model: Path) -> Path:
    """The bundle to pack, after the same checks the agent makes (checksums, labels)."""
    sys.path.insert(0, str(ROOT))
    from agent.bundle import load_bundle

    bundle = load_bundle(model.resolve())
    return bundle.path


def release_asset(model: Path, dist: Path) -> tuple[Path, str]:
    """The bundle as the release publishes it for slim builds: tar.gz plus its .sha256."""
    import hashlib

    from agent.model_download import make_bundle_archive

    archive = make_bundle_archive(model, dist / "captaflow-model.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.with_name(archive.name + ".sha256").write_text(
        f"{digest}  {archive.name}\n", encoding="utf-8"
    )
    return archive, digest


def build(
    *, onefile: bool, dist: Path, work: Path, clean: bool = False, model: Path | None = None
) -> Path:
    """Run PyInstaller on pyinstaller.spec; returns the executable's path."""
    sys.path.insert(0, str(ROOT))
    from agent.icons import write_icon_files

    # Regenerated each build so the exe's icon always matches the one the tray draws.
    write_icon_files(ROOT / "packaging" / "icons")
    env = dict(os.environ, CAPTAFLOW_ONEFILE="1" if onefile else "0")
    env.pop(MODEL_ENV, None)
    if model is not None:
        env[MODEL_ENV] = str(checked_model(model))
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        str(dist),
        "--workpath",
        str(work),
        *(["--clean"] if clean else []),
        str(ROOT / "pyinstaller.spec"),
    ]
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return built_executable(dist, onefile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onefile", action="store_true", help="one self-unpacking file")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder")
    parser.add_argument("--work", type=Path, default=ROOT / "build", help="PyInstaller's scratch")
    parser.add_argument("--clean", action="store_true", help="ignore PyInstaller's cache")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="pack this exported model bundle into the executable (default: a slim build)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        exe = build(
            onefile=args.onefile,
            dist=args.dist,
            work=args.work,
            clean=args.clean,
            model=args.model,
        )
    except subprocess.CalledProcessError as error:
        print(f"build.py: PyInstaller failed (exit status {error.returncode})", file=sys.stderr)
        return 1
    except Exception as error:  # a bad --model bundle: one line
        if type(error).__name__ != "ModelBundleError":
            raise
        print(f"build.py: --model: {error}", file=sys.stderr)
        return 2
    if args.model is not None:
        asset, digest = release_asset(args.model, args.dist)
        print(f"model release asset: {asset} (sha256 {digest})", file=sys.stderr)
    seconds = time.monotonic() - started
    size = tree_size(exe if args.onefile else exe.parent)
    packed = f"; model {args.model} packed in" if args.model else "; slim (no model packed)"
    print(f"built {exe} in {seconds:.0f} s; {size / 1e6:.1f} MB on disk{packed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
