"""Sequence and dataset names: one rule for what may name a folder or an S3 key of a run.

A name comes from a user (``--sequences``), a dataset's folders, a manifest or an S3 listing, and
becomes a Hive partition value (``sequence=NAME``) under the run's folder. Anything that could leave
that folder (``..``, ``/``, an absolute path), hide it (a leading dot), be decoded into something else
(``%2e%2e``: Hive readers URL-decode partition values), break a path (NUL) or exceed a filesystem's
limits is mapped to a safe name once, where a :class:`~vosbatch.data.sequence.Sequence` is made; the
store refuses any other (:func:`check_name`).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Dict, Iterable, List

MAX_NAME = 120  # characters; long names keep a prefix and a digest of the whole
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(_SAFE.fullmatch(name)) and ".." not in name


def safe_name(raw: str) -> str:
    """A name usable as a folder, an S3 key segment and a Hive partition value: Unicode NFC-normalised, then
    letters, digits, ``.``, ``_`` and ``-`` only (anything else becomes ``_``), no leading dot or dash, no
    ``..``, at most :data:`MAX_NAME` characters. Safe names are returned as they are."""
    raw = str(raw)
    if is_safe_name(raw):
        return raw
    name = unicodedata.normalize("NFC", raw)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    name = re.sub(r"\.{2,}", "_", name).strip("._-") or "sequence"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is safe, else ValueError (the store's last line of defence)."""
    if not is_safe_name(name):
        raise ValueError(f"unsafe {what} {name!r}: letters, digits, '.', '_' and '-' only, no '..', "
                         f"at most {MAX_NAME} characters")
    return name


def unique_names(names: Iterable[str]) -> List[str]:
    """Make names unique, ignoring case (two names that differ only in case would share a folder on macOS
    and Windows): later repeats get ``-2``, ``-3``... in input order, never colliding with another name."""
    names = list(names)
    taken = {n.casefold() for n in names}
    seen: Dict[str, int] = {}
    out = []
    for n in names:
        key = n.casefold()
        if key not in seen:
            seen[key] = 1
            out.append(n)
            continue
        k = seen[key]
        while f"{n}-{k + 1}".casefold() in taken:
            k += 1
        k += 1
        seen[key] = k
        taken.add(f"{n}-{k}".casefold())
        out.append(f"{n}-{k}")
    return out


def is_single_component(name: str) -> bool:
    """A folder name that stays inside its parent: no separator, NUL, ``.`` or ``..``, at most 255 bytes
    (for the names of dataset sequences, which select a folder of the dataset's root)."""
    return (bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\x00")
            and len(name.encode("utf-8", "surrogatepass")) <= 255)
