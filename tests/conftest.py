import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# `pytest -m "not slow"` answers in about two minutes: these modules train models or run the loop through the
# scripts, and so does every test that takes one of the trained-phantom fixtures below.
SLOW_MODULES = {"test_train", "test_interruption", "test_distributed", "test_topk", "test_tune", "test_seeds",
                "test_resume_changes", "test_ensemble_infer", "test_export", "test_predictor", "test_manifest",
                "test_never_lose", "test_winning", "test_recipes", "test_report", "test_leaderboard", "test_settings",
                "test_nnunet", "test_locks", "test_score_cli"}
SLOW_FIXTURES = {"loop", "stroke_spec", "seg_spec", "type_spec", "shipped", "train_phantom"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


REAL_SAMPLES_HELP = ("real sample files not found: put the data set's sample files in ../shared/real-samples (beside "
                     "the repository) or point $STROKEKIT_REAL_SAMPLES at them")


def find_real_samples() -> Path | None:
    """$STROKEKIT_REAL_SAMPLES, else ../shared/real-samples beside the repository: real data files, never
    copied into the repo. No other place is searched."""
    env = os.environ.get("STROKEKIT_REAL_SAMPLES")
    path = Path(env) if env else ROOT.parent / "shared" / "real-samples"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """The real sample files; without them the test skips with how to provide them, except under
    STROKEKIT_REQUIRE_REAL_SAMPLES=1 (.ci/run sets it), where their absence fails the test."""
    path = find_real_samples()
    if path is None:
        if os.environ.get("STROKEKIT_REQUIRE_REAL_SAMPLES") == "1":
            pytest.fail(REAL_SAMPLES_HELP + " (STROKEKIT_REQUIRE_REAL_SAMPLES=1)")
        pytest.skip(REAL_SAMPLES_HELP)
    return path


@pytest.fixture(scope="session")
def train_phantom(tmp_path_factory) -> Path:
    """A 128-px phantom (competition layout) with its 5-fold folds.csv, shared by the training tests."""
    from strokekit.data.index import build_index
    from strokekit.data.folds import make_folds, write_folds
    from strokekit.phantom.dataset import make_phantom

    root = make_phantom(tmp_path_factory.mktemp("train_phantom") / "data", n=600, seed=0, size=128,
                        n_test1=4, n_test2=4)
    index, _ = build_index(root)
    write_folds(make_folds(index, n_folds=5, seed=42), Path(root) / "folds.csv")
    return Path(root)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared, loaded 2-core machine two threads spin-wait for each other (7x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_phantom(folder: Path, n: int, seed: int, size: int, n_test1: int, n_test2: int, n_folds: int = 2,
                  cache: bool = True) -> Path:
    """A tiny phantom with its folds.csv, for module-scoped fixtures (cache=False: no index cache written)."""
    from strokekit.data.index import build_index
    from strokekit.data.folds import make_folds, write_folds
    from strokekit.phantom.dataset import make_phantom

    root = make_phantom(folder / "data", n=n, seed=seed, size=size, n_test1=n_test1, n_test2=n_test2)
    index, _ = build_index(root, cache=cache)
    write_folds(make_folds(index, n_folds=n_folds, seed=0), Path(root) / "folds.csv")
    return Path(root)


@pytest.fixture
def data(phantom, tmp_path) -> Path:
    """A fresh copy of the requesting module's `phantom` fixture, for a test that damages files in it."""
    import shutil

    return Path(shutil.copytree(phantom, tmp_path / "data"))


# The trained phantom loop (tests/phantom_loop.py), shared by every end-to-end test file in one session.
from phantom_loop import loop, seg_spec, shipped, stroke_spec, type_spec  # noqa: E402,F401
