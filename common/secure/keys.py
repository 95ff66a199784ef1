"""Key-encryption keys and the keyset that holds them (after Google Tink's keysets).

A `Keyset` is a set of KEKs, each with a stable id and a status, and exactly one
*primary*: the key that wraps every new data key. Old keys stay to unwrap old
artifacts until those are re-wrapped (`envelope.rewrap`), then are disabled
(still listed, refused for wrap and unwrap: a reversible step that shows which
artifacts were missed) and finally retired (removed with their key file).

On disk a keyset is a folder::

    keyset.json          metadata only: ids, status, primary, algorithm, provider, creation time
    <key id>.pem         one password-protected PKCS#8 file per local RSA key (mode 0600)
    signing.pem          the ECDSA P-256 key that signs model manifests (same password)

Key material never appears in keyset.json, in a repr or in an error message.
Any KEK that implements `kek.KeyEncryptionKey` (an HSM key, a cloud KMS key)
can join a keyset; only local RSA keys are persisted here, other providers are
re-attached on `load` by the loaders passed in `providers`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from common.files import write_atomically

from .errors import IntegrityError, KeyDisabled, KeyNotFound, KeysetError
from .kek import KeyEncryptionKey

KEYSET_FILE = "keyset.json"
SIGNING_KEY_FILE = "signing.pem"
LOCAL_RSA = "local-rsa"
RSA_BITS = 3072
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

ENABLED, DISABLED = "enabled", "disabled"


def _refuse_pickle(obj: object) -> NoReturn:
    raise TypeError(f"{type(obj).__name__} refuses to be pickled: key material stays in its password-protected file")


class LocalRSAKey:
    """An RSA-3072 key that wraps data keys with OAEP-SHA256; implements `KeyEncryptionKey`.

    The id is derived from the public key (a fingerprint), so a key file swapped for
    another is noticed on load. It never prints or pickles its key material.
    """

    algorithm = "RSA-OAEP-3072-SHA256"
    provider = LOCAL_RSA
    __slots__ = ("_private", "key_id")

    def __init__(self, private_key: rsa.RSAPrivateKey):
        if not isinstance(private_key, rsa.RSAPrivateKey) or private_key.key_size != RSA_BITS:
            raise KeysetError(f"a local KEK must be an RSA-{RSA_BITS} private key")
        self._private = private_key
        self.key_id = fingerprint_id(private_key.public_key())

    @classmethod
    def generate(cls) -> LocalRSAKey:
        """A fresh key (about 0.3 s: RSA key generation searches for primes)."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS))

    @classmethod
    def load(cls, path: str | os.PathLike[str], password: bytes) -> LocalRSAKey:
        """Read a password-protected PKCS#8 PEM file; a wrong password is a KeysetError that never echoes it."""
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
        except (ValueError, TypeError):
            raise KeysetError(f"cannot open key file {Path(path).name}: wrong password or not a PKCS#8 key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeysetError(f"key file {Path(path).name} does not hold an RSA key")
        return cls(key)

    def save(self, path: str | os.PathLike[str], password: bytes) -> None:
        """Write the key as encrypted PKCS#8 (readable by the owner only)."""
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        write_atomically(Path(path), pem, mode=0o600)

    def wrap(self, data_key: bytes) -> bytes:
        """The data key encrypted with RSA-OAEP-SHA256 under the public key."""
        return self._private.public_key().encrypt(bytes(data_key), _OAEP)

    def unwrap(self, wrapped: bytes) -> bytes:
        """The data key back; IntegrityError if `wrapped` was not made by this key (or was altered)."""
        if len(wrapped) != RSA_BITS // 8:
            raise IntegrityError(f"wrapped key is {len(wrapped)} bytes, key {self.key_id} makes {RSA_BITS // 8}")
        try:
            return self._private.decrypt(bytes(wrapped), _OAEP)
        except ValueError:
            raise IntegrityError(f"wrapped data key does not unwrap under key {self.key_id}") from None

    def __repr__(self) -> str:
        return f"LocalRSAKey(key_id={self.key_id!r}, algorithm={self.algorithm!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        _refuse_pickle(self)


def fingerprint_id(public_key: rsa.RSAPublicKey) -> str:
    """A stable key id: 'rsa3072-' and 16 hex digits of the SHA-256 of the public key (SubjectPublicKeyInfo)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"rsa{RSA_BITS}-{hashlib.sha256(der).hexdigest()[:16]}"


@dataclass
class KeyEntry:
    """One key of a keyset: the KEK and its metadata (what keyset.json records)."""

    kek: KeyEncryptionKey
    status: str
    created: str
    provider: str


# A loader re-attaches a KEK of another provider (an HSM) from its keyset.json record.
ProviderLoader = Callable[[Mapping[str, Any]], KeyEncryptionKey]


class Keyset:
    """KEKs with ids and exactly one primary; the only thing envelopes ask for keys.

    Mutations of a keyset opened from a folder (`generate`/`load`) are written back at
    once, so a rotation can never wrap artifacts under a key that exists only in memory.
    """

    __slots__ = ("_dir", "_entries", "_password", "_primary", "_retired_files")

    def __init__(self) -> None:
        self._entries: dict[str, KeyEntry] = {}
        self._primary: str | None = None
        self._dir: Path | None = None
        self._password: bytes | None = None
        self._retired_files: list[str] = []

    # -- building ---------------------------------------------------------------------------------------------
    def add(self, kek: KeyEncryptionKey, *, primary: bool = False) -> None:
        """Add a KEK (any provider); `primary=True` makes it the key that wraps from now on."""
        if not isinstance(kek, KeyEncryptionKey):
            raise KeysetError(f"{type(kek).__name__} does not implement KeyEncryptionKey")
        if not kek.key_id or len(kek.key_id.encode()) > 255:
            raise KeysetError("a key id must be 1 to 255 bytes of UTF-8")
        if kek.key_id in self._entries:
            raise KeysetError(f"key id {kek.key_id} is already in the keyset")
        provider = getattr(kek, "provider", type(kek).__name__)
        self._entries[kek.key_id] = KeyEntry(kek, ENABLED, _now(), provider)
        if primary or self._primary is None:
            self._primary = kek.key_id
        self._persist()

    @classmethod
    def generate(cls, directory: str | os.PathLike[str] | None = None, password: bytes | None = None) -> Keyset:
        """A new keyset with one fresh local RSA primary: in memory when no `directory` is given (gone with
        the process, as is everything it encrypted), else a new folder of password-protected key files and
        a signing key. Refuses to overwrite a keyset folder."""
        if directory is None:
            if password is not None:
                raise KeysetError("a password protects key files: give the directory to write them to as well")
            keyset = cls()
            keyset.add(LocalRSAKey.generate(), primary=True)
            return keyset
        if password is None:
            raise KeysetError("a keyset folder needs a password for its key files (non-empty bytes)")
        path = Path(directory)
        if (path / KEYSET_FILE).exists():
            raise KeysetError(f"{path} already holds a keyset; load it instead of overwriting its keys")
        _check_password(password)
        path.mkdir(parents=True, exist_ok=True)
        keyset = cls()
        keyset._dir, keyset._password = path, bytes(password)
        keyset._write_signing_key(ec.generate_private_key(ec.SECP256R1()))
        keyset.add(LocalRSAKey.generate(), primary=True)
        return keyset

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        password: bytes,
        providers: Mapping[str, ProviderLoader] | None = None,
    ) -> Keyset:
        """Open a keyset folder; every record must come back (an unknown provider is an error, not a skip)."""
        path = Path(directory)
        try:
            meta = json.loads((path / KEYSET_FILE).read_text())
        except FileNotFoundError:
            raise KeysetError(f"no keyset in {path}: {KEYSET_FILE} is missing (run keygen first)") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeysetError(f"{path / KEYSET_FILE} is not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != "hpai-keyset" or meta.get("version") != 1:
            raise KeysetError(f"{path / KEYSET_FILE} is not a version-1 hpai keyset")
        keyset = cls()
        providers = dict(providers or {})
        try:
            for record in meta["keys"]:
                provider = record["provider"]
                if provider == LOCAL_RSA:
                    if record["file"] != f"{record['id']}.pem":  # never a path out of the folder
                        raise KeysetError(f"key {record['id']} names an unexpected key file {record['file']!r}")
                    kek: KeyEncryptionKey = LocalRSAKey.load(path / record["file"], password)
                elif provider in providers:
                    kek = providers[provider](record)
                else:
                    raise KeysetError(
                        f"key {record['id']} comes from provider {provider!r}: pass a loader for it in providers="
                    )
                if kek.key_id != record["id"]:
                    raise KeysetError(f"key file for {record['id']} holds a different key ({kek.key_id})")
                if record["status"] not in (ENABLED, DISABLED):
                    raise KeysetError(f"key {record['id']} has unknown status {record['status']!r}")
                keyset._entries[kek.key_id] = KeyEntry(kek, record["status"], record["created"], provider)
            primary = meta["primary"]
        except (KeyError, TypeError):
            raise KeysetError(f"{path / KEYSET_FILE} is missing a field of a key record") from None
        if primary not in keyset._entries or keyset._entries[primary].status != ENABLED:
            raise KeysetError(f"{path / KEYSET_FILE} names primary {primary!r}, which is not an enabled key")
        keyset._primary, keyset._dir, keyset._password = primary, path, bytes(password)
        return keyset

    # -- what envelopes use -----------------------------------------------------------------------------------
    @property
    def primary(self) -> KeyEncryptionKey:
        """The KEK that wraps new data keys."""
        if self._primary is None:
            raise KeysetError("the keyset is empty: it has no primary key")
        return self._entries[self._primary].kek

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """(primary key id, data key wrapped by the primary)."""
        kek = self.primary
        return kek.key_id, kek.wrap(data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The data key, if `key_id` is here and enabled; KeyNotFound / KeyDisabled / IntegrityError otherwise."""
        entry = self._entries.get(key_id)
        if entry is None:
            raise KeyNotFound(f"key {key_id!r} is not in the keyset (never added, or retired)")
        if entry.status == DISABLED:
            raise KeyDisabled(f"key {key_id!r} is disabled: enable it to read artifacts it wrapped")
        return entry.kek.unwrap(wrapped)

    # -- rotation ---------------------------------------------------------------------------------------------
    def rotate(self, new_kek: KeyEncryptionKey | None = None) -> KeyEncryptionKey:
        """Add a new primary (a fresh local RSA key unless one is given); older keys stay enabled to unwrap."""
        kek = new_kek if new_kek is not None else LocalRSAKey.generate()
        self.add(kek, primary=True)
        return kek

    def disable(self, key_id: str) -> None:
        """The key stays listed but may neither wrap nor unwrap (reversible with `enable`)."""
        self._not_primary(key_id, "disable")
        self._entries[key_id].status = DISABLED
        self._persist()

    def enable(self, key_id: str) -> None:
        """Undo `disable`."""
        self._entry(key_id).status = ENABLED
        self._persist()

    def retire(self, key_id: str) -> None:
        """Remove the key for good (its PKCS#8 file is deleted). Not a shredding: a data key it wrapped stays
        readable through any other wrapping of it (a re-wrapped copy, a backup of the keyset); `reencrypt`."""
        self._not_primary(key_id, "retire")
        entry = self._entries.pop(key_id)
        if entry.provider == LOCAL_RSA:
            self._retired_files.append(f"{key_id}.pem")
        self._persist()

    def set_primary(self, key_id: str) -> None:
        """Make an existing enabled key the primary (e.g. to roll back a rotation)."""
        if self._entry(key_id).status != ENABLED:
            raise KeysetError(f"key {key_id} is disabled and cannot be the primary")
        self._primary = key_id
        self._persist()

    # -- inspection -------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[KeyEncryptionKey]:
        return (entry.kek for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._entries

    def status(self, key_id: str) -> str:
        """'enabled' or 'disabled'."""
        return self._entry(key_id).status

    def describe(self) -> list[dict[str, Any]]:
        """The metadata of every key (what keyset.json holds), primary first; no key material."""
        rows = [
            {
                "id": key_id,
                "algorithm": entry.kek.algorithm,
                "provider": entry.provider,
                "status": entry.status,
                "created": entry.created,
                "primary": key_id == self._primary,
            }
            for key_id, entry in self._entries.items()
        ]
        return sorted(rows, key=lambda row: not row["primary"])

    @property
    def directory(self) -> Path | None:
        """The folder this keyset is persisted in (None for an in-memory keyset)."""
        return self._dir

    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        """The ECDSA P-256 key of this keyset folder that signs model manifests."""
        folder, password = self._require_folder()
        try:
            key = serialization.load_pem_private_key((folder / SIGNING_KEY_FILE).read_bytes(), password=password)
        except FileNotFoundError:
            raise KeysetError(f"{folder} has no {SIGNING_KEY_FILE}") from None
        except (ValueError, TypeError):
            raise KeysetError(f"cannot open {SIGNING_KEY_FILE}: wrong password or not a PKCS#8 key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeysetError(f"{SIGNING_KEY_FILE} does not hold an elliptic-curve key")
        return key

    def verify_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of `signing_key` (what a verifier needs)."""
        return self.signing_key().public_key()

    def __repr__(self) -> str:
        return f"Keyset(primary={self._primary!r}, keys={list(self._entries)!r}, directory={self._dir!s})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        _refuse_pickle(self)

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str] | None = None, password: bytes | None = None) -> None:
        """Write the keyset (to `directory` with `password` the first time; afterwards mutations save by themselves)."""
        if directory is not None:
            if password is None:
                raise KeysetError("saving a keyset to a folder needs a password for its key files")
            _check_password(password)
            Path(directory).mkdir(parents=True, exist_ok=True)
            # a keyset moving folders takes its signing key along; a new one gets its first
            signer = self.signing_key() if self._dir is not None else ec.generate_private_key(ec.SECP256R1())
            self._write_signing_key(signer, Path(directory), bytes(password))
            self._dir, self._password = Path(directory), bytes(password)
            self._require_folder()
            self._persist(rewrite_keys=True)  # every key file under this folder's password
            return
        self._require_folder()
        self._persist()

    def _persist(self, rewrite_keys: bool = False) -> None:
        if self._dir is None or self._password is None:
            return
        records = []
        for key_id, entry in self._entries.items():
            record = {
                "id": key_id,
                "algorithm": entry.kek.algorithm,
                "provider": entry.provider,
                "status": entry.status,
                "created": entry.created,
            }
            if isinstance(entry.kek, LocalRSAKey):
                record["file"] = f"{key_id}.pem"
                if rewrite_keys or not (self._dir / record["file"]).exists():
                    entry.kek.save(self._dir / record["file"], self._password)
            elif hasattr(entry.kek, "record"):
                record.update(entry.kek.record())  # provider-specific fields its loader needs (token label, ...)
            records.append(record)
        meta = {"format": "hpai-keyset", "version": 1, "primary": self._primary, "keys": records}
        write_atomically(self._dir / KEYSET_FILE, json.dumps(meta, indent=2).encode() + b"\n", mode=0o600)
        # Key files go only after the metadata that no longer names them is safely written.
        for name in self._retired_files:
            with contextlib.suppress(FileNotFoundError):
                (self._dir / name).unlink()
        self._retired_files.clear()

    def _write_signing_key(
        self, key: ec.EllipticCurvePrivateKey, folder: Path | None = None, password: bytes | None = None
    ) -> None:
        folder, password = folder or self._dir, password or self._password
        assert folder is not None and password is not None
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        write_atomically(folder / SIGNING_KEY_FILE, pem, mode=0o600)

    def _require_folder(self) -> tuple[Path, bytes]:
        if self._dir is None or self._password is None:
            raise KeysetError("this keyset lives only in memory: save(directory, password) it first")
        return self._dir, self._password

    def _entry(self, key_id: str) -> KeyEntry:
        try:
            return self._entries[key_id]
        except KeyError:
            raise KeyNotFound(f"key {key_id!r} is not in the keyset") from None

    def _not_primary(self, key_id: str, action: str) -> None:
        self._entry(key_id)
        if key_id == self._primary:
            raise KeysetError(f"cannot {action} the primary key {key_id}: rotate to a new primary first")


def _check_password(password: bytes) -> None:
    if not isinstance(password, bytes | bytearray) or not password:
        raise KeysetError("the keyset password must be non-empty bytes")


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
