"""`make bench`: run every benchmark, write JSON and plots to benchmarks/results/.

python -m benchmarks                 # all of them
python -m benchmarks engine --quick  # one, small and fast (what the smoke test runs)
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = ("ceilings", "engine", "kernels", "serving", "security", "data", "llm", "quantisation")

# Set before torch loads. The kernels benchmark interleaves torch and Numba, and each brings its own
# OpenMP runtime: with the default (spinning) wait policy the idle threads of one steal the cores the
# other is computing on, and a pair that is normally 4x apart can time at 0.6x.
ENVIRONMENT = {name: {"OMP_WAIT_POLICY": "PASSIVE"} for name in ("kernels", "llm", "quantisation")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes: a smoke run, not a measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where to write results")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: expected some of {list(BENCHMARKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.names or BENCHMARKS
    if len(names) > 1:  # one process each: its own environment, and no threads or memory left by the last
        for name in names:
            command = [sys.executable, "-m", "benchmarks", name, "--out", str(args.out)]
            subprocess.run(command + (["--quick"] if args.quick else []), check=True)
        return
    name = names[0]
    for key, value in ENVIRONMENT.get(name, {}).items():
        os.environ.setdefault(key, value)
    print(f"== {name}")
    importlib.import_module(f"benchmarks.{name}").run(args.out, quick=args.quick)


if __name__ == "__main__":
    main()
