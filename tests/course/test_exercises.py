"""Exercises, for every module with a master notebook: the committed student copy is what `assign` makes now,
the master scores 100%, the unanswered copy scores 0 on every question, and `grade` turns a folder of
notebooks (correct, partial, empty, broken) into a CSV row and a feedback file each.

The autograder zips are built once per session (without Otter's own run of the solutions: grading the master
here is that check) and each module's notebooks are graded in one `grade` call that the tests share.
"""

from __future__ import annotations

import csv
import difflib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from common.course.exercises import Generated, Score, generate, grade, master_of, masters, module_dir

MODULES = [m.parents[2].name for m in masters()]
PARTIAL_MODULE = "00_design"  # the reference master: its partial submission answers q1-q3 and leaves q4


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Generated]:
    """A module's student copy, autograder notebook and autograder.zip, made once per session."""
    cache: dict[str, Generated] = {}

    def get(module: str) -> Generated:
        if module not in cache:
            cache[module] = generate(master_of(module), tmp_path_factory.mktemp(f"made-{module}"), check=False)
        return cache[module]

    return get


def partial_submission(gen: Generated) -> dict:
    """The solutions with the last question's answer replaced by the student copy's unanswered cell."""
    solved = json.loads(gen.autograder_notebook.read_text())
    blank = json.loads(gen.student.read_text())

    def answer_cell(nb: dict) -> int:
        return next(i for i, c in enumerate(nb["cells"]) if "def start_all" in "".join(c["source"]))

    solved["cells"][answer_cell(solved)] = blank["cells"][answer_cell(blank)]
    return solved


@pytest.fixture(scope="session")
def graded(made, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[dict[str, Score], Path]]:
    """Each module's solutions and unanswered copy (and module 00's partial answer) graded in one call."""
    cache: dict[str, tuple[dict[str, Score], Path]] = {}

    def get(module: str) -> tuple[dict[str, Score], Path]:
        if module not in cache:
            gen = made(module)
            folder = tmp_path_factory.mktemp(f"submissions-{module}")
            shutil.copy(gen.autograder_notebook, folder / "solution.ipynb")
            shutil.copy(gen.student, folder / "unanswered.ipynb")
            if module == PARTIAL_MODULE:
                (folder / "partial.ipynb").write_text(json.dumps(partial_submission(gen)))
            out = tmp_path_factory.mktemp(f"grades-{module}")
            scores = grade(module, folder, out, autograder=gen.autograder_zip)
            cache[module] = ({s.learner: s for s in scores}, out)
        return cache[module]

    return get


def test_the_reference_master_exists() -> None:
    assert PARTIAL_MODULE in MODULES, f"modules/{PARTIAL_MODULE}/exercises/solutions/exercises.ipynb is missing"


@pytest.mark.parametrize("module", MODULES)
def test_the_committed_student_copy_is_what_assign_makes(module: str, made) -> None:
    gen = made(module)
    exercises = module_dir(module) / "exercises"
    fix = f"run `make assign M={module[:2]}` and commit modules/{module}/exercises/"
    committed = exercises / "exercises.ipynb"
    assert committed.is_file(), f"{committed} is missing: {fix}"
    want = {p.name for p in gen.tests}
    have = {p.name for p in (exercises / "tests").glob("*")}
    assert have == want, f"{module}: the committed tests are {sorted(have)}, assign makes {sorted(want)}: {fix}"
    for new, old in [(gen.student, committed), *((t, exercises / "tests" / t.name) for t in gen.tests)]:
        if new.read_bytes() != old.read_bytes():
            diff = difflib.unified_diff(
                old.read_text().splitlines(), new.read_text().splitlines(), "committed", "assign makes", lineterm=""
            )
            pytest.fail(f"{old} differs from what assign makes from the master ({fix}):\n" + "\n".join(list(diff)[:30]))


@pytest.mark.parametrize("module", MODULES)
def test_the_solutions_score_full_marks(module: str, graded) -> None:
    score = graded(module)[0]["solution"]
    assert score.error is None, f"{module}: the solutions could not be graded: {score.error}"
    failing = {q.name: [f"{c.name}: {c.message}" for c in q.checks if not c.passed] for q in score.questions}
    assert score.total == score.possible > 0, f"{module}: the solutions lose points: {failing}"


@pytest.mark.parametrize("module", MODULES)
def test_every_question_fails_unanswered(module: str, graded) -> None:
    score = graded(module)[0]["unanswered"]
    assert score.error is None, f"{module}: the student copy could not be graded: {score.error}"
    free = {q.name: [c.name for c in q.checks if c.passed] for q in score.questions if q.score > 0}
    assert not free, (
        f"{module}: unanswered, these questions already score points (checks that pass with `...`): {free}; "
        "make each check fail first on what an unanswered cell gives (None, a method that does nothing)"
    )


def test_one_correct_one_partial_one_empty_submission(graded) -> None:
    scores, out = graded(PARTIAL_MODULE)
    correct, partial, empty = scores["solution"], scores["partial"], scores["unanswered"]
    assert correct.percent == 100.0
    assert 0 < partial.percent < 100, f"the partial submission scored {partial.percent}%"
    assert [q.score == q.possible for q in partial.questions] == [True, True, True, False]
    assert empty.percent == 0.0
    with open(out / "scores.csv") as f:
        rows = {row["learner"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"solution", "partial", "unanswered"}
    assert [float(rows[n]["percent"]) for n in ("solution", "partial", "unanswered")] == [
        100.0,
        round(partial.percent, 1),
        0.0,
    ]
    assert {q.name for q in correct.questions} <= set(rows["partial"]), "a column per question"
    feedback = {p.stem: p.read_text() for p in (out / "feedback").glob("*.md")}
    assert set(feedback) == {"solution", "partial", "unanswered"}
    assert feedback["solution"].count("Passed every check.") == len(correct.questions)
    q4 = feedback["partial"].split("## q4")[1]
    assert "start_all" in q4 and "AssertionError" in q4, f"the feedback should say what failed in q4:\n{q4}"


@pytest.fixture
def broken_folder(tmp_path: Path, made) -> Path:
    """Submissions that cannot be graded, or crash, or never finish."""
    gen = made(PARTIAL_MODULE)
    folder = tmp_path / "submissions"
    folder.mkdir()
    student = json.loads(gen.student.read_text())
    (folder / "corrupt.ipynb").write_text('{"cells": [')
    other = json.loads(json.dumps(student))
    other["metadata"]["otter"]["assignment_name"] = "03_serving"
    (folder / "other_module.ipynb").write_text(json.dumps(other))
    del other["metadata"]["otter"]
    (folder / "no_name.ipynb").write_text(json.dumps(other))
    (folder / "notes.txt").write_text("my answers are in the notebook")

    def one_cell(source: str) -> str:
        cell = {
            "cell_type": "code",
            "execution_count": None,
            "id": "c0",
            "metadata": {},
            "outputs": [],
            "source": source,
        }
        return json.dumps({**student, "cells": [cell]})

    (folder / "raises.ipynb").write_text(one_cell("raise RuntimeError('my code crashed')"))
    (folder / "loops.ipynb").write_text(one_cell("import time\n\nwhile True:\n    time.sleep(0.1)"))
    return folder


def test_bad_submissions_get_a_zero_and_a_reason(broken_folder: Path, made, tmp_path: Path) -> None:
    gen = made(PARTIAL_MODULE)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    # a short limit stops the loop soon (it sleeps: it waits without taking a core); the other files fail before
    # running or run in seconds, two at a time
    graded = grade(PARTIAL_MODULE, broken_folder, tmp_path / "out", autograder=gen.autograder_zip, timeout=20, jobs=2)
    scores = {s.learner: s for s in graded}
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not left, f"grading left processes behind: {[p.cmdline() for p in left]}"
    assert set(scores) == {"corrupt", "other_module", "no_name", "notes", "raises", "loops"}, "every file gets a row"
    assert all(s.total == 0 for s in scores.values()), {n: s.total for n, s in scores.items()}
    reasons = {n: s.error or "" for n, s in scores.items()}
    assert "not a readable notebook" in reasons["corrupt"]
    assert "for '03_serving', not '00_design'" in reasons["other_module"]
    assert "no assignment name" in reasons["no_name"]
    assert "not a notebook (.txt)" in reasons["notes"]
    assert "did not finish in 20 s" in reasons["loops"]
    assert scores["raises"].error is None, "a notebook whose code raises is graded (0), not refused"
    feedback = (tmp_path / "out" / "feedback" / "raises.md").read_text()
    assert "failed" in feedback and "Not graded" not in feedback
    assert all((tmp_path / "out" / "feedback" / f"{n}.md").is_file() for n in scores)


def test_a_missing_or_empty_folder_or_unknown_module_is_a_clear_error(tmp_path: Path, made) -> None:
    zip_file = made(PARTIAL_MODULE).autograder_zip
    with pytest.raises(FileNotFoundError, match="no folder of submissions"):
        grade(PARTIAL_MODULE, tmp_path / "nowhere", tmp_path / "out", autograder=zip_file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        grade(PARTIAL_MODULE, tmp_path / "empty", tmp_path / "out", autograder=zip_file)
    with pytest.raises(ValueError, match="no module '42'"):
        grade("42", tmp_path / "empty", tmp_path / "out")
    (tmp_path / "modules" / "99_later").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no exercises"):
        master_of("99", root=tmp_path)
