"""Getting a model bundle onto a machine that has only the app (the slim executable).

`captaflow model get` and the tray's first run call `download_bundle()`: it fetches a
published bundle archive (zip or tar, optionally gzip/xz) from the URL pinned in the settings
(`[model] bundle_url`), resuming a cut download with an HTTP Range request, then checks it
twice before anything is installed:

1. the archive's sha256 against the pinned `[model] bundle_sha256` (or, when none is pinned,
   against the `URL.sha256` file published beside it),
2. the unpacked bundle's own manifest (`agent.bundle.load_bundle`: every file's sha256 and
   size, the labels).

Only then does the bundle move into place, in one rename; a failed check leaves the old model
(or none) where it was. Offline, the error is one line saying so and what else to do.

Also here: `bundle_test_label()`, the label a test bundle carries in its manifest
(`test_model`, e.g. "tiny random model"), read by the previews, the tray and the report.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TextIO

import tenacity

from agent.bundle import MANIFEST_FILE, ModelBundle, load_bundle
from agent.errors import ModelBundleError

if TYPE_CHECKING:
    from agent.config import Settings

CHUNK = 1 << 16
PART_SUFFIX = ".part"
DEFAULT_ATTEMPTS = 5
USER_AGENT = "CaptaFlow-model-get"


class ModelDownloadError(ModelBundleError):
    """The bundle could not be fetched, or failed a check (nothing was installed)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a download is: `done` bytes of `total` (None when the server did not say)."""

    done: int
    total: int | None
    resumed_from: int = 0

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


def bundle_test_label(model_dir: Path | str | None) -> str | None:
    """The manifest's `test_model` label ("tiny random model" ...), or None for a real model.

    Cheap (reads manifest.json only) and never raises: a missing or unreadable bundle has
    no label, and the places showing the label show the usual text then.
    """
    if model_dir is None:
        return None
    try:
        data = json.loads((Path(model_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    label = data.get("test_model") if isinstance(data, dict) else None
    if label is None or label is False:
        return None
    if label is True:
        return "test model"
    text = " ".join(str(label).split())
    return text or None


def model_labels(model_dir: Path | str | None) -> dict[str, str | None]:
    """{model id: test-model label or None} of the bundle at `model_dir` ({} if none), for
    the report's banner (`agent.report.build_report(model_labels=...)`)."""
    if model_dir is None:
        return {}
    try:
        data = json.loads((Path(model_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
        model_id = str(data["source_model"]["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {model_id: bundle_test_label(model_dir)}


# ---------------------------------------------------------------------------------------------
# Fetching, with resume.


def _describe_offline(url: str, error: BaseException) -> str:
    host = urllib.parse.urlsplit(url).netloc or url
    reason = getattr(error, "reason", error)
    return (
        f"cannot download the model from {host} ({reason}): this machine seems offline or "
        f"the server is unreachable; connect and run `captaflow model get` again (a cut "
        f"download resumes), or pass --model DIR with a bundle you have"
    )


def _is_network_failure(error: BaseException) -> bool:
    return isinstance(
        error,
        (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
            socket.timeout,
            OSError,
        ),
    ) and not isinstance(error, urllib.error.HTTPError)


def fetch_resumable(
    url: str,
    part: Path,
    *,
    progress: ProgressCallback | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    timeout: float = 30.0,
    retry_wait: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download `url` into `part`, appending to what an earlier cut attempt left there.

    A cut connection is retried up to `attempts` times (tenacity: waits of `retry_wait`,
    2 x `retry_wait`, ...), each time asking only for the rest (`Range: bytes=N-`). Two tries
    without a single byte mean offline, said at once instead of after every attempt. A server
    that ignores Range (200 instead of 206) is read again from the start. Returns `part` once
    the server says it has sent everything.
    """
    part.parent.mkdir(parents=True, exist_ok=True)

    def spent_or_offline(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= max(1, attempts):
            return True
        return state.attempt_number >= 2 and not _has_bytes(part)

    retrying = tenacity.Retrying(
        stop=spent_or_offline,
        wait=tenacity.wait_incrementing(start=retry_wait, increment=retry_wait),
        retry=tenacity.retry_if_exception(_is_network_failure),
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(_fetch_once, url, part, progress, timeout)
    except Exception as error:
        if not _is_network_failure(error):
            raise
        last_error = error
    if _has_bytes(part):
        raise ModelDownloadError(
            f"the model download from {urllib.parse.urlsplit(url).netloc} kept breaking off "
            f"({last_error}); {part.stat().st_size} bytes are kept and the next "
            f"`captaflow model get` resumes from there"
        )
    raise ModelDownloadError(_describe_offline(url, last_error))


def _has_bytes(part: Path) -> bool:
    return part.exists() and part.stat().st_size > 0


def _fetch_once(url: str, part: Path, progress: ProgressCallback | None, timeout: float) -> Path:
    """One attempt: the rest of the file after what `part` holds; raises on a cut."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            if status == 206:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start != have:  # a server answering another range: start again
                    have = 0
                    mode = "wb"
                else:
                    mode = "ab"
            else:
                have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            digits = length is not None and length.isascii() and length.isdigit()
            total = have + int(length) if digits and length else None
            done = have
            resumed_from = have
            with part.open(mode) as handle:
                if progress is not None:
                    progress(Progress(done, total, resumed_from))
                while block := response.read(CHUNK):
                    handle.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(Progress(done, total, resumed_from))
            if total is not None and done < total:
                raise http.client.IncompleteRead(b"", total - done)
            return part
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            # "Range not satisfiable": the part is already whole (or longer than the
            # file). The checksum decides; a bad one removes the part.
            return part
        raise ModelDownloadError(
            f"the model server answered {error.code} {error.reason} for {url}: check "
            f"[model] bundle_url in the settings"
        ) from None
    except ValueError as error:  # a malformed URL
        raise ModelDownloadError(
            f"[model] bundle_url {url!r} is not a usable URL ({error})"
        ) from None


def _range_start(content_range: str) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, _, rest = content_range.partition(" ")
        if unit.strip() != "bytes":
            return None
        return int(rest.split("-", 1)[0])
    except ValueError:
        return None


def _pinned_sha256(url: str, pinned: str, timeout: float) -> str:
    pinned = pinned.strip().lower()
    if pinned:
        if len(pinned) != 64 or any(c not in "0123456789abcdef" for c in pinned):
            raise ModelDownloadError(
                f"[model] bundle_sha256 {pinned!r} is not a sha256 (64 hex digits)"
            )
        return pinned
    sidecar = url + ".sha256"
    request = urllib.request.Request(sidecar, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read(4096).decode("ascii", "replace")
    except urllib.error.HTTPError as error:
        raise ModelDownloadError(
            f"no sha256 is pinned ([model] bundle_sha256 is empty) and {sidecar} answered "
            f"{error.code}: pin the bundle's sha256 in the settings"
        ) from None
    except Exception as error:
        if not _is_network_failure(error):
            raise
        raise ModelDownloadError(_describe_offline(url, error)) from None
    digest = text.split()[0].lower() if text.split() else ""
    if len(digest) != 64:
        raise ModelDownloadError(f"{sidecar} does not hold a sha256")
    return digest


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Unpacking, safely.


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ModelDownloadError(f"the bundle archive holds an unsafe path {name!r}; refused")
    return path


def unpack_archive(archive: Path, into: Path) -> Path:
    """Unpack a zip or tar(.gz/.xz) into `into`; returns the folder holding manifest.json."""
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                member = _safe_member(info.filename)
                if info.is_dir():
                    continue
                target = into.joinpath(*member.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tarred:
            for tar_member in tarred.getmembers():
                member = _safe_member(tar_member.name)
                if tar_member.isdir():
                    continue
                if not tar_member.isfile():
                    raise ModelDownloadError(
                        f"the bundle archive holds a link or device {tar_member.name!r}; refused"
                    )
                extracted = tarred.extractfile(tar_member)
                if extracted is None:
                    continue
                target = into.joinpath(*member.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with extracted, target.open("wb") as out:
                    shutil.copyfileobj(extracted, out)
    else:
        raise ModelDownloadError(f"{archive.name} is neither a zip nor a tar archive; refused")
    manifests = sorted(into.rglob(MANIFEST_FILE), key=lambda p: len(p.parts))
    if not manifests:
        raise ModelDownloadError("the downloaded archive holds no manifest.json; refused")
    return manifests[0].parent


def _install(bundle_dir: Path, dest: Path) -> Path:
    """Move a checked bundle to `dest` in one rename, replacing an older one afterwards."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    try:
        os.replace(bundle_dir, dest)
    except OSError:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------------
# The whole thing.


def download_bundle(
    url: str,
    dest: Path,
    *,
    sha256: str = "",
    progress: ProgressCallback | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    timeout: float = 30.0,
    retry_wait: float = 1.0,
) -> ModelBundle:
    """Fetch, verify and install the bundle at `url` into `dest`; returns the loaded bundle.

    The partial download is kept beside `dest` (`dest.part-download`), so a later call resumes.
    Raises ModelDownloadError (one line) on any failure; `dest` is untouched then.
    """
    if not url.strip():
        raise ModelDownloadError(
            "no [model] bundle_url is set: set it in the settings or pass --model DIR"
        )
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ModelDownloadError(f"[model] bundle_url {url!r} must be an http(s) URL")
    dest = Path(dest).expanduser()
    expected = _pinned_sha256(url, sha256, timeout)
    part = dest.with_name(dest.name + ".part-download")
    fetch_resumable(
        url, part, progress=progress, attempts=attempts, timeout=timeout, retry_wait=retry_wait
    )
    actual = _sha256_file(part)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise ModelDownloadError(
            f"the downloaded bundle's sha256 is {actual[:12]}…, not the pinned "
            f"{expected[:12]}… (corrupt or tampered): refused, nothing installed; check "
            f"[model] bundle_url and bundle_sha256"
        )
    staging = Path(tempfile.mkdtemp(prefix=".model-download-", dir=dest.parent))
    try:
        root = unpack_archive(part, staging / "unpacked")
        try:
            load_bundle(root, verify_checksums=True)
        except ModelBundleError as error:
            raise ModelDownloadError(
                f"the downloaded bundle fails its own manifest check: refused, nothing "
                f"installed ({error})"
            ) from None
        _install(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    part.unlink(missing_ok=True)
    return load_bundle(dest, verify_checksums=False)


def make_bundle_archive(bundle_dir: Path, out: Path) -> Path:
    """Pack a bundle folder as the release publishes it (tar.gz, files at the top level)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zipped:
            for file in sorted(bundle_dir.iterdir()):
                if file.is_file():
                    zipped.write(file, file.name)
    else:
        with tarfile.open(out, "w:gz") as tarred:
            for file in sorted(bundle_dir.iterdir()):
                if file.is_file():
                    tarred.add(file, arcname=file.name)
    return out


# ---------------------------------------------------------------------------------------------
# `captaflow model get`.


def model_destination(settings: Settings) -> Path:
    """Where a downloaded bundle goes: `model.dir`, unless that is the bundle packed into the
    executable (read-only), then the data folder's `model`."""
    from agent.paths import bundled_model_dir

    dest = Path(settings.model.dir)
    bundled = bundled_model_dir()
    if bundled is not None and dest == bundled:
        return settings.paths.model_dir
    return dest


def model_get(
    settings: Settings,
    *,
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    stream: TextIO | None = None,
) -> int:
    """Download the bundle named by the settings (or `url`) into the model folder.

    Progress goes to stderr: a bar on a terminal, a line every 10 % otherwise.
    """
    from agent.bundle import model_present

    out = stream if stream is not None else sys.stderr
    dest = model_destination(settings)
    if model_present(dest) and not force:
        label = bundle_test_label(dest)
        shown = f" ({label})" if label else ""
        print(f"a model is already at {dest}{shown}; --force downloads it again", file=out)
        return 0
    chosen_url = url or settings.model.bundle_url
    chosen_sha = sha256 if sha256 is not None else settings.model.bundle_sha256
    print(f"downloading the model from {chosen_url}", file=out)
    with ProgressPrinter(out) as progress:
        bundle = download_bundle(chosen_url, dest, sha256=chosen_sha, progress=progress)
    label = bundle_test_label(bundle.path)
    print(
        f"model installed: {bundle.path} ({bundle.model_id}"
        f"{', test model: ' + label if label else ''}); checked against its sha256 and manifest",
        file=out,
    )
    return 0


class ProgressPrinter:
    """A progress callback: rich's bar on a terminal, a plain line per 10 % elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = _isatty(stream)
        self._bar: Any = None
        self._task: Any = None
        self._last_tenth = -1

    def __enter__(self) -> ProgressPrinter:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                "model",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("model", total=None)
        return self

    def __call__(self, step: Progress) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step.done, total=step.total)
            return
        if step.resumed_from and step.done == step.resumed_from:
            print(f"  resuming after {step.resumed_from} bytes", file=self.stream)
        fraction = step.fraction
        if fraction is None:
            return
        tenth = int(fraction * 10)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            total_mb = (step.total or 0) / 1e6
            print(f"  {tenth * 10:3d} % of {total_mb:.1f} MB", file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
