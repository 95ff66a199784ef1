"""JupyterHub for a class on one machine: `make hub` (docs/instructors.md says how to run a class with it).

What it decides, and why:
- Login: each learner has their own generated password (`CoursePasswordAuthenticator`), kept in
  `<state>/passwords` (mode 0600: the instructor hands out the lines; the hub never prints them).
  JupyterHub's own `SharedPasswordAuthenticator` was not used: anyone holding its one password may log in
  as any other user, so no learner would be kept out of another's server.
- Who: the allowed-users list the instructor gives (`HUB_USERS`); no open signup, so nobody else on the
  network can make an account.
- Where servers run: when the hub runs as root, each learner has their own Unix account (`UnixUserSpawner`:
  JupyterHub's LocalProcessSpawner, which also creates the account, home 0700, when the learner's server
  first starts). A learner's notebook code then runs with their own uid and cannot read another's home.
  Without root the servers all run as the hub's user (JupyterHub's `SimpleLocalProcessSpawner`, homes under
  `<state>/home`): the hub still refuses one learner's credentials on another's server, but code run in a
  notebook can read every home. The launcher says which of the two it is.
- What they run: this environment's `jupyterhub-singleuser`, so every learner has the course kernel `hpai`
  (registered in the environment by `make setup`) and the course's Jupyter settings (`.jupyter/`, as
  `make lab` uses them: the course kernel only).
- The course: each server's default URL is an nbgitpuller link. The first visit clones the course into
  `~/hpai-course`, later visits merge the instructor's updates and keep the learner's edits.

JupyterHub reads `jupyterhub_config.py` beside this file, which applies `configure` to the settings that
`python -m common.course.hub` wrote into the state folder: the decisions are code here, checked by ruff,
mypy and tests/course/test_hub.py; only the values of one run (users, ports, folders) are generated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import secrets
import socket
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from hmac import compare_digest
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from jupyterhub.auth import Authenticator  # type: ignore[import-untyped]
from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner  # type: ignore[import-untyped]
from traitlets import Unicode

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the course repository and its .jupyter/ settings
CONFIG_FILE = Path(__file__).with_name("jupyterhub_config.py")
DEFAULT_STATE_DIR = ROOT / "build" / "hub"
DEFAULT_PROXY = DEFAULT_STATE_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
STATE_ENV = "HPAI_HUB_DIR"  # set for the hub, its proxy and every server: it names the state folder they serve
COURSE_DIR = "hpai-course"  # where the course lands in each learner's home
START_HERE = "notebooks/00_start_here.ipynb"
UNIX_COMMENT = "hpai course hub user"  # the GECOS field of the accounts the hub creates
FIRST_HUMAN_UID = 1000  # below: system accounts (root, daemon, ...), which no learner may run as
# What useradd accepts and JupyterHub keeps as it is (it lowercases names): a letter, then up to 31 more.
USERNAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud or copied from a slip of paper


@dataclass(frozen=True)
class HubSettings:
    """The values of one run of the hub; `configure` turns them into JupyterHub's configuration."""

    state_dir: Path  # database, cookie secret, passwords, these settings (mode 0700)
    users: tuple[str, ...]
    repo: str  # what the course link pulls: a git URL or a local repository's path
    branch: str
    proxy: Path  # configurable-http-proxy
    ip: str = "0.0.0.0"
    port: int = 8888
    hub_port: int = 8081  # the hub's own API, on 127.0.0.1: the proxy and the servers call it
    proxy_api_port: int = 8001  # the proxy's REST API, on 127.0.0.1: only the hub calls it
    unix_users: bool = False  # one Unix account per learner (needs root)

    @property
    def passwords_file(self) -> Path:
        return self.state_dir / "passwords"

    def save(self) -> None:
        values = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        (self.state_dir / "settings.json").write_text(json.dumps(values, indent=1) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> HubSettings:
        try:
            values = json.loads((state_dir / "settings.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no hub settings in {state_dir}: start the hub with `make hub` (python -m common.course.hub)"
            ) from None
        paths = {"state_dir": Path(values["state_dir"]), "proxy": Path(values["proxy"])}
        return cls(**values | paths | {"users": tuple(values["users"])})


def load_settings() -> HubSettings:
    """The settings of the hub being started (jupyterhub_config.py calls this): `$HPAI_HUB_DIR/settings.json`."""
    if STATE_ENV not in os.environ:
        raise RuntimeError(f"${STATE_ENV} is not set: start the hub with `make hub` (python -m common.course.hub)")
    return HubSettings.load(Path(os.environ[STATE_ENV]))


def parse_users(text: str) -> tuple[str, ...]:
    """The class list from `HUB_USERS` ("ada,alan grace"): lowercased, in order, each once."""
    names = list(dict.fromkeys(name.lower() for name in re.split(r"[\s,]+", text.strip()) if name))
    if not names:
        raise ValueError("no user names given: HUB_USERS=ada,alan (comma or space separated)")
    bad = [name for name in names if not USERNAME.fullmatch(name)]
    if bad:
        raise ValueError(
            f"not usable as user names: {bad}; a name starts with a letter and has up to 32 letters, digits, - or _"
        )
    return tuple(names)


# -- passwords ------------------------------------------------------------------------------------------------


def read_passwords(path: Path) -> dict[str, str]:
    """`name password` lines ('#' starts a comment). Refuses a file that others than its owner can read."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} holds passwords but has mode {mode:04o}: `chmod 600 {path}`")
    passwords = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected `name password`, found {len(fields)} fields")
        passwords[fields[0]] = fields[1]
    return passwords


def new_password() -> str:
    """12 characters (about 60 bits) in three groups, e.g. k7mq-x2fp-9hwe."""
    chars = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(12))
    return "-".join(chars[i : i + 4] for i in range(0, 12, 4))


def ensure_passwords(path: Path, users: Sequence[str]) -> dict[str, str]:
    """Every user has a password in `path` (mode 0600): existing ones are kept, missing ones generated."""
    passwords = read_passwords(path) if path.exists() else {}
    missing = [name for name in users if name not in passwords]
    if missing or not path.exists():
        passwords |= {name: new_password() for name in missing}
        lines = ["# make hub: one line per learner, `name password`; hand each learner their own line only"]
        lines += [f"{name} {password}" for name, password in passwords.items()]
        partial = path.with_name(path.name + ".new")
        partial.unlink(missing_ok=True)
        # created 0600, so the passwords are never readable by others, not even for an instant
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write("\n".join(lines) + "\n")
        partial.replace(path)
    return passwords


class CoursePasswordAuthenticator(Authenticator):
    """One password per learner, read from a file only the instructor can read (see `ensure_passwords`).

    The file is read at each login, so a password changed in it takes effect without restarting the hub.
    Only the names in `allowed_users` get in (configure sets it to the class list).
    """

    passwords_file = Unicode(config=True, help="`name password` lines, mode 0600")

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        name = self.normalize_username(data.get("username", ""))
        expected = read_passwords(Path(self.passwords_file)).get(name)
        given = data.get("password", "")
        if expected is None or not compare_digest(given.encode(), expected.encode()):
            return None
        return str(name)


# -- Unix accounts --------------------------------------------------------------------------------------------


def _as_user(account: pwd.struct_passwd, *command: str) -> subprocess.CompletedProcess[str]:
    env = {"HOME": account.pw_dir, "PATH": os.environ.get("PATH", os.defpath)}
    return subprocess.run(
        command,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        cwd=account.pw_dir,
        env=env,
        capture_output=True,
        text=True,
    )


def trust_repository(account: pwd.struct_passwd, repo: Path) -> None:
    """Let the account's git read a local course repository that another user owns.

    git refuses a repository owned by someone else ("dubious ownership") unless the reader's global config
    lists it in safe.directory; git 2.39 reads that setting from no other place a spawner could set it.
    Run as the learner, so root never writes into a home the learner controls.
    """
    listed = _as_user(account, "git", "config", "--global", "--get-all", "safe.directory").stdout.split()
    for path in (str(repo), str(repo / ".git")):
        if path not in listed:
            done = _as_user(account, "git", "config", "--global", "--add", "safe.directory", path)
            if done.returncode:
                raise RuntimeError(f"could not trust {path} for {account.pw_name}: {done.stderr.strip()}")


def ensure_unix_user(name: str, trusted_repo: Path | None = None) -> pwd.struct_passwd:
    """The Unix account of hub user `name`, created the first time (home 0700, shell bash). Needs root.

    An existing account is used as it is, unless it is a system account (uid < 1000: root, daemon, ...),
    which no learner may run as.
    """
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        command = ["useradd", "--create-home", "--shell", "/bin/bash", "--comment", UNIX_COMMENT, name]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"could not create the Unix account {name!r}: {done.stderr.strip()}") from None
        account = pwd.getpwnam(name)
    if account.pw_uid < FIRST_HUMAN_UID:
        raise PermissionError(
            f"hub user {name!r} is the system account with uid {account.pw_uid}: no learner may run as it"
        )
    if account.pw_gecos == UNIX_COMMENT:  # one of ours: its home is private, whatever useradd's defaults are
        os.chmod(account.pw_dir, 0o700)
    if trusted_repo is not None and trusted_repo.stat().st_uid != account.pw_uid:
        trust_repository(account, trusted_repo)
    return account


class UnixUserSpawner(LocalProcessSpawner):
    """LocalProcessSpawner that first makes sure the learner's Unix account exists (`ensure_unix_user`)."""

    trusted_repo = Unicode("", config=True, help="a local course repository each learner's git may read")

    async def start(self) -> Any:
        trusted = Path(self.trusted_repo) if self.trusted_repo else None
        await asyncio.to_thread(ensure_unix_user, self.user.name, trusted)
        return await super().start()


# -- the course link ------------------------------------------------------------------------------------------


def local_repository(repo: str) -> Path | None:
    """The folder of a course repository given as a path or file:// URL; None for a remote URL."""
    if repo.startswith("file://"):
        return Path(urlsplit(repo).path)
    return None if "://" in repo or re.match(r"[\w.-]+@[\w.-]+:", repo) else Path(repo)


def current_branch(repo: Path) -> str:
    """The branch a local repository has checked out: what nbgitpuller will pull (it pulls branches only)."""
    done = subprocess.run(["git", "-C", str(repo), "symbolic-ref", "--short", "-q", "HEAD"], capture_output=True)
    if done.returncode:
        raise ValueError(
            f"{repo} has no branch checked out (a detached HEAD, or not a git repository): nbgitpuller pulls a "
            "branch; check one out, or give the branch (make hub HUB_BRANCH=...)"
        )
    return done.stdout.decode().strip()


def pull_path(repo: str, branch: str) -> str:
    """The nbgitpuller path, relative to a learner's server: clone or update the course, then open the tour."""
    query = {
        "repo": repo,
        "branch": branch,
        "targetpath": COURSE_DIR,
        "urlpath": f"lab/tree/{COURSE_DIR}/{START_HERE}",
    }
    return "/git-pull?" + urlencode(query)


def course_link(hub_url: str, repo: str, branch: str) -> str:
    """The link to hand out: the hub logs the learner in, starts their server, which pulls the course."""
    return hub_url.rstrip("/") + "/hub/user-redirect" + pull_path(repo, branch)


# -- JupyterHub's configuration -------------------------------------------------------------------------------


def configure(c: Any, settings: HubSettings) -> None:
    """Fill JupyterHub's config object `c` (jupyterhub_config.py's) for a class: see the module docstring."""
    state = settings.state_dir
    c.JupyterHub.bind_url = f"http://{settings.ip}:{settings.port}/"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings.hub_port}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    c.ConfigurableHTTPProxy.command = [str(settings.proxy)]
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
    # Ctrl-C (or SIGTERM) stops the proxy and every learner's server with the hub: nothing outlives a class.
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.cleanup_proxy = True

    c.JupyterHub.authenticator_class = CoursePasswordAuthenticator
    c.CoursePasswordAuthenticator.passwords_file = str(settings.passwords_file)
    c.Authenticator.allowed_users = set(settings.users)
    c.Authenticator.allow_existing_users = False  # a name dropped from HUB_USERS is out, even if the database knows it

    singleuser = Path(sysconfig.get_path("scripts")) / "jupyterhub-singleuser"
    c.Spawner.cmd = [str(singleuser)]
    c.Spawner.notebook_dir = "~"
    c.Spawner.default_url = pull_path(settings.repo, settings.branch)
    c.Spawner.environment = {"JUPYTER_CONFIG_PATH": str(ROOT / ".jupyter"), STATE_ENV: str(state)}
    # a class logs in at once on a small machine: give a server time to start before the hub gives up on it
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 120
    if settings.unix_users:
        c.JupyterHub.spawner_class = UnixUserSpawner
        local = local_repository(settings.repo)
        c.UnixUserSpawner.trusted_repo = str(local.resolve()) if local else ""
    else:
        c.JupyterHub.spawner_class = SimpleLocalProcessSpawner
        c.SimpleLocalProcessSpawner.home_dir_template = str(state / "home" / "{username}")
        if os.geteuid() == 0:  # HUB_ISOLATION=shared as root: the instructor chose it (see choose_accounts)
            c.Spawner.args = ["--ServerApp.allow_root=True"]


# -- the launcher: python -m common.course.hub ----------------------------------------------------------------


def closed_to_learners() -> str | None:
    """Why another account could not run this environment (its Python, its libraries), or None if it can.

    A learner's server and kernels run this environment's Python with the learner's uid, so every folder on
    the way to it must be open to other accounts. A Python installed under root's home (pyenv's default
    when root installs it) is not: /root is mode 0700.
    """
    paths = [Path(sys.executable).resolve(), Path(sysconfig.get_path("stdlib")), Path(sysconfig.get_path("purelib"))]
    for target in paths:
        for folder in [*reversed(target.parents), target]:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:  # a folder others cannot enter, or a Python they cannot execute
                return f"{folder} (mode {stat.S_IMODE(mode):04o}) is closed to other accounts, and holds {target}"
    return None


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def port_is_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def isolation_note(settings: HubSettings) -> str:
    if settings.unix_users:
        return "one Unix account per learner (created at their first start, home 0700): learners cannot read each other's files"
    user = pwd.getpwuid(os.getuid()).pw_name
    return (
        f"WARNING: every learner's server runs as {user}: the hub refuses one learner's login and token on "
        f"another's server, but code in a notebook can read every home under {settings.state_dir / 'home'}"
        + (
            " and everything root can."
            if os.geteuid() == 0
            else ". Run `make hub` as root for one Unix account per learner."
        )
    )


def _uid(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return FIRST_HUMAN_UID  # no such account yet: the hub will create it


def choose_accounts(isolation: str) -> bool:
    """One Unix account per learner (True) or every server as the hub's user; raises ValueError when asked
    for accounts that cannot work here, saying how to make them work."""
    if isolation == "shared":
        return False
    if os.geteuid() != 0:
        if isolation == "accounts":
            raise ValueError("one Unix account per learner needs root: run `sudo make hub ...`")
        return False
    problem = closed_to_learners()
    if problem:
        raise ValueError(
            f"learners' accounts could not run this environment: {problem}. Rebuild .venv from a Python every "
            "account can run (`make clean setup PYTHON=/usr/bin/python3.11`), or run every server as root with "
            "HUB_ISOLATION=shared (learners' code then runs as root: trusted learners on a spare machine only)"
        )
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.course.hub",
        description="start JupyterHub for a class on this machine (make hub); Ctrl-C stops it and every server",
    )
    parser.add_argument("--users", required=True, help="the class's user names, comma or space separated")
    parser.add_argument("--port", type=int, default=8888, help="the port learners connect to")
    parser.add_argument("--ip", default="0.0.0.0", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="database, secrets, passwords")
    parser.add_argument("--repo", default=str(ROOT), help="the course repository the link pulls (URL or path)")
    parser.add_argument("--branch", help="the branch the link pulls [default: a local repo's current branch]")
    parser.add_argument("--proxy", type=Path, default=DEFAULT_PROXY, help="configurable-http-proxy")
    parser.add_argument(
        "--isolation",
        choices=["auto", "accounts", "shared"],
        default="auto",
        help="accounts: one Unix account per learner (root); shared: every server as the hub's user; auto: "
        "accounts as root, shared otherwise",
    )
    args = parser.parse_args(argv)

    try:
        users = parse_users(args.users)
    except ValueError as e:
        parser.error(str(e))
    proxy = args.proxy.resolve()
    if not os.access(proxy, os.X_OK):
        parser.error(f"configurable-http-proxy not found at {proxy}: `make hub` installs it with npm")
    local = local_repository(args.repo)
    repo = str(local.resolve()) if local and not args.repo.startswith("file://") else args.repo
    if local is not None and not ((local / ".git").exists() or (local / "HEAD").exists()):
        parser.error(f"--repo {args.repo}: not a git repository (nbgitpuller clones the course with git)")
    if args.branch:
        branch = args.branch
    elif local is None:
        parser.error(f"--repo {args.repo} is remote: give the branch to pull (--branch; make hub HUB_BRANCH=...)")
    else:
        try:
            branch = current_branch(local)
        except ValueError as e:
            parser.error(str(e))
    try:
        unix_users = choose_accounts(args.isolation)
    except ValueError as e:
        parser.error(str(e))
    if unix_users and (system := [name for name in users if _uid(name) < FIRST_HUMAN_UID]):
        parser.error(f"{system}: system accounts on this machine, which no learner may run as; rename them")
    if not port_is_free(args.ip, args.port):
        parser.error(f"port {args.port} on {args.ip} is in use: choose another (make hub PORT=...)")

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # the database, the cookie secret and the passwords: the instructor's only
    settings = HubSettings(
        state_dir=state,
        users=users,
        repo=repo,
        branch=branch,
        proxy=proxy,
        ip=args.ip,
        port=args.port,
        hub_port=free_port(),
        proxy_api_port=free_port(),
        unix_users=unix_users,
    )
    ensure_passwords(settings.passwords_file, users)
    settings.save()

    host = socket.gethostname() if args.ip in ("0.0.0.0", "::") else args.ip
    url = f"http://{host}:{args.port}/"
    print(f"JupyterHub for the course at {url} for {len(users)} learners: {', '.join(users)}")
    print(f"  passwords:   {settings.passwords_file} (mode 0600: hand each learner their own line)")
    print(f"  course link: {course_link(url, repo, branch)}")
    print(f"  isolation:   {isolation_note(settings)}")
    print("  Ctrl-C stops the hub, its proxy and every learner's server.", flush=True)

    jupyterhub = Path(sysconfig.get_path("scripts")) / "jupyterhub"
    env = os.environ | {STATE_ENV: str(state), "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32)}
    os.chdir(state)  # whatever JupyterHub writes where it runs lands in the state folder
    os.execve(jupyterhub, [str(jupyterhub), "--config", str(CONFIG_FILE)], env)  # the hub takes this process


if __name__ == "__main__":
    main()
