"""Signed manifests of model folders (after OpenSSF model_signing): verify before any load.

A manifest lists every file of a folder with its SHA-256 and size; the folder's
`model.sig` holds the manifest and a signature over its canonical JSON (sorted
keys, no spaces), ECDSA P-256 with SHA-256 or Ed25519, chosen by the key's type.
The signature algorithm is itself inside the signed manifest, so a verifier never
takes it from unsigned bytes. One file, like model_signing's bundle: nothing to
keep in step, and the only file the manifest leaves out.

Verification checks the signature first (an unsigned manifest is never read for
file names), then the folder against it, and names every file that differs, is
missing, or is extra: an added file is an attack too (a `.py` a loader may import).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import mmap
import os
import queue
import stat
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from common.files import Reader, SupportsReadinto, read_fully_into, write_atomically
from common.secure.errors import KeysetError, SignatureMismatch

SIGNATURE_FILE = "model.sig"
FORMAT = "hpai-model-signature"
VERSION = 1
HASH = "sha256"
ECDSA_P256 = "ECDSA-P256-SHA256"
ED25519 = "Ed25519"

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, '/'-separated
    sha256: str  # hex
    size: int


@dataclass(frozen=True)
class Manifest:
    """What a signature vouches for: every file of the folder, and how it was signed."""

    files: tuple[FileEntry, ...]
    signature_algorithm: str
    hash: str = HASH

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "signature_algorithm": self.signature_algorithm,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }

    def canonical(self) -> bytes:
        """The exact bytes signed: one serialisation per manifest, so signer and verifier agree."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        try:
            files = tuple(FileEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in obj["files"])
            manifest = cls(files, str(obj["signature_algorithm"]), str(obj["hash"]))
        except (KeyError, TypeError, ValueError):
            raise SignatureMismatch("the manifest in model.sig is malformed (missing or mistyped fields)") from None
        if manifest.hash != HASH:
            raise SignatureMismatch(f"the manifest uses hash {manifest.hash!r}; only {HASH} is accepted")
        paths = [f.path for f in files]
        if paths != sorted(set(paths)) or any(not _safe_relative(p) for p in paths):
            raise SignatureMismatch("the manifest lists unsorted, repeated or unsafe paths")
        return manifest

    def get(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)


# -- keys -----------------------------------------------------------------------------------------------------------
def generate_signing_key(algorithm: Literal["ecdsa-p256", "ed25519"] = "ecdsa-p256") -> SigningKey:
    """A new private key for signing manifests (ECDSA P-256 by default: FIPS 186 and every HSM support it)."""
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"algorithm must be 'ecdsa-p256' or 'ed25519', got {algorithm!r}")


def signature_algorithm(key: SigningKey | VerifyKey) -> str:
    """ECDSA-P256-SHA256 or Ed25519, from the key's type; anything else is refused."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeysetError(f"ECDSA keys must be on P-256, got {key.curve.name}")
        return ECDSA_P256
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ED25519
    raise KeysetError(f"manifests are signed with ECDSA P-256 or Ed25519 keys, got {type(key).__name__}")


def public_key_id(public_key: VerifyKey) -> str:
    """SHA-256 of the public key (SubjectPublicKeyInfo DER): says *which* key signed, in errors and model.sig."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def save_private_key(key: SigningKey, path: str | os.PathLike[str], password: bytes) -> None:
    """PKCS#8 PEM encrypted with `password` (mode 0600): a private key never rests in the clear."""
    if not isinstance(password, bytes | bytearray) or not password:
        raise KeysetError("a private key file needs a non-empty password (bytes)")
    signature_algorithm(key)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password)
    )
    write_atomically(Path(path), pem, mode=0o600)


def load_private_key(path: str | os.PathLike[str], password: bytes) -> SigningKey:
    """The signing key from a password-protected PEM; KeysetError on a wrong password (which is not echoed)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
    except FileNotFoundError:
        raise KeysetError(f"no private key file at {path}") from None
    except (ValueError, TypeError):
        raise KeysetError(f"cannot open {path}: wrong password, or not an encrypted PKCS#8 key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeysetError(f"manifests are signed with ECDSA P-256 or Ed25519 keys, got {type(key).__name__}")
    signature_algorithm(key)  # and an ECDSA key must be on P-256
    return key


def save_public_key(key: SigningKey | VerifyKey, path: str | os.PathLike[str]) -> None:
    """The public half as SubjectPublicKeyInfo PEM: what verifiers are given."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) else key
    signature_algorithm(public)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_atomically(Path(path), pem, mode=0o644)


def load_public_key(path: str | os.PathLike[str]) -> VerifyKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise KeysetError(f"no public key file at {path}") from None
    except ValueError:
        raise KeysetError(f"{path} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise KeysetError(f"manifests are signed with ECDSA P-256 or Ed25519 keys, got {type(key).__name__}")
    signature_algorithm(key)  # and an ECDSA key must be on P-256
    return key


def _sign(key: SigningKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data)


def _verify(key: VerifyKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


# -- folders --------------------------------------------------------------------------------------------------------
def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and "\\" not in path and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every file but the top-level model.sig, sorted; refuses links and devices."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel == SIGNATURE_FILE:
                continue
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                raise SignatureMismatch(f"{rel} in {folder} is {kind}: a signed folder holds regular files only")
            found.append((rel, path))
    return iter(sorted(found))


def _digest(path: Path, keep: bool) -> tuple[str, int, bytearray | None]:
    """(sha256 hex, size, the bytes if kept): a kept file is read once and hashed from memory, so the
    bytes returned are exactly the bytes checked (no window to swap the file between check and use)."""
    with open(path, "rb") as f:
        if not keep:
            h = hashlib.file_digest(f, HASH)
            return h.hexdigest(), f.tell(), None
        size = os.fstat(f.fileno()).st_size
        data = bytearray(size)
        got = f.readinto(data)
        if got != size or f.read(1):
            raise SignatureMismatch(f"{path.name} changed size while it was read")
        return hashlib.sha256(data).hexdigest(), size, data


def build_manifest(folder: str | os.PathLike[str], algorithm: str) -> Manifest:
    """The manifest of a folder as it is now (streamed hashing: memory stays flat whatever the file sizes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    files = []
    for rel, path in _walk(folder):
        sha, size, _ = _digest(path, keep=False)
        files.append(FileEntry(rel, sha, size))
    return Manifest(tuple(files), algorithm)


def sign_folder(folder: str | os.PathLike[str], private_key: SigningKey) -> Path:
    """Hash every file of `folder` and write the signed manifest to `folder/model.sig` (replacing any old one)."""
    algorithm = signature_algorithm(private_key)
    manifest = build_manifest(folder, algorithm)
    signed = {
        "format": FORMAT,
        "version": VERSION,
        "manifest": manifest.to_json(),
        "signature": {
            "algorithm": algorithm,
            "public_key_sha256": public_key_id(private_key.public_key()),
            "value": base64.b64encode(_sign(private_key, manifest.canonical())).decode(),
        },
    }
    out = Path(folder) / SIGNATURE_FILE
    write_atomically(out, json.dumps(signed, indent=1, sort_keys=True).encode() + b"\n", mode=0o644)
    return out


def signed_manifest(folder: str | os.PathLike[str], public_key: VerifyKey) -> Manifest:
    """The manifest of `folder/model.sig`, once its signature checks out; the files are not checked here."""
    folder = Path(folder)
    algorithm = signature_algorithm(public_key)
    try:
        signed = json.loads((folder / SIGNATURE_FILE).read_bytes())
    except FileNotFoundError:
        raise SignatureMismatch(f"{folder} is not signed: {SIGNATURE_FILE} is missing") from None
    except ValueError:
        raise SignatureMismatch(f"{folder / SIGNATURE_FILE} is not valid JSON") from None
    if not isinstance(signed, dict) or signed.get("format") != FORMAT or signed.get("version") != VERSION:
        raise SignatureMismatch(f"{folder / SIGNATURE_FILE} is not a version-{VERSION} {FORMAT} file")
    manifest = Manifest.from_json(signed.get("manifest"))
    sig = signed.get("signature")
    if not isinstance(sig, dict):
        sig = {}
    if manifest.signature_algorithm != algorithm:
        raise SignatureMismatch(
            f"{folder} was signed with {manifest.signature_algorithm}, but the verifying key is {algorithm}"
        )
    try:
        value = base64.b64decode(str(sig.get("value", "")), validate=True)
    except ValueError:
        value = b""
    if not _verify(public_key, value, manifest.canonical()):
        signer = str(sig.get("public_key_sha256", "?"))[:16]
        raise SignatureMismatch(
            f"the signature over {folder / SIGNATURE_FILE} is invalid: the manifest was edited, or it was signed by "
            f"another key (it names key {signer}..., the verifying key is {public_key_id(public_key)[:16]}...)"
        )
    return manifest


BLOCK_SIZE = 4 << 20  # bytes read (and handed to the hashing thread) at a time
RING_BLOCKS = 4  # blocks in flight: memory stays at 16 MiB whatever the file size


class _HashingReader:
    """A binary reader of one file that hashes every byte on a second thread while the consumer reads it.

    The file is read in blocks of BLOCK_SIZE into a ring of RING_BLOCKS private buffers. Each
    block goes to the hashing thread as a view (hashlib releases the GIL on large buffers, so
    SHA-256 runs on the other core), and the consumer reads from the same block: the bytes
    hashed are the very bytes consumed, with no copy for the hash. A block is refilled only
    after the hashing thread is done with it and the consumer has moved past it. The thread
    lives only inside `_stream_checked`, which always joins it.
    """

    def __init__(self, raw: SupportsReadinto, expected_size: int):
        self._raw = raw
        self._ring = memoryview(_private_memory(BLOCK_SIZE * RING_BLOCKS))
        self._free = threading.Semaphore(RING_BLOCKS)  # blocks the hashing thread is done with
        self._queue: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._hash = hashlib.sha256()
        self._cancelled = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._hash_blocks, name="sha256-follower", daemon=True)
        self._thread.start()
        self._expected = expected_size
        self._next = 0  # ring slot to fill next
        self._block = memoryview(b"")  # the block being consumed
        self._pos = 0  # the consumer's position in it
        self.size = 0  # bytes read from the file so far
        self._eof = False
        self._ahead: collections.deque[memoryview] = collections.deque()  # read, not yet consumed

    def _hash_blocks(self) -> None:
        while (block := self._queue.get()) is not None:
            try:
                if not self._cancelled and self._error is None:
                    self._hash.update(block)
            except BaseException as exc:  # never leave the reader waiting on a slot: report it at hexdigest()
                self._error = exc
            finally:
                self._free.release()

    def _read_ahead(self, wait: bool) -> bool:
        """Read one more block into the ring for the hashing thread; False at end of file or if no slot is free.

        At most RING_BLOCKS - 1 blocks are read ahead of the one being consumed, so a refilled slot
        is always one the consumer has left and (the semaphore says) the hashing thread is done with.
        """
        if self._eof or len(self._ahead) >= RING_BLOCKS - 1 or not self._free.acquire(blocking=wait):
            return False
        slot = self._ring[self._next * BLOCK_SIZE : (self._next + 1) * BLOCK_SIZE]
        # read up to the expected size, then one byte more: a file that grew must not match
        want = min(BLOCK_SIZE, max(self._expected - self.size, 1))
        n = read_fully_into(self._raw, slot[:want])
        if n == 0:
            self._free.release()
            self._eof = True
            return False
        self._next = (self._next + 1) % RING_BLOCKS
        self._queue.put(slot[:n])
        self.size += n
        self._ahead.append(slot[:n])
        return True

    def _read_block(self) -> bool:
        """Move the consumer to the next block (reading it if need be), then keep the hashing thread fed."""
        if not self._ahead and not self._read_ahead(wait=True):
            return False
        self._block, self._pos = self._ahead.popleft(), 0
        while self._read_ahead(wait=False):
            pass
        return True

    def readinto(self, view: Any) -> int:
        view = memoryview(view).cast("B")
        if self._pos == len(self._block) and not self._read_block():
            return 0
        n = min(len(view), len(self._block) - self._pos)
        view[:n] = self._block[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._pos == len(self._block) and not self._read_block():
                break
            take = len(self._block) - self._pos if n < 0 else min(n - len(out), len(self._block) - self._pos)
            out += self._block[self._pos : self._pos + take]
            self._pos += take
        return bytes(out)

    def hexdigest(self) -> str:
        """The digest of the whole file, reading whatever the consumer left unread; stops the thread."""
        while self._read_block():
            pass
        self.close()
        if self._error is not None:
            raise RuntimeError("hashing the file failed") from self._error
        return self._hash.hexdigest()

    def close(self, cancel: bool = False) -> None:
        """Stop and join the hashing thread (at once if `cancel`, else after the blocks queued so far)."""
        if self._thread.is_alive():
            self._cancelled = self._cancelled or cancel
            self._queue.put(None)
            self._thread.join()


def _private_memory(size: int) -> mmap.mmap | bytearray:
    """Anonymous memory backed by no file, pre-faulted on Linux (one call maps every page)."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if size and populate and hasattr(mmap, "MAP_ANONYMOUS"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return bytearray(size)


def _stream_checked(path: Path, entry: FileEntry, consume: Callable[[Reader], Any]) -> tuple[bool, Any]:
    """(digest and size match, what `consume` returned): one pass over the file feeds both.

    The hashing thread never outlives this call; the digest is compared before anything is returned.
    """
    with open(path, "rb", buffering=0) as raw:
        reader = _HashingReader(raw, entry.size)
        try:
            try:
                result = consume(reader)
            except Exception:
                if reader.hexdigest() != entry.sha256 or reader.size != entry.size:
                    return False, None  # the file was altered: that, not the consumer's error, is the cause
                raise
            return reader.hexdigest() == entry.sha256 and reader.size == entry.size, result
        finally:
            reader.close(cancel=True)


def _check_folder(
    folder: Path, manifest: Manifest, keep: Collection[str], stream: Mapping[str, Callable[[Reader], Any]]
) -> dict[str, Any]:
    expected = {f.path: f for f in manifest.files}
    on_disk = dict(_walk(folder))
    missing = tuple(p for p in expected if p not in on_disk)
    extra = tuple(p for p in on_disk if p not in expected)
    differs, kept = [], {}
    for rel, path in on_disk.items():
        entry = expected.get(rel)
        if entry is None:
            continue
        if path.stat().st_size != entry.size:  # cheap: no need to hash a file of the wrong size
            differs.append(rel)
            continue
        if rel in stream:
            ok, result = _stream_checked(path, entry, stream[rel])
        else:
            sha, size, result = _digest(path, keep=rel in keep)
            ok = sha == entry.sha256 and size == entry.size
        if not ok:
            differs.append(rel)
        elif result is not None:
            kept[rel] = result
    if missing or extra or differs:
        parts = [
            f"{len(v)} {k} ({', '.join(v)})"
            for k, v in (("differ", differs), ("missing", missing), ("extra", extra))
            if v
        ]
        raise SignatureMismatch(
            f"{folder} does not match its signed manifest: {'; '.join(parts)}",
            differs=tuple(differs),
            missing=missing,
            extra=extra,
        )
    return kept


def verify_folder(folder: str | os.PathLike[str], public_key: VerifyKey) -> Manifest:
    """The signed manifest, once the signature and every file check out; SignatureMismatch names what did not."""
    folder = Path(folder)
    manifest = signed_manifest(folder, public_key)
    _check_folder(folder, manifest, (), {})
    return manifest


def read_verified(
    folder: str | os.PathLike[str],
    public_key: VerifyKey,
    names: Collection[str] | None = None,
    *,
    stream: Mapping[str, Callable[[Reader], Any]] | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """`verify_folder`, also handing over file contents in the same pass, so nothing is re-read after its check.

    `names` (default: every listed file not in `stream`) come back as the bytes that were hashed.
    Each `stream[name]` is called with a reader of that file that hashes as it is read (an
    envelope decrypts from it); its result comes back only if the file's digest then matches.
    """
    folder = Path(folder)
    stream = dict(stream or {})
    manifest = signed_manifest(folder, public_key)
    if names is None:
        names = [f.path for f in manifest.files if f.path not in stream]
    unknown = [n for n in [*names, *stream] if manifest.get(n) is None]
    if unknown:
        raise SignatureMismatch(
            f"{folder}'s signed manifest does not list {', '.join(unknown)}", missing=tuple(unknown)
        )
    return manifest, _check_folder(folder, manifest, set(names), stream)
