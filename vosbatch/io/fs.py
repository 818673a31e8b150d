"""One way to reach local paths and ``s3://`` URIs: pyarrow's filesystem layer.

Run stores, manifests, frames, videos and priors on S3 all go through :func:`filesystem_for`, and the
one S3 configuration is the AWS CLI's endpoint variables: ``--s3-endpoint-url`` sets them
(:func:`configure_s3`) for this process and every process it starts (Ray workers, jobs' subprocesses),
so an S3-compatible store (MinIO, Ceph, moto...) is reached for every URI alike. Credentials come from
the usual AWS chain (environment, config files, instance role) and are never logged.
"""
from __future__ import annotations

import functools
import io
import os
from typing import Optional, Tuple, Union

import pyarrow.fs as pafs

PathLike = Union[str, "os.PathLike[str]"]


def is_s3(location: PathLike) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the AWS CLI's, most specific first


def configure_s3(endpoint_url: Optional[str]) -> None:
    """Send every ``s3://`` URI of this process, and of the processes it starts, to ``endpoint_url``
    (``http://host:port``); None leaves the environment's choice (AWS, or ``$AWS_ENDPOINT_URL``)."""
    if endpoint_url:
        for name in ENDPOINT_VARIABLES:
            os.environ[name] = endpoint_url
        _s3_filesystem.cache_clear()


def s3_environment() -> dict:
    """The endpoint variables set here, for workers on other nodes (their credentials are their own)."""
    return {name: os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)}


def endpoint_options(endpoint_url: str) -> dict:
    """pyarrow S3 options for an endpoint URL (``http://host:port``; no scheme means https)."""
    scheme, _, host = endpoint_url.partition("://")
    return {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}


def filesystem_for(uri: str, **s3_options) -> Tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path inside it (``bucket/key`` for S3, absolute locally).

    pyarrow ignores the AWS CLI's ``AWS_ENDPOINT_URL[_S3]``; it is honoured here unless
    ``endpoint_override`` is given explicitly.
    """
    if is_s3(uri):
        endpoint = next((os.environ[n] for n in ENDPOINT_VARIABLES if os.environ.get(n)), None)
        if endpoint and "endpoint_override" not in s3_options:
            s3_options = dict(s3_options, **endpoint_options(endpoint))
        key = uri[len("s3://"):].rstrip("/")
        try:
            return _s3_filesystem(tuple(sorted(s3_options.items())), _credential_env()), key
        except TypeError:  # an unhashable option value: no caching
            return pafs.S3FileSystem(**s3_options), key
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(os.fspath(uri)))


_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                    "AWS_DEFAULT_REGION")


def _credential_env() -> Tuple[Optional[str], ...]:
    return tuple(os.environ.get(k) for k in _CREDENTIAL_VARS)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(options: tuple, credential_env: tuple) -> pafs.S3FileSystem:
    """One S3 filesystem (and connection pool) per configuration and process, not one per frame
    read; ``credential_env`` only keys the cache, so a changed environment gets a new one."""
    return pafs.S3FileSystem(**dict(options))


def read_bytes(location: PathLike) -> bytes:
    """The whole content of a local file or S3 object (OSError/ArrowException when unreadable)."""
    if not is_s3(location):
        with open(location, "rb") as fh:
            return fh.read()
    fs, path = filesystem_for(location)
    with fs.open_input_file(path) as fh:
        return fh.read()


class _RangeReader(io.RawIOBase):
    """A seekable raw stream over a pyarrow random-access file (each read is one ranged GET on S3)."""

    def __init__(self, native) -> None:
        self._native = native
        self._size = native.size()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data = self._native.read_at(want, self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._native.close()
        super().close()


def open_seekable(location: PathLike, buffer_size: int = 4 << 20):
    """A buffered, seekable binary file for a local path or S3 object (what FFmpeg needs to demux).

    On S3 reads come in ``buffer_size`` ranged GETs, so demuxing a video does not turn into one
    request per 32 KiB read.
    """
    if not is_s3(location):
        return open(location, "rb")
    fs, path = filesystem_for(location)
    return io.BufferedReader(_RangeReader(fs.open_input_file(path)), buffer_size=buffer_size)
