"""Notebook hygiene: committed stripped, on the course kernel, ending with asserts."""

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for d in ("modules", "notebooks") for p in (ROOT / d).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)
IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert any(p.parent.name == "notebooks" for p in NOTEBOOKS), "notebooks/00_start_here.ipynb is missing"
    assert any(p.parent.name == "00_design" for p in NOTEBOOKS)


@pytest.fixture(params=NOTEBOOKS, ids=IDS)
def notebook(request) -> tuple[Path, dict]:
    return request.param, json.loads(request.param.read_text())


def test_committed_without_outputs(notebook):
    path, nb = notebook
    dirty = [
        i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; run `make strip`"


def test_runs_on_the_course_kernel(notebook):
    path, nb = notebook
    assert nb["metadata"]["kernelspec"]["name"] == "hpai", f"{path.name} must use the 'hpai' kernel"


def _is_check(node: ast.AST) -> bool:
    """An assert, or a timing claim checked by common.bench's at_least / at_most (which raise when it fails)."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        return name in ("at_least", "at_most")
    return False


def test_ends_with_assert_cells(notebook):
    path, nb = notebook
    cells = code_cells(nb)
    assert cells, f"{path.name} has no code"
    asserts = [i for i, src in enumerate(cells) if any(_is_check(n) for n in ast.walk(_parse(src)))]
    assert asserts, f"{path.name} checks nothing: it needs assert cells"
    assert asserts[-1] == len(cells) - 1, f"{path.name} must end with an assert cell"


def test_defines_no_reusable_classes(notebook):
    """Reusable code lives in `common`; a notebook may sketch a function, not a class hierarchy."""
    path, nb = notebook
    for src in code_cells(nb):
        classes = [n.name for n in ast.walk(_parse(src)) if isinstance(n, ast.ClassDef)]
        assert len(classes) <= 1, f"{path.name} defines classes {classes}: move them to common"


def test_starts_with_a_title(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).lstrip().startswith("# "), path.name


def _parse(src: str) -> ast.AST:
    # IPython magics and shell escapes are not Python: blank them before parsing
    lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines()]
    return ast.parse("\n".join(lines))
