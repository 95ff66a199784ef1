"""Envelope encryption: one fresh AES-256-GCM data key per artifact, wrapped by a keyset's primary KEK.

The format follows the AWS Encryption SDK's message format (a self-describing,
authenticated header; a framed body; key commitment) and Tink's streaming AEAD
(per-artifact salt, nonces from a chunk counter, a final-chunk flag).

Byte layout, version 1 (integers big-endian)::

    offset   size  field
    0        8     magic            b"HPAI-ENV"
    8        1     version          1
    9        1     algorithm id     1 = AES-256-GCM, HKDF-SHA256 key derivation, key commitment
    10       4     chunk size C     plaintext bytes per chunk (1 .. 64 MiB)
    14       32    salt             random per artifact; HKDF salt
    46       8     nonce prefix     random per artifact; chunk i's nonce = prefix || uint32(i)
    54       32    key commitment   HKDF output that pins the data key (checked before any decryption)
    --- everything above is the *fixed header*; SHA-256 of it is bound into every chunk ---
    86       2     key slot size S
    88       S     key slot         uint8 len | key id (UTF-8) | uint16 len | wrapped data key | zero padding
    88+S     32    header tag       HMAC-SHA256 over bytes 0 .. 88+S, keyed from the data key
    120+S    ...   chunks           ciphertext || 16-byte GCM tag; every chunk but the last holds C
                                    plaintext bytes, the last holds 0 .. C (0 only for an empty artifact)

Keys: HKDF-SHA256(data key, salt, info="HPAI-ENV v1 AES-256-GCM") gives 96 bytes, split
into the chunk key, the header-tag key and the commitment.

Chunk i is sealed with AAD = SHA-256(fixed header) || uint64(i) || uint8(is_final), so
a reordered, dropped, appended or spliced chunk fails its tag, and a body cut at a chunk
boundary fails because the new last chunk was sealed as not final.

Why the key slot is outside the chunk AAD: `rewrap` moves an artifact to a new KEK by
rewriting only the slot and the header tag, in place, without touching the body. The
slot needs no other protection: the wrapped key is checked by its KEK, the data key it
yields must match the commitment, and the header tag (which only the data key's holder
can compute) covers the whole header including the slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import os
import secrets
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.files import Sink, Source, atomic_output, read_fully_into

from .errors import FormatError, IntegrityError, SecureError
from .keys import Keyset

MAGIC = b"HPAI-ENV"
VERSION = 1
ALG_AES256GCM_HKDF_COMMIT = 1
ALGORITHMS = {ALG_AES256GCM_HKDF_COMMIT: "AES-256-GCM, HKDF-SHA256, key commitment"}
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 1 << 26
DEFAULT_SLOT_SIZE = 1024  # room for an RSA-4096 wrapped key and a long id, so rotation can rewrite in place
TAG_SIZE = 16
HEADER_TAG_SIZE = 32
MAX_CHUNKS = 1 << 32  # the nonce counter is 32 bits
# AES-GCM's confidentiality bound grows with the blocks sealed under one key, about blocks^2 / 2^129
# (draft-irtf-cfrg-aead-limits): 2^38 bytes keeps it below 2^-61, near TLS 1.3's 2^24.5 records of 16 KiB per key
MAX_BYTES_PER_KEY = 1 << 38  # 256 GiB

_FIXED = struct.Struct(">8sBBI32s8s32s")  # magic, version, algorithm, chunk size, salt, nonce prefix, commitment
FIXED_SIZE = _FIXED.size  # 86
_INFO = b"HPAI-ENV v1 AES-256-GCM"


@dataclass(frozen=True)
class Header:
    """A parsed envelope header. Parsing checks the shape only; `decrypt_*` and `rewrap` authenticate it."""

    version: int
    algorithm: int
    chunk_size: int
    salt: bytes
    nonce_prefix: bytes
    commitment: bytes
    slot_size: int
    key_id: str
    wrapped_key: bytes
    tag: bytes

    @property
    def fixed(self) -> bytes:
        """The fixed header bytes (what every chunk is bound to)."""
        return _FIXED.pack(
            MAGIC, self.version, self.algorithm, self.chunk_size, self.salt, self.nonce_prefix, self.commitment
        )

    @property
    def length(self) -> int:
        """Bytes from the start of the artifact to its first chunk."""
        return FIXED_SIZE + 2 + self.slot_size + HEADER_TAG_SIZE

    def signed_bytes(self) -> bytes:
        """Everything the header tag covers."""
        return self.fixed + struct.pack(">H", self.slot_size) + _slot(self.key_id, self.wrapped_key, self.slot_size)

    def layout(self) -> list[tuple[str, int, int]]:
        """(field, offset, size) of every header field, in file order; for drawing the header."""
        id_len = len(self.key_id.encode())
        sizes = [
            ("magic", 8),
            ("version", 1),
            ("algorithm id", 1),
            ("chunk size", 4),
            ("salt", 32),
            ("nonce prefix", 8),
            ("key commitment", 32),
            ("key slot size", 2),
            ("key id length", 1),
            ("key id", id_len),
            ("wrapped key length", 2),
            ("wrapped data key", len(self.wrapped_key)),
            ("slot padding", self.slot_size - 3 - id_len - len(self.wrapped_key)),
            ("header tag", HEADER_TAG_SIZE),
        ]
        rows, offset = [], 0
        for name, size in sizes:
            rows.append((name, offset, size))
            offset += size
        return rows


@dataclass(frozen=True, repr=False)
class _Keys:
    """The keys derived from one data key; never printed (a traceback with locals must not show them)."""

    chunk: AESGCM
    header_mac: bytes
    commitment: bytes

    def __repr__(self) -> str:
        return "_Keys(<derived keys hidden>)"


def _derive(data_key: bytes, salt: bytes) -> _Keys:
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=salt, info=_INFO).derive(data_key)
    return _Keys(AESGCM(okm[:32]), okm[32:64], okm[64:])


def _slot(key_id: str, wrapped: bytes, slot_size: int) -> bytes:
    kid = key_id.encode()
    body = struct.pack(">B", len(kid)) + kid + struct.pack(">H", len(wrapped)) + wrapped
    if len(body) > slot_size:
        raise SecureError(f"key id and wrapped key need {len(body)} bytes, the key slot holds {slot_size}")
    return body + bytes(slot_size - len(body))


def _header_tag(keys: _Keys, header: Header) -> bytes:
    return hmac.new(keys.header_mac, header.signed_bytes(), hashlib.sha256).digest()


# -- parsing ------------------------------------------------------------------------------------------------------
def _read_exact(src: Source, n: int, what: str) -> bytes:
    buf = bytearray(n)
    got = read_fully_into(src, memoryview(buf))
    if got != n:
        raise FormatError(f"truncated envelope: {what} needs {n} bytes, found {got}")
    return bytes(buf)


def read_header(src: Source) -> Header:
    """Parse (not authenticate) the header at the current position; leaves `src` at the first chunk.

    Any malformed input raises FormatError, whatever the bytes: the parser is fuzzed.
    """
    magic, version, algorithm, chunk_size, salt, prefix, commitment = _FIXED.unpack(
        _read_exact(src, FIXED_SIZE, "the fixed header")
    )
    if magic != MAGIC:
        raise FormatError("not an HPAI envelope: bad magic bytes")
    if version != VERSION:
        raise FormatError(f"unsupported envelope version {version} (this library reads version {VERSION})")
    if algorithm not in ALGORITHMS:
        raise FormatError(f"unknown algorithm id {algorithm}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise FormatError(f"chunk size {chunk_size} is outside 1 .. {MAX_CHUNK_SIZE}")
    (slot_size,) = struct.unpack(">H", _read_exact(src, 2, "the key slot size"))
    slot = _read_exact(src, slot_size, "the key slot")
    if slot_size < 4:
        raise FormatError(f"key slot of {slot_size} bytes cannot hold a key id and a wrapped key")
    id_len = slot[0]
    if id_len == 0 or 1 + id_len + 2 > slot_size:
        raise FormatError(f"key id length {id_len} does not fit the {slot_size}-byte key slot")
    try:
        key_id = slot[1 : 1 + id_len].decode()
    except UnicodeDecodeError:
        raise FormatError("key id is not valid UTF-8") from None
    (wrapped_len,) = struct.unpack(">H", slot[1 + id_len : 3 + id_len])
    end = 3 + id_len + wrapped_len
    if wrapped_len == 0 or end > slot_size:
        raise FormatError(f"wrapped key length {wrapped_len} does not fit the {slot_size}-byte key slot")
    if any(slot[end:]):
        raise FormatError("key slot padding is not zero")
    tag = _read_exact(src, HEADER_TAG_SIZE, "the header tag")
    return Header(
        version, algorithm, chunk_size, salt, prefix, commitment, slot_size, key_id, slot[3 + id_len : end], tag
    )


def _open_header(header: Header, keyset: Keyset) -> tuple[bytes, _Keys]:
    """Unwrap the data key and authenticate the header: commitment first, then the header tag."""
    data_key = keyset.unwrap(header.key_id, header.wrapped_key)
    keys = _derive(data_key, header.salt)
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise IntegrityError(
            f"key commitment mismatch: the data key unwrapped by {header.key_id} is not this artifact's"
        )
    if not hmac.compare_digest(_header_tag(keys, header), header.tag):
        raise IntegrityError("header authentication failed: a header field was altered")
    return data_key, keys


# -- streaming ------------------------------------------------------------------------------------------------------
def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= MAX_CHUNKS:
        raise SecureError(f"an envelope holds at most {MAX_CHUNKS} chunks: use a larger chunk size")
    return prefix + index.to_bytes(4, "big")


def _aad(digest: bytes, index: int, final: bool) -> bytes:
    return digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _double_buffered(src: Source, size: int) -> Iterator[tuple[memoryview, bool]]:
    """Yield (chunk, is_final) with one chunk of read-ahead, so the last chunk is known when it is sealed."""
    bufs = [memoryview(bytearray(size)), memoryview(bytearray(size))]
    n = read_fully_into(src, bufs[0])
    while True:
        m = read_fully_into(src, bufs[1]) if n == size else 0
        yield bufs[0][:n], m == 0
        if m == 0:
            return
        bufs.reverse()
        n = m


def encrypt_stream(
    src: Source, dst: Sink, keyset: Keyset, *, chunk_size: int = DEFAULT_CHUNK_SIZE, slot_size: int = 0
) -> int:
    """Encrypt everything `src` yields into `dst` under a fresh data key; returns the plaintext length.

    `slot_size` (default: 1 KiB, or more if the primary's wrapped key needs it) reserves room in
    the header so a later `rewrap` to a KEK with a longer wrapped key still happens in place.
    At most two plaintext chunks are held in memory, whatever the artifact size. Buffers
    are reused between chunks, so `dst.write` must copy what it keeps (as io's contract says).
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in 1 .. {MAX_CHUNK_SIZE}, got {chunk_size}")
    data_key = AESGCM.generate_key(bit_length=256)
    salt, prefix = secrets.token_bytes(32), secrets.token_bytes(8)
    key_id, wrapped = keyset.wrap(data_key)
    needed = 3 + len(key_id.encode()) + len(wrapped)
    slot_size = slot_size or max(DEFAULT_SLOT_SIZE, needed)
    keys = _derive(data_key, salt)
    _slot(key_id, wrapped, slot_size)  # fails early if it does not fit
    header = Header(VERSION, ALG_AES256GCM_HKDF_COMMIT, chunk_size, salt, prefix, keys.commitment, slot_size, key_id,
                    wrapped, b"")  # fmt: skip
    dst.write(header.signed_bytes() + _header_tag(keys, header))
    digest = hashlib.sha256(header.fixed).digest()
    out = bytearray(chunk_size + TAG_SIZE)
    total = 0
    for index, (chunk, final) in enumerate(_double_buffered(src, chunk_size)):
        sealed = memoryview(out)[: len(chunk) + TAG_SIZE]
        total += len(chunk)
        if total > MAX_BYTES_PER_KEY:
            raise SecureError(
                f"more than {MAX_BYTES_PER_KEY / 2**30:g} GiB under one data key weakens AES-GCM's confidentiality "
                "bound: split the artifact"
            )
        keys.chunk.encrypt_into(_nonce(prefix, index), chunk, _aad(digest, index, final), sealed)
        dst.write(sealed)
    return total


@runtime_checkable
class InPlaceSink(Protocol):
    """A `dst` in memory that lends `decrypt_stream` its next bytes to decrypt into, so nothing is copied."""

    def reserve(self, n: int, /) -> memoryview:
        """A writable view of the next n bytes, handed to no one else; not content until `commit`."""
        ...

    def commit(self, n: int, /) -> None:
        """The n reserved bytes authenticated: they are content now."""
        ...


class _ThroughBuffer:
    """The `InPlaceSink` of any other `dst`: chunks are decrypted into one reused buffer, then written."""

    def __init__(self, dst: Sink, size: int):
        self._dst, self._buffer = dst, memoryview(bytearray(size))

    def reserve(self, n: int) -> memoryview:
        return self._buffer[:n]

    def commit(self, n: int) -> None:
        self._dst.write(self._buffer[:n])


def decrypt_stream(src: Source, dst: Sink | InPlaceSink, keyset: Keyset) -> int:
    """Decrypt an envelope from `src` into `dst`; returns the plaintext length.

    Each chunk is written only after its tag verified. A failure part-way (a cut or
    altered later chunk) leaves the verified prefix in `dst`: use `decrypt_file` or
    `decrypt_bytes` for all-or-nothing output. `dst.write` gets a view of a reused buffer
    (io's contract: copy what you keep), so plaintext is never duplicated here.

    A `dst` that lives in memory may be an `InPlaceSink` (`reserve(n)`, a writable view of its next
    n bytes that it hands to no one, and `commit(n)`): each chunk is then decrypted straight into
    place, committed once its tag verified, and erased if it did not (`weights` loads this way).
    """
    header = read_header(src)
    _, keys = _open_header(header, keyset)
    sink = dst if isinstance(dst, InPlaceSink) else _ThroughBuffer(dst, header.chunk_size)
    return sum(_decrypt_chunks(src, header, keys, sink))


def _decrypt_chunks(src: Source, header: Header, keys: _Keys, sink: InPlaceSink) -> Iterator[int]:
    """Decrypt the chunks after `header` into `sink`, one at a time; yields each chunk's plaintext length
    once it authenticated and was committed (a generator, so a reader can pull the plaintext lazily)."""
    digest = hashlib.sha256(header.fixed).digest()
    for index, (sealed, final) in enumerate(_double_buffered(src, header.chunk_size + TAG_SIZE)):
        if len(sealed) < TAG_SIZE or (final and index > 0 and len(sealed) == TAG_SIZE):
            raise IntegrityError(f"chunk {index} is truncated: the envelope was cut short")
        n = len(sealed) - TAG_SIZE
        out = sink.reserve(n)
        try:
            keys.chunk.decrypt_into(_nonce(header.nonce_prefix, index), sealed, _aad(digest, index, final), out)
        except InvalidTag:
            out[:] = bytes(n)  # AES-GCM wrote the unauthenticated plaintext before the tag check: erase it
            what = "the last chunk" if final else f"chunk {index}"
            raise IntegrityError(
                f"{what} failed authentication: altered, reordered, truncated or from another artifact"
            ) from None
        sink.commit(n)
        yield n


class _DecryptingReader:
    """A `Source` of an envelope's plaintext, decrypted a chunk at a time as it is read: each chunk is
    handed out only after its tag verified, and at most one chunk of plaintext is held."""

    def __init__(self, src: Source, header: Header, keys: _Keys):
        self._buffer = memoryview(bytearray(header.chunk_size))
        self._start = self._end = 0
        self._chunks = _decrypt_chunks(src, header, keys, self)

    def reserve(self, n: int) -> memoryview:
        return self._buffer[:n]

    def commit(self, n: int) -> None:
        self._start, self._end = 0, n

    def readinto(self, view: memoryview) -> int:
        while self._start == self._end:
            if next(self._chunks, None) is None:
                return 0
        n = min(len(view), self._end - self._start)
        view[:n] = self._buffer[self._start : self._start + n]
        self._start += n
        return n


# -- conveniences ---------------------------------------------------------------------------------------------------
def encrypt_bytes(plaintext: bytes, keyset: Keyset, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """The envelope of `plaintext`."""
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), out, keyset, chunk_size=chunk_size)
    return out.getvalue()


def decrypt_bytes(envelope: bytes, keyset: Keyset) -> bytes:
    """The plaintext, returned only once every chunk authenticated."""
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(envelope), out, keyset)
    return out.getvalue()


def encrypt_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    keyset: Keyset,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Encrypt a file; `out_path` appears (atomically) only when complete."""
    with (
        _naming(in_path),
        open(in_path, "rb") as src,
        _private_output(out_path, not_same_as=in_path) as dst,
    ):
        return encrypt_stream(src, dst, keyset, chunk_size=chunk_size)


def decrypt_file(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], keyset: Keyset) -> int:
    """Decrypt a file; `out_path` appears only after the last chunk authenticated, else not at all."""
    with (
        _naming(in_path),
        open(in_path, "rb") as src,
        _private_output(out_path, not_same_as=in_path) as dst,
    ):
        return decrypt_stream(src, dst, keyset)


@contextlib.contextmanager
def _naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Prefix a failure with the artifact's file name, so a batch job says which file failed."""
    try:
        yield
    except SecureError as exc:
        raise type(exc)(f"{Path(path).name}: {exc}") from None


def _private_output(
    out_path: str | os.PathLike[str], *, not_same_as: str | os.PathLike[str]
) -> contextlib.AbstractContextManager[BinaryIO]:
    """`atomic_output` with mode 0600 (a plaintext or an artifact is its owner's alone), refusing to
    overwrite the input it is made from (the temp file would be renamed over the file being read)."""
    out = Path(out_path)
    if out.exists() and out.resolve() == Path(not_same_as).resolve():
        raise ValueError(f"input and output are the same file: {out}")
    return atomic_output(out, mode=0o600)


# -- rotation -------------------------------------------------------------------------------------------------------
def rewrap(path: str | os.PathLike[str], keyset: Keyset) -> str:
    """Move an artifact to the keyset's primary KEK by rewriting only its key slot and header tag.

    The body is not read, so the cost does not grow with the artifact. Returns the new
    key id (unchanged if the artifact already uses the primary). The old key must still
    be enabled. The in-place write is one small `pwrite` at a fixed offset followed by
    fsync; it is not atomic against power loss (copy the file first if that matters).
    """
    path = Path(path)
    with _naming(path), open(path, "rb") as src:
        header = read_header(src)
        data_key, keys = _open_header(header, keyset)
    if header.key_id == keyset.primary.key_id:
        return header.key_id
    key_id, wrapped = keyset.wrap(data_key)
    needed = 3 + len(key_id.encode()) + len(wrapped)
    if needed > header.slot_size:
        _rewrite_with_bigger_slot(path, header, keys, key_id, wrapped, max(DEFAULT_SLOT_SIZE, needed))
        return key_id
    new = dataclasses.replace(header, key_id=key_id, wrapped_key=wrapped, tag=b"")
    signed = new.signed_bytes()
    fd = os.open(path, os.O_WRONLY)
    try:
        region = signed[FIXED_SIZE:] + _header_tag(keys, new)
        if os.pwrite(fd, region, FIXED_SIZE) != len(region):
            raise SecureError(f"short write while re-wrapping {path.name}")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key_id


def reencrypt(path: str | os.PathLike[str], keyset: Keyset) -> str:
    """Replace an artifact by one under a *new data key*, wrapped by the keyset's primary; returns its key id.

    What recovering from a compromised data key, or from a KEK that was compromised while it wrapped
    this artifact, takes: `rewrap` keeps the data key, so anyone who learned it (or who holds any other
    wrapping of it: a backup's header, an old keyset's key file) still decrypts the body, which `rewrap`
    leaves byte for byte. Every chunk is decrypted (and authenticated) and encrypted again under fresh
    keys, salt and nonces, streamed a chunk at a time, so the cost grows with the artifact. The new file
    replaces the old one atomically, only once complete; plaintext never touches the disk.
    """
    path = Path(path)
    with _naming(path), open(path, "rb") as src:
        header = read_header(src)
        _, keys = _open_header(header, keyset)
        mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        key_id = keyset.primary.key_id
        with atomic_output(path, mode=mode) as dst:
            encrypt_stream(_DecryptingReader(src, header, keys), dst, keyset, chunk_size=header.chunk_size)
    return key_id


def _rewrite_with_bigger_slot(path: Path, header: Header, keys: _Keys, key_id: str, wrapped: bytes, slot: int) -> None:
    """The rare case of a new wrapped key too big for the old slot: copy the body behind a larger header."""
    new = dataclasses.replace(header, slot_size=slot, key_id=key_id, wrapped_key=wrapped, tag=b"")
    with open(path, "rb") as src, atomic_output(path, mode=stat.S_IMODE(os.fstat(src.fileno()).st_mode)) as dst:
        src.seek(header.length)
        dst.write(new.signed_bytes() + _header_tag(keys, new))
        while block := src.read(DEFAULT_CHUNK_SIZE):
            dst.write(block)
