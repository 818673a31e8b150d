"""Run the ``vosbatch`` command line in a subprocess, as a user would (for tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping, Optional


def cli_env(**extra: str) -> dict:
    """This process's environment, quiet and idle-friendly for Ray and torch, plus ``extra``."""
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore", OMP_WAIT_POLICY="PASSIVE", **extra)


def run_cli(*args, check: bool = True, env: Optional[Mapping[str, str]] = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m vosbatch.cli ARGS`` (arguments passed through ``str``) and return the finished
    process with its text stdout/stderr. ``env`` replaces the whole environment (default:
    :func:`cli_env`). With ``check``, a non-zero exit raises AssertionError showing both streams."""
    proc = subprocess.run([sys.executable, "-m", "vosbatch.cli", *map(str, args)], capture_output=True, text=True,
                          env=cli_env() if env is None else dict(env), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"vosbatch {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
