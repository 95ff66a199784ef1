"""One submission graded by `otter run` (no containers), in a process of its own: `grade` runs this file and can
stop it, kernel and all, when a notebook never finishes. It imports nothing from `common`, so a grading process
loads only Otter.

Usage: python common/course/_otter_run.py AUTOGRADER_ZIP NOTEBOOK RESULT_JSON
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The grading kernel imports otter too (the notebook's first cell): the IRI grammar is left out there by an IPython
# startup file in a profile of its own, which also keeps the grader's own IPython settings out of grading.
_KERNEL_STARTUP = (
    "import sys\n\nif 'jsonschema' not in sys.modules:\n    sys.modules.setdefault('rfc3987_syntax', None)\n"
)


@contextmanager
def without_iri_grammar() -> Iterator[None]:
    """Import otter (and through it nbformat and jsonschema) without jsonschema's optional IRI checker.

    When the package rfc3987-syntax is installed, importing jsonschema builds its IRI grammar: seconds of CPU in
    every process that imports nbformat, as much as the rest of otter's import or more. Notebook schemas use no
    IRI format, so the checker is left out (only if jsonschema is not imported yet; it stays out in this process).
    """
    blocked = "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules
    if blocked:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # an import of it then raises ImportError
    try:
        yield
    finally:
        if blocked:
            del sys.modules["rfc3987_syntax"]


def results(autograder: str, notebook: str) -> dict[str, Any]:
    """Per question: points scored and possible, and per test case whether it passed and what it said."""
    with without_iri_grammar():
        from otter.api import grade_submission  # type: ignore[import-untyped]

    graded = grade_submission(notebook, autograder, quiet=True)
    if graded.catastrophic_error is not None:
        return {"error": f"the notebook stopped the grader before its checks ran: {graded.catastrophic_error}"}
    return {
        "questions": [
            {
                "name": name,
                "score": tf.score,
                "possible": tf.possible,
                "tests": [
                    {"name": r.test_case.name, "hidden": r.test_case.hidden, "passed": r.passed, "message": r.message}
                    for r in tf.test_case_results
                ],
            }
            for name, tf in sorted(graded.results.items())
        ]
    }


def main(argv: list[str]) -> int:
    autograder, notebook, out = argv
    with tempfile.TemporaryDirectory(prefix="ipython-") as ipython:
        startup = Path(ipython, "profile_default", "startup")
        startup.mkdir(parents=True)
        (startup / "00-no-iri-grammar.py").write_text(_KERNEL_STARTUP)
        os.environ["IPYTHONDIR"] = ipython
        try:
            payload = results(autograder, notebook)
        except Exception as err:  # whatever the submission did, the instructor gets a reason, not a traceback
            payload = {"error": f"grading failed: {type(err).__name__}: {err}"}
    Path(out).write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
