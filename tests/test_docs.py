"""The READMEs point at what exists: every relative link resolves, every module links its code, every benchmark has a row."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
MARKDOWN = subprocess.run(
    ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
).stdout.split()


def table_rows(markdown: str, header: str) -> list[list[str]]:
    """The cells of each body row of the table whose header row starts with `header`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # skip the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("path", MARKDOWN)
def test_relative_links_resolve(path: str) -> None:
    source = ROOT / path
    missing = [
        target
        for target in LINK.findall(source.read_text())
        if not re.match(r"[a-z]+:|#", target) and not (source.parent / target.split("#")[0]).exists()
    ]
    assert not missing, f"{path} links to files that do not exist: {missing}"


def test_each_module_row_links_its_common_code() -> None:
    rows = table_rows((ROOT / "README.md").read_text(), "| # | module |")
    written = {row[0]: row for row in rows if "](modules/" in row[1]}
    on_disk = {p.name[:2] for p in (ROOT / "modules").glob("[0-9][0-9]_*") if p.is_dir()}
    assert set(written) == on_disk, "each module folder has a row that links its README"
    for number, row in written.items():
        assert "](common/" in row[3], f"module {number}'s row names its code without linking it: {row[3]}"


def test_each_benchmark_has_a_row() -> None:
    rows = table_rows((ROOT / "benchmarks/README.md").read_text(), "| benchmark |")
    names = [re.fullmatch(r"`(\w+)\.py`", row[0]) for row in rows]
    assert all(names), f"the first cell of each row is a benchmark's file name: {[row[0] for row in rows]}"
    files = {name.group(1) for name in names if name}
    assert files == {*BENCHMARKS, "perf_gate"}
    assert all((ROOT / "benchmarks" / f"{name}.py").exists() for name in files)
