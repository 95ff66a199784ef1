"""The benchmarks still run (a quick smoke run; `make bench` does the measuring)."""

import json
import subprocess
import sys

import pytest

from benchmarks.__main__ import BENCHMARKS


@pytest.mark.slow
def test_every_benchmark_runs_quickly_and_writes_results(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)], check=True)
    for name in BENCHMARKS:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["results"], name
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_unknown_benchmark_is_rejected():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr
