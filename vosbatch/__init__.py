"""vosbatch: unsupervised video object segmentation as a distributed batch job."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vosbatch")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
