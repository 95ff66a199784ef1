"""ruff and mypy are part of the test suite, so CI (which runs only `make test`) keeps the tree clean and typed."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_check_is_clean():
    proc = subprocess.run([BIN / "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean():
    proc = subprocess.run(
        [BIN / "ruff", "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, "run `make format`:\n" + proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_is_clean(tmp_path):
    """The files and settings come from pyproject.toml's [tool.mypy]; a fresh cache so nothing stale passes."""
    proc = subprocess.run(
        [BIN / "mypy", "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, "mypy found type errors (run `make lint`):\n" + proc.stdout + proc.stderr
