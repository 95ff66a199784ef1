"""`python -m common.secure`: keysets, envelopes, rotation and model signing from the shell.

The keyset password comes from `--password-file` or the HPAI_KEYSET_PASSWORD
environment variable, never from an argument (arguments are visible in `ps`).
Exit codes: 0 success, 1 an integrity or key failure (nothing written), 2 a usage
error (bad arguments, no password, a file that cannot be read).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from . import envelope
from .errors import SecureError
from .keys import Keyset

PASSWORD_ENV = "HPAI_KEYSET_PASSWORD"
EXIT_OK, EXIT_INTEGRITY, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake in how the command was called (exit code 2)."""


def _password(args: argparse.Namespace) -> bytes:
    if args.password_file is not None:
        try:
            raw = Path(args.password_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the password file: {exc.strerror}") from None
        password = raw.removesuffix(b"\n").removesuffix(b"\r")
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV].encode()
    else:
        raise UsageError(f"the keyset password is needed: pass --password-file FILE or set {PASSWORD_ENV}")
    if not password:
        raise UsageError("the keyset password is empty")
    return password


def _keyset(args: argparse.Namespace) -> Keyset:
    return Keyset.load(args.keyset, _password(args))


def _keygen(args: argparse.Namespace) -> int:
    keyset = Keyset.generate(args.keyset, _password(args))
    print(f"keyset created in {args.keyset}; primary key {keyset.primary.key_id}")
    return EXIT_OK


def _encrypt(args: argparse.Namespace) -> int:
    keyset = _keyset(args)
    n = envelope.encrypt_file(args.input, args.output, keyset, chunk_size=args.chunk_size)
    print(f"encrypted {n} bytes into {args.output} under key {keyset.primary.key_id}")
    return EXIT_OK


def _decrypt(args: argparse.Namespace) -> int:
    n = envelope.decrypt_file(args.input, args.output, _keyset(args))
    print(f"decrypted {n} bytes into {args.output}")
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    keyset = _keyset(args)
    new = keyset.rotate()
    print(f"new primary key {new.key_id}")
    failed = 0
    for artifact in args.artifacts:
        try:
            envelope.rewrap(artifact, keyset)
            print(f"re-wrapped {artifact}")
        except (SecureError, OSError) as exc:
            failed += 1
            print(f"error: {artifact} not re-wrapped: {exc}", file=sys.stderr)
    return EXIT_INTEGRITY if failed else EXIT_OK


def _disable(args: argparse.Namespace) -> int:
    _keyset(args).disable(args.key_id)
    print(f"key {args.key_id} disabled")
    return EXIT_OK


def _retire(args: argparse.Namespace) -> int:
    _keyset(args).retire(args.key_id)
    print(f"key {args.key_id} retired; its key file is deleted")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    for row in _keyset(args).describe():
        mark = "primary" if row["primary"] else row["status"]
        print(f"{row['id']}  {row['algorithm']}  {row['provider']}  {mark}  {row['created']}")
    return EXIT_OK


def _header(args: argparse.Namespace) -> int:
    with open(args.artifact, "rb") as src:
        header = envelope.read_header(src)
    print(f"version {header.version}, {envelope.ALGORITHMS[header.algorithm]}, chunk size {header.chunk_size}")
    print(f"key id {header.key_id}")
    for name, offset, size in header.layout():
        print(f"{offset:6d}  {size:5d}  {name}")
    return EXIT_OK


def _signing() -> ModuleType:
    """common.secure.signing, imported on use: the envelope commands do not need it."""
    try:
        return importlib.import_module("common.secure.signing")
    except ModuleNotFoundError as exc:
        if exc.name != "common.secure.signing":
            raise
        raise SecureError("model signing is not available: common.secure.signing is not installed") from None


def _sign(args: argparse.Namespace) -> int:
    manifest = _signing().sign_folder(args.model_dir, _keyset(args).signing_key())
    print(f"signed {args.model_dir}: manifest {manifest}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    _signing().verify_folder(args.model_dir, _keyset(args).verify_key())
    print(f"{args.model_dir} matches its signed manifest")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed so tests and docs can read the usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m common.secure",
        description="Keysets, envelope encryption, key rotation and model signing.",
        epilog=f"The password comes from --password-file or ${PASSWORD_ENV}. Exit codes: 0 success, "
        "1 integrity or key failure (no output file written), 2 usage error.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keyset", required=True, type=Path, help="the keyset folder")
    common.add_argument("--password-file", type=Path, help=f"file holding the keyset password (else ${PASSWORD_ENV})")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run: object, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help)
        p.set_defaults(run=run)
        return p

    command("keygen", _keygen, "create a keyset folder with one primary key and a signing key")
    p = command("encrypt", _encrypt, "encrypt a file into an envelope")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--chunk-size", type=int, default=envelope.DEFAULT_CHUNK_SIZE, help="plaintext bytes per chunk")
    p = command("decrypt", _decrypt, "decrypt an envelope (no output file unless every chunk authenticates)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p = command("rotate", _rotate, "add a new primary key and re-wrap the given artifacts to it")
    p.add_argument("artifacts", nargs="*", type=Path)
    command("disable", _disable, "stop a key from wrapping or unwrapping").add_argument("key_id")
    command("retire", _retire, "remove a key and delete its key file").add_argument("key_id")
    command("keys", _keys, "list the keys of a keyset")
    p = sub.add_parser("header", help="show an envelope's header fields (not authenticated)")
    p.add_argument("artifact", type=Path)
    p.set_defaults(run=_header)
    command("sign", _sign, "write a signed manifest of a model folder").add_argument("model_dir", type=Path)
    command("verify", _verify, "check a model folder against its signed manifest").add_argument("model_dir", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (errors are printed, never raised as tracebacks)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on bad arguments
    if getattr(args, "chunk_size", 1) < 1 or getattr(args, "chunk_size", 1) > envelope.MAX_CHUNK_SIZE:
        parser.error(f"--chunk-size must be in 1 .. {envelope.MAX_CHUNK_SIZE}")
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SecureError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTEGRITY
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
