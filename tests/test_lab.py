"""`make lab` opens on the course: the start-here notebook, the hpai kernel, no build clutter, no news prompt.

One server, started by `make lab` itself, and asked through Jupyter's REST API what a browser would be shown
(headless Chromium screenshots checked the same things by eye; this test needs no browser).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
START_HERE = "notebooks/00_start_here.ipynb"
KERNEL = re.findall(r"^KERNEL := (\S+)$", (ROOT / "Makefile").read_text(), re.M)[0]  # the kernel `make setup` registers
STARTUP_SECONDS = 60  # a deadline, not a measurement: it starts in 3-13 s on 2 busy cores


@dataclass(frozen=True)
class Lab:
    url: str  # as `make lab` prints it, token included
    log: Path

    def get(self, path: str) -> httpx.Response:
        parts = urlsplit(self.url)
        token = parts.query.removeprefix("token=")
        return httpx.get(f"{parts.scheme}://{parts.netloc}{path}", headers={"Authorization": f"token {token}"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM to make and the server it started (a clean Jupyter shutdown), SIGKILL to whatever outlives grace."""
    pgid = proc.pid  # start_new_session: make leads its own process group, and the server is in it
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    home = tmp_path_factory.mktemp("jupyter")
    log = home / "lab.log"
    # Nothing from the caller's make (`make test` runs pytest) or Jupyter configuration reaches this make.
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_CONFIG_PATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    # The learner's state (config, workspaces, runtime files) goes to a fresh folder: what a first run sees.
    env |= {f"JUPYTER_{d}_DIR": str(home / d.lower()) for d in ("CONFIG", "DATA", "RUNTIME")}
    # -o: treat the venv's stamp as up to date, so a test never reinstalls the environment it runs in.
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"PORT={free_port()}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not (found := re.search(r"http://127\.0\.0\.1:\d+/\S*\?token=\w+", log.read_text())):
            assert proc.poll() is None, f"make lab exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"make lab printed no URL in {STARTUP_SECONDS} s:\n{log.read_text()}"
            time.sleep(0.2)
        yield Lab(found.group(0), log)
    finally:
        stop_group(proc)


def test_the_printed_url_opens_the_start_here_notebook(lab: Lab) -> None:
    assert urlsplit(lab.url).path == f"/lab/tree/{START_HERE}"
    page = httpx.get(lab.url)
    assert page.status_code == 200, page.text
    # JupyterLab opens the document its page config names as treePath.
    config = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page.text, re.S)
    assert config, "the lab page has no page config"
    assert json.loads(config.group(1))["treePath"] == START_HERE
    notebook = lab.get(f"/api/contents/{START_HERE}")
    assert notebook.status_code == 200, notebook.text
    assert notebook.json()["content"]["metadata"]["kernelspec"]["name"] == KERNEL


def test_the_course_kernel_is_the_only_one_and_the_default(lab: Lab) -> None:
    specs = lab.get("/api/kernelspecs").json()
    assert specs["default"] == KERNEL
    assert set(specs["kernelspecs"]) == {KERNEL}


def test_the_file_browser_hides_the_editable_install_metadata(lab: Lab) -> None:
    on_disk = {p.name for p in ROOT.glob("*.egg-info")}
    assert on_disk, "no *.egg-info at the top: if the install stopped writing one, drop the hide glob and this test"
    listed = {item["name"] for item in lab.get("/api/contents").json()["content"]}
    assert {"modules", "notebooks", "common"} <= listed
    assert not listed & on_disk


def test_jupyter_news_prompt_is_off(lab: Lab) -> None:
    # The prompt appears while fetchNews is "none" (ask); the course sets its default to "false" (never).
    answer = lab.get("/lab/api/settings/@jupyterlab/apputils-extension:notification").json()
    default = answer["schema"]["properties"]["fetchNews"]["default"]
    assert answer["settings"].get("fetchNews", default) == "false"
