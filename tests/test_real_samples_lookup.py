"""Where the real sample files are looked for, and what happens without them (skip for a user, fail in CI)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_REAL_TEST = "tests/data/test_submission.py::test_answer_key_reads_to_200_ids"


def run_one(tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STROKEKIT_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", ONE_REAL_TEST], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_missing_samples_skip_with_how_to_provide_them(tmp_path):
    result = run_one(tmp_path, STROKEKIT_REAL_SAMPLES=str(tmp_path / "nowhere"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "STROKEKIT_REAL_SAMPLES" in result.stdout


def test_missing_samples_fail_when_required(tmp_path):
    result = run_one(tmp_path, STROKEKIT_REAL_SAMPLES=str(tmp_path / "nowhere"), STROKEKIT_REQUIRE_REAL_SAMPLES="1")
    assert result.returncode == 1 and "1 error" in result.stdout, result.stdout + result.stderr
    assert "STROKEKIT_REQUIRE_REAL_SAMPLES=1" in result.stdout


def test_samples_found_through_the_variable(real_samples, tmp_path):
    result = run_one(tmp_path, STROKEKIT_REAL_SAMPLES=str(real_samples), STROKEKIT_REQUIRE_REAL_SAMPLES="1")
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr
