"""`make bench`: run every benchmark, write JSON and plots to benchmarks/results/.

python -m benchmarks                 # all of them
python -m benchmarks engine --quick  # one, small and fast (what the smoke test runs)
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

BENCHMARKS = ("ceilings", "engine", "kernels", "serving")


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
    for name in args.names or BENCHMARKS:
        print(f"== {name}")
        importlib.import_module(f"benchmarks.{name}").run(args.out, quick=args.quick)


if __name__ == "__main__":
    main()
