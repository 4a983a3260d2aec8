import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def find_real_samples() -> Path | None:
    """../shared/real-samples (or $STROKEKIT_REAL_SAMPLES): real data files, never copied into the repo."""
    if os.environ.get("STROKEKIT_REAL_SAMPLES"):
        return Path(os.environ["STROKEKIT_REAL_SAMPLES"])
    for parent in ROOT.parents:
        candidate = parent / "shared" / "real-samples"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_samples() -> Path:
    path = find_real_samples()
    assert path is not None and path.is_dir(), (
        "real samples not found: tests read them from ../shared/real-samples or $STROKEKIT_REAL_SAMPLES")
    return path
