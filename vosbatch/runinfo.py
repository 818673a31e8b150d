"""Facts recorded in run.json: code version and host, so a number can always be traced back."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

from . import __version__


def code_version() -> dict:
    repo = Path(__file__).resolve().parent.parent
    info = {"package": __version__}
    try:
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def host_facts() -> dict:
    """The driver's host. Versions come from the installed packages' metadata: the driver never imports torch
    (its workers do, and each metrics row names the node and, on GPU actors, the GPU memory used)."""
    from importlib.metadata import PackageNotFoundError, version

    facts = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    for package in ("numpy", "torch", "ray", "pyarrow", "opencv-contrib-python-headless"):
        try:
            facts[package] = version(package)
        except PackageNotFoundError:
            pass
    try:
        facts["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return facts
