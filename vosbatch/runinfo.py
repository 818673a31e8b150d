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
    import numpy
    import torch

    facts = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        facts["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        import ray

        facts["ray"] = ray.__version__
    except ImportError:
        pass
    return facts
