import os
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep, not spin

import pytest  # noqa: E402
import torch  # noqa: E402
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


def pytest_collection_modifyitems(config, items):
    """In this workplace Ray must run inside the loopback namespace; elsewhere it runs as is."""
    tool = SHARED / "tools" / "loopback-ns"
    if tool.exists() and os.environ.get("LOOPBACK_NS_INSIDE") != "1":
        skip = pytest.mark.skip(reason=f"starts Ray: run the suite inside {tool} (as .ci/run does)")
        for item in items:
            if "ray" in item.keywords:
                item.add_marker(skip)
