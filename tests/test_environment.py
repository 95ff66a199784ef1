"""The setup files agree with each other: pyproject, constraints, environment.yml, Makefile, CI."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def makefile_var(name: str) -> str:
    return re.search(rf"^{name} :?= (.+)$", MAKEFILE, re.M).group(1).strip()


def test_torch_is_pinned_to_the_version_on_disk():
    assert "torch==2.13.0" in PYPROJECT["project"]["dependencies"]
    assert constraints()["torch"] == "2.13.0"


def test_every_dependency_is_pinned_and_the_pin_satisfies_it():
    pins = constraints()
    reqs = list(PYPROJECT["project"]["dependencies"])
    for extra in makefile_var("EXTRAS").split(","):
        reqs += PYPROJECT["project"]["optional-dependencies"][extra]
    for text in reqs:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but has no pin in requirements/constraints.txt (run make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req.specifier}"


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    version = python.split("=", 1)[1]
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(version + ".0")
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert f"--editable .[{makefile_var('EXTRAS')}]" in pip_section, (
        "environment.yml must install the same extras as make"
    )
    assert "--constraint requirements/constraints.txt" in pip_section


def test_kernel_name_is_the_same_everywhere():
    kernel = makefile_var("KERNEL")
    assert f"--name {kernel} " in (ROOT / "postBuild").read_text()


def test_ci_runs_make_test_and_nothing_a_fresh_clone_lacks():
    lines = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert "make test" in lines
    assert not any(w in " ".join(lines) for w in ("pip install", "/opt/", ".venv/"))
    # The one system package CI installs: SoftHSM2, the PKCS#11 token of module 04's HSM tests.
    installs = [ln for ln in lines if "apt-get install" in ln]
    assert all("softhsm2" in ln for ln in installs), installs


def test_make_help_lists_every_target():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    targets = ("lab", "serve", "test", "test-unit", "test-notebooks", "html", "bench", "perf-gate", "lint", "format")
    for target in (*targets, "strip", "clean"):
        assert f"make {target} " in out, target


def test_readme_starts_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:15])
    assert "make lab" in head and "make test" in head
