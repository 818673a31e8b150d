"""Download and unpack public datasets on demand.

``vosbatch submit --dataset davis2016`` on a machine with internet access but
no local copy of the data calls :func:`ensure_dataset`, which

* returns immediately (no network) when the dataset root already has the
  official layout;
* otherwise downloads the official archive into ``<root>/.downloads/`` with a
  progress bar, resuming a previous partial download (HTTP ``Range``) and
  retrying transient network errors;
* verifies the archive (SHA-256 when known, size when known);
* extracts it into a temporary folder inside ``root`` and moves the result
  into place with ``os.rename``, the folder that marks the dataset as complete
  last, so an interrupted run never leaves a half dataset that looks complete.

Only the standard library (``urllib``) and ``tqdm`` are used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

try:  # tqdm is a declared dependency; degrade to no bar if it is missing.
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None

__all__ = [
    "DATASET_ARCHIVES",
    "DownloadError",
    "RemoteArchive",
    "download_file",
    "ensure_dataset",
    "has_dataset_layout",
    "resolve_archive",
]

log = logging.getLogger(__name__)

#: Seconds to wait for the server on connect / between reads.
TIMEOUT_S: float = 60.0
#: Base of the exponential backoff between retries (seconds); tests set it to 0.
RETRY_BACKOFF_S: float = 1.0
#: Upper bound of one backoff sleep (seconds).
RETRY_BACKOFF_MAX_S: float = 30.0
USER_AGENT = "vosbatch-downloader/0.1 (+python-urllib)"

# HTTP statuses worth retrying; every other 4xx/5xx fails at once.
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download, verification or extraction failed; the message names the URL."""


@dataclass(frozen=True)
class RemoteArchive:
    """A dataset distributed as one zip archive.

    ``extracted_marker`` is a path relative to the *dataset root* (i.e. after
    ``strip_prefix`` has been removed) that exists once extraction finished,
    e.g. ``"JPEGImages/480p"``. ``strip_prefix`` is the top folder inside the
    zip whose contents become the dataset root (``"DAVIS"``), or None.
    ``sha256``/``size`` are verified when known (None: not verified).
    ``layout`` lists further relative paths that must exist for the dataset
    root to count as complete; ``exclude`` holds ``fnmatch`` patterns of
    archive members (after stripping) that are not extracted.
    """

    name: str
    url: str
    sha256: str | None
    size: int | None
    extracted_marker: str
    strip_prefix: str | None = None
    layout: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        base = self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return base or f"{self.name}.zip"


DATASET_ARCHIVES: dict[str, RemoteArchive] = {
    # Official DAVIS 2016 release (480p + 1080p frames, annotations, image
    # sets). Its SHA-256 is not pinned here: it is verified when known, i.e.
    # when VOSBATCH_DAVIS2016_SHA256 is set. VOSBATCH_DAVIS2016_URL overrides
    # the URL (mirror, local server). The 1080p frames are not extracted.
    "davis2016": RemoteArchive(
        name="davis2016",
        url="https://graphics.ethz.ch/Downloads/Data/Davis/DAVIS-data.zip",
        sha256=None,
        size=None,
        extracted_marker="JPEGImages/480p",
        strip_prefix="DAVIS",
        layout=("JPEGImages/480p", "Annotations/480p", "ImageSets/480p"),
        exclude=("*/1080p", "*/1080p/*"),
    ),
    # SegTrack-v2 as published by its authors (Oregon State): one zip whose top folder
    # "SegTrackv2/" holds JPEGImages/, GroundTruth/ and ImageSets/. No authoritative checksum is
    # published; VOSBATCH_SEGTRACKV2_URL / VOSBATCH_SEGTRACKV2_SHA256 override URL and digest.
    "segtrackv2": RemoteArchive(
        name="segtrackv2",
        url="https://web.engr.oregonstate.edu/~lif/SegTrack2/SegTrackv2.zip",
        sha256=None,
        size=None,
        extracted_marker="JPEGImages",
        strip_prefix="SegTrackv2",
        layout=("JPEGImages", "GroundTruth"),
    ),
    # FBMS-59 test set as published by the Freiburg LMB group: one zip whose top folder
    # "Testset/" holds one folder per sequence (frames + GroundTruth/). Extracted as is, so the
    # dataset root holds Testset/ (where a separately downloaded Trainingset/ can sit next to it).
    # No authoritative checksum is published; VOSBATCH_FBMS59_URL / VOSBATCH_FBMS59_SHA256 override.
    "fbms59": RemoteArchive(
        name="fbms59",
        url="https://lmb.informatik.uni-freiburg.de/resources/datasets/fbms/FBMS_Testset.zip",
        sha256=None,
        size=None,
        extracted_marker="Testset",
        strip_prefix=None,
        layout=("Testset",),
    ),
}


def resolve_archive(name: str) -> RemoteArchive:
    """Return the archive for ``name`` with env overrides applied.

    ``VOSBATCH_<NAME>_URL`` replaces the URL and ``VOSBATCH_<NAME>_SHA256``
    the expected digest (``<NAME>`` is the upper-cased dataset name).
    """
    key = name.lower()
    if key not in DATASET_ARCHIVES:
        known = ", ".join(sorted(DATASET_ARCHIVES))
        raise KeyError(f"no downloadable archive for dataset {name!r} (known: {known})")
    arch = DATASET_ARCHIVES[key]
    env = re.sub(r"[^A-Z0-9]", "_", key.upper())
    url = os.environ.get(f"VOSBATCH_{env}_URL", "").strip()
    digest = os.environ.get(f"VOSBATCH_{env}_SHA256", "").strip().lower()
    if url:
        # A different file: a pinned size/digest of the default URL is moot.
        arch = replace(arch, url=url, sha256=None, size=None)
    if digest:
        arch = replace(arch, sha256=digest)
    return arch


# ----------------------------------------------------------------------------
# download_file
# ----------------------------------------------------------------------------


class _Transient(Exception):
    """Internal: a retryable failure (wraps the original exception)."""


class _RestartFromZero(Exception):
    """Internal: the partial file is unusable; start over (does not count as a retry)."""


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``"bytes 10-99/100"`` -> (10, 99, 100); ``"bytes */100"`` -> (None, None, 100)."""
    if not value:
        return None, None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", value, re.I)
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    end = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, end, total


def _backoff(attempt: int) -> None:
    delay = min(RETRY_BACKOFF_S * (2 ** attempt), RETRY_BACKOFF_MAX_S)
    if delay > 0:
        time.sleep(delay)


def _make_bar(progress: bool, total: int | None, initial: int, desc: str):
    if not progress or _tqdm is None:
        return None
    return _tqdm(
        total=total, initial=initial, unit="B", unit_scale=True,
        unit_divisor=1024, desc=desc, leave=True, dynamic_ncols=True,
    )


def _attempt(url: str, part: Path, chunk: int, progress: bool, desc: str) -> int | None:
    """One HTTP request that appends to / rewrites ``part``.

    Returns the total size announced by the server (None if unknown) once the
    body was fully received. Raises _Transient, _RestartFromZero or DownloadError.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset > 0:
            # Range not satisfiable: either the .part is already complete
            # (we died between download and verification) or it is bogus.
            _, _, total = _parse_content_range(exc.headers.get("Content-Range"))
            if total is not None and total == offset:
                return total
            part.unlink(missing_ok=True)
            raise _RestartFromZero from exc
        if exc.code in _TRANSIENT_HTTP:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
            http.client.HTTPException) as exc:
        raise _Transient(str(getattr(exc, "reason", exc))) from exc

    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if status == 206:
            start, _, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                # Not the range we asked for: cannot splice it safely.
                part.unlink(missing_ok=True)
                raise _RestartFromZero
            mode = "ab"
            if total is None and length is not None:
                total = offset + length
        elif status == 200:
            if offset > 0:
                log.info("server ignored the Range request for %s; restarting from zero", url)
            offset = 0
            mode = "wb"
            total = length
        else:
            raise DownloadError(f"download of {url} failed: unexpected HTTP status {status}")

        expected_body = length
        received = 0
        bar = _make_bar(progress, total, offset, desc)
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        block = resp.read(chunk)
                    except (http.client.IncompleteRead, ConnectionError, TimeoutError,
                            socket.timeout, urllib.error.URLError,
                            http.client.HTTPException) as exc:
                        raise _Transient(f"connection lost after {offset + received} bytes: {exc!r}") from exc
                    if not block:
                        break
                    fh.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if expected_body is not None and received < expected_body:
            raise _Transient(
                f"connection closed after {offset + received} of {offset + expected_body} bytes"
            )
        return total


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    chunk: int = 1 << 20,
    retries: int = 3,
    size: int | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming and verifying.

    Data goes to ``dest + ".part"``; an existing ``.part`` is resumed with an
    HTTP ``Range`` request (a server answering 200 restarts it from zero).
    URL errors, connection resets and short reads are retried up to
    ``retries`` times with exponential backoff, each retry resuming. The
    SHA-256 (when given) and size (when given or announced by the server)
    are checked before ``os.replace`` moves the file to ``dest``; on a
    mismatch the ``.part`` is deleted and :class:`DownloadError` raised.

    If ``dest`` already exists (it is only ever written complete) it is
    returned without network access, after checking ``sha256``/``size`` when
    given; a mismatching ``dest`` is downloaded again.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    expected = sha256.strip().lower() if sha256 else None

    if dest.exists():
        ok = size is None or dest.stat().st_size == size
        if ok and expected is not None:
            ok = _sha256_file(dest) == expected
        if ok:
            return dest
        log.warning("%s does not match the expected size/digest; downloading again", dest)
        dest.unlink()

    dest.parent.mkdir(parents=True, exist_ok=True)
    desc = dest.name
    failures = 0
    restarts = 0
    while True:
        try:
            total = _attempt(url, part, chunk, progress, desc)
            break
        except _RestartFromZero:
            restarts += 1
            if restarts > retries + 1:
                raise DownloadError(f"download of {url} failed: server keeps sending unusable ranges")
            continue
        except _Transient as exc:
            failures += 1
            if failures > retries:
                raise DownloadError(
                    f"download of {url} failed after {retries + 1} attempts: {exc}"
                ) from exc.__cause__ or exc
            have = part.stat().st_size if part.exists() else 0
            log.warning("download of %s interrupted (%s); retry %d/%d from byte %d",
                        url, exc, failures, retries, have)
            _backoff(failures - 1)

    actual_size = part.stat().st_size
    for want, what in ((size, "expected"), (total, "announced")):
        if want is not None and actual_size != want:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"size mismatch for {url}: {what} {want} bytes, got {actual_size} bytes"
            )
    if expected is not None:
        actual = _sha256_file(part)
        if actual != expected:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}"
            )
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------
# ensure_dataset
# ----------------------------------------------------------------------------


def has_dataset_layout(root: Path, archive: RemoteArchive) -> bool:
    """True when ``root`` holds a complete extraction of ``archive``."""
    root = Path(root)
    marker = root / archive.extracted_marker
    if not marker.exists():
        return False
    if marker.is_dir() and not any(marker.iterdir()):
        return False
    return all((root / p).exists() for p in archive.layout)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX); serialises concurrent ensure_dataset calls."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _member_target(name: str, strip_prefix: str | None) -> str | None:
    """Archive member name -> relative path under the dataset root (None: skip)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or parts[0] == "__MACOSX":
        return None
    if strip_prefix:
        prefix = [p for p in strip_prefix.strip("/").split("/") if p]
        if parts[: len(prefix)] != prefix:
            return None
        parts = parts[len(prefix):]
        if not parts:
            return None
    if name.startswith("/") or ".." in parts or ":" in parts[0]:
        raise DownloadError(f"unsafe path in archive: {name!r}")
    return "/".join(parts)


def _extract(archive_path: Path, archive: RemoteArchive, out_dir: Path) -> None:
    """Extract the wanted members of ``archive_path`` (prefix stripped) into ``out_dir``."""
    with zipfile.ZipFile(archive_path) as zf:
        members = []
        for info in zf.infolist():
            rel = _member_target(info.filename, archive.strip_prefix)
            if rel is None or any(fnmatch.fnmatch(rel, pat) for pat in archive.exclude):
                continue
            members.append((info, rel))
        if not members:
            raise DownloadError(
                f"archive {archive_path} from {archive.url} has no files under "
                f"{archive.strip_prefix or '/'}"
            )
        for info, rel in members:
            target = out_dir / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _move_into_place(src_dir: Path, root: Path, trash: Path, archive: RemoteArchive) -> None:
    """Rename the top-level entries of ``src_dir`` into ``root``.

    Entries already in ``root`` (left by an earlier interrupted run) are
    renamed into ``trash`` first. The entry holding the completion marker is
    moved last, so ``has_dataset_layout`` turns true only when all are there.
    """
    marker_top = Path(archive.extracted_marker).parts[0]
    entries = sorted(src_dir.iterdir(), key=lambda p: (p.name == marker_top, p.name))
    trash.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = root / entry.name
        if target.exists() or target.is_symlink():
            os.rename(target, trash / entry.name)
        os.rename(entry, target)


def ensure_dataset(name: str, root: Path, progress: bool = True) -> Path:
    """Make sure dataset ``name`` exists under ``root``; download it if not.

    Returns ``root``, which then holds the official layout (for DAVIS 2016:
    ``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets/480p``; the image
    set files are kept verbatim). When the layout is already present no
    network access happens. Otherwise the archive is downloaded (resumable)
    into ``root/.downloads/``, extracted into a temporary folder inside
    ``root`` and renamed into place. Raises :class:`DownloadError` on any
    failure, leaving no partial dataset behind.
    """
    archive = resolve_archive(name)
    root = Path(root).expanduser()
    if has_dataset_layout(root, archive):
        return root

    root.mkdir(parents=True, exist_ok=True)
    downloads = root / ".downloads"
    with _file_lock(downloads / f"{archive.name}.lock"):
        if has_dataset_layout(root, archive):  # another process finished it
            return root
        zip_path = download_file(
            archive.url, downloads / archive.filename, sha256=archive.sha256,
            progress=progress, size=archive.size,
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".extract-{archive.name}-", dir=root))
        try:
            content = tmp / "content"
            content.mkdir()
            try:
                _extract(zip_path, archive, content)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                # The archive itself is bad: drop it so the next call downloads again.
                zip_path.unlink(missing_ok=True)
                raise DownloadError(
                    f"archive from {archive.url} is corrupt ({exc}); deleted {zip_path}, "
                    "run again to re-download"
                ) from exc
            except OSError as exc:  # disk full, permissions, ...: keep the archive
                raise DownloadError(
                    f"extracting {zip_path} (from {archive.url}) into {root} failed: {exc}"
                ) from exc
            if not has_dataset_layout(content, archive):
                zip_path.unlink(missing_ok=True)
                missing = [p for p in (archive.extracted_marker, *archive.layout)
                           if not (content / p).exists()]
                raise DownloadError(
                    f"archive from {archive.url} does not have the expected layout "
                    f"(missing {', '.join(missing)} under {archive.strip_prefix or '/'}); "
                    f"deleted {zip_path}"
                )
            _move_into_place(content, root, tmp / "replaced", archive)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("dataset %s ready under %s", archive.name, root)
    return root
