import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "real-samples"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """The real files of the data set kept outside the repository (never copied in)."""
    assert REAL.is_dir(), f"{REAL} is missing: tests read real samples from ../shared/real-samples"
    return REAL
