"""`make hub`: a real JupyterHub, its proxy and two learners' servers, asked what a class would do.

One hub, started by `make hub` itself on a free port with two learners, in a fresh state folder. Each learner
logs in through the hub's REST API (a token for their username and password), starts a server, pulls the
course with the link `make hub` prints and sees the `hpai` kernel. Then each check tries what one learner
must not be able to do to the other, and says which refusal it expected. The hub is stopped the way an
instructor stops it, Ctrl-C (SIGINT to make's process group), and no process it started may be left.

With root and an environment every account can run, the hub gives each learner a Unix account (removed
afterwards) and a check proves isolation at the OS level too; otherwise the hub runs every server as its own
user (HUB_ISOLATION=shared) and that check skips, saying what it needs. The accounts' own promises (private
homes, git trusting the course) are tested on real accounts whenever the test runs as root.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest

from common.course.hub import (
    COURSE_DIR,
    START_HERE,
    STATE_ENV,
    UNIX_COMMENT,
    CoursePasswordAuthenticator,
    HubSettings,
    closed_to_learners,
    configure,
    ensure_passwords,
    ensure_unix_user,
    parse_users,
    read_passwords,
)

ROOT = Path(__file__).resolve().parents[2]
KERNEL = re.findall(r"^KERNEL := (\S+)$", (ROOT / "Makefile").read_text(), re.M)[0]
PROXY = ROOT / "build/hub/node_modules/.bin/configurable-http-proxy"
PROGRAMS = {"jupyterhub", "configurable-http-proxy", "jupyterhub-singleuser"}
DEADLINE_S = 240  # a deadline, not a measurement: 5-25 s is usual; a hub start took 2 min once on 2 saturated cores
IS_ROOT = os.geteuid() == 0
# One Unix account per learner needs root and an environment other accounts can run; otherwise the hub runs
# every server as its own user (HUB_ISOLATION=shared), and only the hub's refusals are tested.
CLOSED = closed_to_learners()
ACCOUNTS = IS_ROOT and CLOSED is None
NO_ACCOUNTS = "needs root and a Python environment every account can run, for one Unix account per learner: " + (
    "not root" if not IS_ROOT else f"{CLOSED}"
)


@dataclass
class Learner:
    name: str
    password: str
    client: httpx.Client  # to the hub's URL; with the learner's token on every request once logged in

    def server(self, path: str = "") -> str:
        return f"/user/{self.name}/{path}"


@dataclass
class Hub:
    url: str
    link: str  # the course link `make hub` printed
    state: Path
    log: Path
    learners: tuple[Learner, Learner]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hub_processes(state: Path) -> list[psutil.Process]:
    """Every process serving this hub: the launcher names the state folder in the environment of the hub, which
    its proxy inherits, and of each learner's server (the spawner's environment)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(STATE_ENV) == str(state):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {proc.name()} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return out


def read_stream(response: httpx.Response) -> list[dict[str, object]]:
    """The events of nbgitpuller's event stream (`data: {json}` lines)."""
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def wait_for(what: str, check, log: Path, proc: subprocess.Popen[bytes]):
    deadline = time.monotonic() + DEADLINE_S
    while not (found := check()):
        assert proc.poll() is None, (
            f"make hub exited with {proc.returncode} while waiting for {what}:\n{log.read_text()}"
        )
        assert time.monotonic() < deadline, f"no {what} after {DEADLINE_S} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.25)
    return found


def remove_unix_account(name: str) -> None:
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return
    assert account.pw_gecos == UNIX_COMMENT, f"{name} is not an account the hub created: not removing it"
    # userdel warns (exit 12 on some systems) when the account had no mail spool; what matters is that it is gone
    subprocess.run(["userdel", "--remove", name], capture_output=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    branch = subprocess.run(["git", "-C", ROOT, "symbolic-ref", "-q", "HEAD"], capture_output=True)
    if branch.returncode:
        pytest.skip("needs the checkout on a branch: the course link pulls a branch (nbgitpuller), HEAD is detached")
    if not os.access(PROXY, os.X_OK) and shutil.which("npm") is None:
        pytest.skip("needs configurable-http-proxy, which `make hub` installs with npm: no npm on this machine")
    if ACCOUNTS and shutil.which("useradd") is None:
        pytest.skip("needs useradd: as root the hub gives each learner a Unix account")
    state = tmp_path_factory.mktemp("hub")
    log = tmp_path_factory.mktemp("hub-log") / "make-hub.log"
    tag = secrets.token_hex(2)
    names = (f"hpaitest{tag}a", f"hpaitest{tag}b")
    # Nothing from the caller's make (`make test` runs pytest) reaches this make; -o: the venv is up to date.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "hub", f"PORT={free_port()}"]
    command += [f"HUB_USERS={','.join(names)}", f"HUB_DIR={state}", "HUB_IP=127.0.0.1", f"HUB_REPO={ROOT}"]
    command += [f"HUB_ISOLATION={'accounts' if ACCOUNTS else 'shared'}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    leftovers: list[str] = []
    try:
        link = wait_for("course link", lambda: re.search(r"course link: (\S+)", log.read_text()), log, proc).group(1)
        url = link.split("/hub/", 1)[0]
        wait_for("hub API", lambda: _answers(f"{url}/hub/api/"), log, proc)
        passwords = dict(line.split() for line in (state / "passwords").read_text().splitlines()[1:])
        a, b = (Learner(name, passwords[name], httpx.Client(base_url=url, timeout=60)) for name in names)
        yield Hub(url, link, state, log, (a, b))
        a.client.close()
        b.client.close()
    finally:
        # Ctrl-C, as an instructor stops the class: the terminal sends SIGINT to make and the hub.
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.5)  # the proxy and the servers get their signal from the hub, just before it exits
        left = hub_processes(state)
        leftovers = describe(left)
        for p in left:
            p.kill()
        psutil.wait_procs(left, timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if ACCOUNTS:
            for name in names:
                remove_unix_account(name)
    assert not leftovers, f"processes left after Ctrl-C (killed now): {leftovers}"
    assert proc.returncode is not None
    text = log.read_text()
    assert not [pw for pw in passwords.values() if pw in text], "a password appears in make hub's output"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def running(hub: Hub) -> Hub:
    """Both learners logged in through the REST API, their servers started and the course pulled."""
    for learner in hub.learners:
        answer = learner.client.post(
            f"/hub/api/users/{learner.name}/tokens",
            json={"auth": {"username": learner.name, "password": learner.password}, "note": "test_hub"},
        )
        assert answer.status_code == 201, answer.text
        learner.client.headers["Authorization"] = f"token {answer.json()['token']}"
        started = learner.client.post(f"/hub/api/users/{learner.name}/server")
        assert started.status_code in (201, 202), started.text + hub.log.read_text()[-4000:]  # 202: starting
    for learner in hub.learners:

        def ready(learner: Learner = learner) -> bool:
            model = learner.client.get(f"/hub/api/users/{learner.name}").json()
            return bool(model["servers"].get("", {}).get("ready"))

        deadline = time.monotonic() + DEADLINE_S
        while not ready():
            assert time.monotonic() < deadline, f"{learner.name}'s server not ready:\n{hub.log.read_text()[-4000:]}"
            time.sleep(0.25)
    query = {k: v[0] for k, v in parse_qs(urlsplit(hub.link).query).items()}
    for learner in hub.learners:
        # What the link's page does in the browser: nbgitpuller's event stream clones the course.
        pulled = learner.client.get(
            learner.server("git-pull/api"),
            params={k: query[k] for k in ("repo", "branch", "targetpath")},
            timeout=DEADLINE_S,
        )
        events = read_stream(pulled)
        assert pulled.status_code == 200 and events and events[-1]["phase"] == "finished", pulled.text[-2000:]
    return hub


@pytest.mark.slow
def test_the_printed_link_pulls_this_course_into_the_learners_home(hub: Hub) -> None:
    parts = urlsplit(hub.link)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path == "/hub/user-redirect/git-pull"
    assert query["repo"] == str(ROOT)
    assert query["targetpath"] == COURSE_DIR
    assert query["urlpath"] == f"lab/tree/{COURSE_DIR}/{START_HERE}"


@pytest.mark.slow
def test_each_learner_sees_the_course_and_only_the_course_kernel(running: Hub) -> None:
    for learner in running.learners:
        # the server opens on the course link (its default URL), so logging in is enough to get the course
        home = learner.client.get(learner.server())
        assert home.status_code == 302 and "/git-pull?" in home.headers["location"], home.headers
        notebook = learner.client.get(learner.server(f"api/contents/{COURSE_DIR}/{START_HERE}"))
        assert notebook.status_code == 200, notebook.text
        assert notebook.json()["content"]["metadata"]["kernelspec"]["name"] == KERNEL
        specs = learner.client.get(learner.server("api/kernelspecs")).json()
        assert specs["default"] == KERNEL and set(specs["kernelspecs"]) == {KERNEL}, specs


@pytest.mark.slow
def test_a_learners_token_is_refused_on_the_other_learners_server_and_files(running: Hub) -> None:
    a, b = running.learners
    for path in ("api/contents", f"api/contents/{COURSE_DIR}/README.md", f"files/{COURSE_DIR}/README.md", "lab"):
        answer = a.client.get(b.server(path))
        # jupyterhub-singleuser: an authenticated user without access to this server gets 403, not a login page
        assert answer.status_code == 403, f"{a.name}'s token on {b.server(path)}: {answer.status_code}"
        assert "README" not in answer.text
    # the hub's API neither shows b to a nor lets a start or stop b's server: 404, as for a user that does not exist
    assert a.client.get(f"/hub/api/users/{b.name}").status_code == 404
    assert a.client.delete(f"/hub/api/users/{b.name}/server").status_code == 404
    assert a.client.post(f"/hub/api/users/{b.name}/tokens", json={}).status_code == 403


@pytest.mark.slow
def test_a_learners_password_does_not_log_in_as_the_other(running: Hub) -> None:
    a, b = running.learners
    anonymous = httpx.Client(base_url=running.url, timeout=30)
    as_b = anonymous.post(
        f"/hub/api/users/{b.name}/tokens", json={"auth": {"username": b.name, "password": a.password}}
    )
    assert as_b.status_code == 403, as_b.text
    # the login form, as a browser posts it (with the form's xsrf token): 403 and no session for b
    form = anonymous.get("/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    assert xsrf, form.text
    posted = anonymous.post("/hub/login", data={"username": b.name, "password": a.password, "_xsrf": xsrf.group(1)})
    assert posted.status_code == 403 and "Invalid username or password" in posted.text
    assert (
        anonymous.get(b.server("api/contents")).status_code == 403
    )  # no session: the API refuses, it does not redirect


@pytest.mark.slow
def test_a_learners_browser_session_is_refused_on_the_other_learners_server(running: Hub) -> None:
    a, b = running.learners
    browser = httpx.Client(base_url=running.url, timeout=30)
    form = browser.get("/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    assert xsrf, form.text
    logged_in = browser.post("/hub/login", data={"username": a.name, "password": a.password, "_xsrf": xsrf.group(1)})
    assert logged_in.status_code == 302, logged_in.text
    # the printed link, as a learner clicks it: through the hub and the OAuth handshake to nbgitpuller's page
    # on their own server (whose script then pulls, as the `running` fixture did through its API)
    page = browser.get(running.link.removeprefix(running.url), follow_redirects=True)
    assert page.status_code == 200 and page.url.path == a.server("git-pull"), (page.status_code, page.url)
    assert f'data-targetpath="{COURSE_DIR}"' in page.text
    # b's server sends the browser to the hub to authorize it; the hub refuses a: 403, never b's page
    answer = browser.get(b.server("lab"))
    hops = 0
    while answer.status_code in (301, 302, 303, 307) and hops < 10:
        assert "/hub/login" not in answer.headers["location"], "a is logged in: the hub must refuse, not ask to log in"
        answer = browser.get(answer.headers["location"])
        hops += 1
    assert answer.status_code == 403, f"{a.name}'s session on {b.server('lab')}: {answer.status_code} after {hops} hops"


@pytest.mark.slow
@pytest.mark.skipif(not ACCOUNTS, reason=NO_ACCOUNTS)
def test_each_server_runs_as_its_learner_who_cannot_read_the_other_home(running: Hub) -> None:
    a, b = running.learners
    servers = {}
    for proc in hub_processes(running.state):
        env = proc.environ()
        if "JUPYTERHUB_USER" in env:
            servers[env["JUPYTERHUB_USER"]] = proc
    assert set(servers) == {a.name, b.name}, describe(list(servers.values()))
    for learner in (a, b):
        account = pwd.getpwnam(learner.name)
        assert servers[learner.name].uids().real == account.pw_uid, f"{learner.name}'s server runs as another uid"
        home = Path(account.pw_dir)
        assert home.stat().st_uid == account.pw_uid and home.stat().st_mode & 0o777 == 0o700
    account = pwd.getpwnam(a.name)
    target = Path(pwd.getpwnam(b.name).pw_dir) / COURSE_DIR / "README.md"
    assert target.exists()  # root sees it: b has the course, and a is refused it below
    attempt = subprocess.run(
        [sys.executable, "-c", f"open({str(target)!r}).read()"],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
    )
    assert attempt.returncode == 1 and "PermissionError" in attempt.stderr, attempt.stderr


# -- the pieces, without a hub -----------------------------------------------------------------------------------


def test_the_class_list_is_lowercased_deduplicated_and_checked() -> None:
    assert parse_users(" Ada,alan  grace,ada ") == ("ada", "alan", "grace")
    with pytest.raises(ValueError, match="no user names"):
        parse_users(" , ")
    with pytest.raises(ValueError, match=r"\['1bob', 'x/y'\]"):
        parse_users("ada,1bob,x/y")


def test_passwords_are_private_kept_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    first = ensure_passwords(path, ["ada", "alan"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert first["ada"] != first["alan"] and len(first["ada"]) == 14
    again = ensure_passwords(path, ["ada", "alan", "grace"])  # a learner joins: the others keep theirs
    assert again == first | {"grace": again["grace"]} and read_passwords(path) == again
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        read_passwords(path)


def test_each_learner_logs_in_with_their_own_password_only(tmp_path: Path) -> None:
    import asyncio

    passwords = ensure_passwords(tmp_path / "passwords", ["ada", "alan"])
    auth = CoursePasswordAuthenticator(passwords_file=str(tmp_path / "passwords"))

    def login(name: str, password: str) -> str | None:
        return asyncio.run(auth.authenticate(None, {"username": name, "password": password}))

    assert login("ada", passwords["ada"]) == "ada"
    assert login("Ada", passwords["ada"]) == "ada"  # JupyterHub's names are lowercase
    assert login("alan", passwords["ada"]) is None
    assert login("grace", passwords["ada"]) is None  # not in the file
    assert login("ada", "") is None


def test_a_system_account_is_never_a_learner() -> None:
    with pytest.raises(PermissionError, match="system account with uid 0"):
        ensure_unix_user("root")


@pytest.mark.parametrize("unix_users", [True, False])
def test_configure_runs_this_environments_server_on_the_course_link(tmp_path: Path, unix_users: bool) -> None:
    from traitlets.config import Config

    settings = HubSettings(
        state_dir=tmp_path, users=("ada", "alan"), repo=str(ROOT), branch="main", proxy=PROXY, unix_users=unix_users
    )
    c = Config()
    configure(c, settings)
    assert c.Authenticator.allowed_users == {"ada", "alan"}
    assert c.Spawner.cmd == [str(Path(sys.executable).parent / "jupyterhub-singleuser")]
    assert c.Spawner.default_url.startswith("/git-pull?") and f"targetpath={COURSE_DIR}" in c.Spawner.default_url
    assert c.Spawner.environment["JUPYTER_CONFIG_PATH"] == str(ROOT / ".jupyter")
    assert c.JupyterHub.spawner_class.__name__ == ("UnixUserSpawner" if unix_users else "SimpleLocalProcessSpawner")
    settings.save()  # what the launcher writes and jupyterhub_config.py reads back
    assert HubSettings.load(tmp_path) == settings


def _closed_to_others(path: Path) -> Path | None:
    """The first folder on the way to `path` that other accounts cannot enter (no o+x), or None."""
    for folder in (*reversed(path.parents), path):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


NEEDS_ACCOUNTS = pytest.mark.skipif(
    not IS_ROOT or shutil.which("useradd") is None, reason="needs root and useradd: it makes accounts"
)


@NEEDS_ACCOUNTS
@pytest.mark.skipif(
    _closed_to_others(ROOT) is not None,
    reason=f"needs a checkout other accounts can enter: {_closed_to_others(ROOT)} has no o+x (a mktemp folder is 0700)",
)
def test_a_learner_account_can_pull_the_course() -> None:
    """git (nbgitpuller) run as a learner reads this checkout although root owns it."""
    name = f"hpaitest{secrets.token_hex(2)}p"
    try:
        account = ensure_unix_user(name, ROOT)
        remote = subprocess.run(
            ("git", "ls-remote", "--symref", "--", str(ROOT), "HEAD"),
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            env={"HOME": account.pw_dir, "PATH": os.defpath},
            capture_output=True,
            text=True,
        )
        assert remote.returncode == 0 and remote.stdout.startswith("ref: refs/heads/"), remote.stderr
    finally:
        remove_unix_account(name)
    assert not _account_exists(name)


@NEEDS_ACCOUNTS
def test_learner_accounts_are_private(tmp_path: Path) -> None:
    """What UnixUserSpawner does before each start, on two real accounts (removed afterwards): even where the
    hub itself cannot use accounts (see NO_ACCOUNTS), this holds the accounts' part to its promises."""
    tag = secrets.token_hex(2)
    names = (f"hpaitest{tag}a", f"hpaitest{tag}b")
    try:
        a, b = (ensure_unix_user(name, ROOT) for name in names)
        for account in (a, b):
            home = Path(account.pw_dir)
            assert account.pw_uid >= 1000 and account.pw_gecos == UNIX_COMMENT
            assert home.stat().st_uid == account.pw_uid and home.stat().st_mode & 0o777 == 0o700
        assert ensure_unix_user(a.pw_name, ROOT) == a  # the second start finds the account as it left it

        def as_user(account: pwd.struct_passwd, *command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                command,
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
                env={"HOME": account.pw_dir, "PATH": os.defpath},
                capture_output=True,
                text=True,
            )

        secret = Path(b.pw_dir) / "notes.txt"
        secret.write_text("b's work")
        os.chown(secret, b.pw_uid, b.pw_gid)
        assert as_user(b, "cat", str(secret)).stdout == "b's work"
        refused = as_user(a, "cat", str(secret))
        assert refused.returncode == 1 and "Permission denied" in refused.stderr, refused
    finally:
        for name in names:
            remove_unix_account(name)
    assert not [name for name in names if _account_exists(name)]


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_the_launcher_refuses_a_system_account_as_a_learner(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import common.course.hub as hub

    monkeypatch.setattr(hub, "choose_accounts", lambda isolation: True)  # as if root, with an open environment
    argv = ["--users", "ada,Root", "--proxy", "/bin/true", "--branch", "main", "--state-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        hub.main(argv)
    assert exited.value.code == 2
    assert "['root']: system accounts on this machine" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before writing anything
