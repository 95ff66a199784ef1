"""Model weights encrypted at rest, signed, and decrypted only into memory.

Saving: the state dict is serialised to safetensors *bytes*, sealed in an
envelope (`envelope.encrypt_bytes`) and written as `model.safetensors.enc`
beside any plain config files; then the folder is signed (`signing`).
Loading reverses it without a plaintext file ever touching disk: the folder's
signature and every file's digest are checked (the bytes decrypted are the
very bytes hashed, in one pass), the envelope is opened into anonymous memory,
and the tensors are views of that memory, parsed by a strict safetensors
reader that the tests hold equal to `safetensors.torch.load`.

Pickle checkpoints (by suffix, or pickle bytes under any name) are refused
everywhere, by `common.secure.pickles`: loading one runs its author's code.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.files import Source, write_atomically
from common.secure.envelope import decrypt_stream, encrypt_bytes, encrypt_file
from common.secure.errors import FormatError, IntegrityError, UnsafeFormat
from common.secure.keys import Keyset
from common.secure.pickles import HEAD_BYTES, refuse_pickle
from common.secure.signing import (
    SIGNATURE_FILE,
    SigningKey,
    VerifyKey,
    read_verified,
    sign_folder,
    signed_manifest,
)

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "model.safetensors.enc"
ENCRYPTED_SUFFIX = ".enc"
CONFIG_FILE = "config.json"


_DTYPES = {  # safetensors dtype names -> torch dtype names (looked up lazily: torch loads late)
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}  # fmt: skip
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def _parse_safetensors(plain: bytearray | memoryview, name: str) -> dict[str, torch.Tensor]:
    """Tensors over the decrypted buffer itself (no copy), checked as strictly as safetensors checks.

    Why not `safetensors.torch.load(bytes)`: it takes `bytes`, so the plaintext would be
    copied twice more (bytearray -> bytes -> tensors), and a fresh copy of a large model
    costs about as much as decrypting it. The tensors keep the buffer alive; a test
    holds this parser equal to safetensors.torch.load.
    """
    import torch

    head = bytes(plain[:HEAD_BYTES])
    refuse_pickle(
        name.removesuffix(ENCRYPTED_SUFFIX), head if head[:2] != b"PK" else bytes(plain)
    )  # a zip: read it whole

    if sys.byteorder != "little":  # safetensors is little-endian; let the library swap bytes
        import safetensors.torch

        return safetensors.torch.load(bytes(plain))

    def bad(why: str) -> FormatError:
        return FormatError(f"{name} decrypted to bytes that are not valid safetensors: {why}")

    if len(plain) < 8:
        raise bad(f"{len(plain)} bytes is shorter than the 8-byte header length")
    n = int.from_bytes(plain[:8], "little")
    if n > min(MAX_HEADER, len(plain) - 8):
        raise bad(f"header length {n} exceeds the data")
    try:
        header = json.loads(bytes(plain[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError):
        raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    header.pop("__metadata__", None)
    start, body = 8 + n, len(plain) - 8 - n
    tensors, spans = {}, []
    for key, info in header.items():
        try:
            dtype = getattr(torch, _DTYPES[info["dtype"]])
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {key!r} has a missing, unknown or malformed dtype, shape or data_offsets") from None
        numel = math.prod(shape)
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= body or end - begin != numel * dtype.itemsize:
            raise bad(f"tensor {key!r}: shape {shape} of {info['dtype']} does not match bytes {begin}..{end}")
        spans.append((begin, end, key))
        if numel == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
        else:
            tensors[key] = torch.frombuffer(plain, dtype=dtype, count=numel, offset=start + begin).view(shape)
    covered = 0
    for begin, end, key in sorted(spans):
        if begin != covered:
            raise bad(f"tensor {key!r} starts at {begin}, expected {covered}: gaps and overlaps are not allowed")
        covered = end
    if covered != body:
        raise bad(f"the tensors cover {covered} of {body} data bytes")
    return tensors


def save_encrypted(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    keyset: Keyset,
    signing_key: SigningKey,
    *,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write `folder/model.safetensors.enc` (+ `config.json` if given) and sign the folder; returns the artifact.

    The plaintext safetensors exist only as bytes in this process, never as a file.
    """
    import safetensors.torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = safetensors.torch.save(dict(state_dict))
    artifact = folder / WEIGHTS_FILE
    write_atomically(artifact, encrypt_bytes(plain, keyset))
    if config is not None:
        write_atomically(folder / CONFIG_FILE, json.dumps(dict(config), indent=2, sort_keys=True).encode())
    sign_folder(folder, signing_key)
    return artifact


MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+; Python 3.11's mmap lacks the name
POPULATE_STEP = 8 << 20
HUGE_PAGES = True  # ask for transparent huge pages for a plaintext buffer (see _MemoryWriter)


def _anonymous_memory(size: int, *, populate: bool = True) -> mmap.mmap | bytearray:
    """Fresh memory for a plaintext: anonymous (backed by no file) and, on Linux, pre-faulted if `populate`.

    Why MAP_POPULATE: the kernel maps every page in one call instead of one fault per
    4 KiB page at first write, which measured ~2x faster for the 90 MB MiniLM weights.
    """
    flags = getattr(mmap, "MAP_POPULATE", 0) if populate else 0
    if size and hasattr(mmap, "MAP_ANONYMOUS") and (flags or not populate):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    return bytearray(size)


class _MemoryWriter:
    """The `dst` of `decrypt_stream`: authenticated chunks land in one preallocated buffer, in memory only.

    The buffer is pre-faulted a few MiB ahead of the writes (MADV_POPULATE_WRITE) rather than all at
    once up front: the same kernel work, but spread over the decryption, so the file's SHA-256 on the
    other core starts at once instead of waiting for 90 MB of fresh pages. It is also marked for
    transparent huge pages (MADV_HUGEPAGE, which the kernel may ignore): fresh 4 KiB pages measured
    ~33 ms for 96 MiB, 2 MiB pages ~8 ms (with the kernel's default `defrag=madvise`, a rare load may
    wait on compaction instead). Where the kernel lacks MADV_POPULATE_WRITE, the whole buffer is
    pre-faulted at the start (MAP_POPULATE), as before. The mapping is left out of core dumps
    (MADV_DONTDUMP): a crash must not write the plaintext weights to disk.
    """

    def __init__(self, capacity: int):
        memory = _anonymous_memory(capacity, populate=False)
        self._populated = capacity  # pre-faulted up to here (a bytearray: all of it, by the allocator)
        self._ahead: mmap.mmap | None = None  # the mapping to pre-fault ahead of the writes, if there is one
        if isinstance(memory, mmap.mmap):
            try:
                if HUGE_PAGES and hasattr(mmap, "MADV_HUGEPAGE"):
                    with contextlib.suppress(OSError):  # a kernel without THP: 4 KiB pages, still correct
                        memory.madvise(mmap.MADV_HUGEPAGE)
                if hasattr(mmap, "MADV_DONTDUMP"):  # plaintext weights stay out of core dumps (secure.memory)
                    with contextlib.suppress(OSError):
                        memory.madvise(mmap.MADV_DONTDUMP)
                memory.madvise(MADV_POPULATE_WRITE, 0, min(POPULATE_STEP, capacity))
                self._populated, self._ahead = min(POPULATE_STEP, capacity), memory
            except (OSError, ValueError, AttributeError):
                memory.close()
                memory = _anonymous_memory(capacity)
        self._view = memoryview(memory)
        self._memory = memory
        self.size = 0

    def reserve(self, n: int) -> memoryview:
        """The next n bytes of the buffer, for `decrypt_stream` to decrypt into; not part of the plaintext
        until `commit`, and never handed to anyone else."""
        end = self.size + n
        if end > len(self._view):
            raise IntegrityError("an envelope decrypted to more bytes than it holds")
        if end > self._populated and self._ahead is not None:
            upto = min(-(-end // POPULATE_STEP) * POPULATE_STEP, len(self._view))  # page-aligned steps
            self._ahead.madvise(MADV_POPULATE_WRITE, self._populated, upto - self._populated)
            self._populated = upto
        return self._view[self.size : end]

    def commit(self, n: int) -> None:
        """The n reserved bytes authenticated: they are plaintext now."""
        self.size += n

    def write(self, data: Any) -> int:
        n = len(data)
        self.reserve(n)[:] = data
        self.commit(n)
        return n

    def finish(self) -> memoryview:
        """The plaintext: a view of the buffer (which it keeps alive), so it is never copied."""
        return self._view[: self.size]


def _decrypt_from(path: Path, keyset: Keyset) -> Callable[[Source], memoryview]:
    """A `read_verified` stream consumer: decrypts the envelope as it is read (and hashed) into memory."""

    def consume(reader: Source) -> memoryview:
        out = _MemoryWriter(path.stat().st_size)  # an envelope is longer than its plaintext
        decrypt_stream(reader, out, keyset)
        return out.finish()

    return consume


def _decrypted(folder: Path, keyset: Keyset, public_key: VerifyKey, names: list[str] | None) -> tuple[dict, dict]:
    """({encrypted name: plaintext}, {other name: bytes}) in one verified pass over the folder."""
    listed = [f.path for f in signed_manifest(folder, public_key).files]
    encrypted = [n for n in listed if n.endswith(ENCRYPTED_SUFFIX)] if names is None else names
    stream = {n: _decrypt_from(folder / n, keyset) for n in encrypted}
    plain = [n for n in listed if n not in stream] if names is None else []
    _, contents = read_verified(folder, public_key, plain, stream=stream)
    return {n: contents.pop(n) for n in encrypted}, contents


def load_encrypted(
    folder: str | os.PathLike[str], keyset: Keyset, public_key: VerifyKey, *, name: str = WEIGHTS_FILE
) -> dict[str, torch.Tensor]:
    """The state dict, after the folder's signature and digests check out; decrypted in memory only.

    One pass reads the artifact: each chunk is hashed and decrypted as it arrives, and the
    plaintext is parsed only after the whole file's digest matched the signed manifest.
    """
    decrypted, _ = _decrypted(Path(folder), keyset, public_key, [name])
    return _parse_safetensors(decrypted[name], name)


@dataclass
class DecryptedModel:
    """A verified model folder in memory: its config, its weights, and its other (plain, signed) files."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    files: dict[str, bytes] = field(repr=False)  # e.g. tokenizer.json, by path relative to the folder

    def __repr__(self) -> str:
        return f"DecryptedModel({len(self.state_dict)} tensors, files={sorted(self.files)})"


def encrypt_model_folder(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], keyset: Keyset, signing_key: SigningKey
) -> Path:
    """An encrypted, signed copy of a Hugging Face folder: `*.safetensors` become `*.safetensors.enc`,
    config and tokenizer files are copied as they are (public, but signed, so not alterable).

    Refuses pickle checkpoints rather than copy or drop them; `dst` appears complete or not at all.
    """
    src, dst = Path(src), Path(dst)
    if not (src / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{src} is not a Hugging Face model folder: {CONFIG_FILE} is missing")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; encrypt into a new folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink())
    for path in files:
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link: copy the file it points to into the folder")
        with open(path, "rb") as f:
            refuse_pickle(str(path.relative_to(src)), f.read(HEAD_BYTES))
    if not any(p.name.endswith(".safetensors") for p in files):
        raise FileNotFoundError(f"{src} has no .safetensors weights to encrypt")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial"))
    try:
        for path in files:
            rel = path.relative_to(src)
            if rel.as_posix() == SIGNATURE_FILE:
                continue  # a signature of the plain folder; the copy gets its own
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if path.name.endswith(".safetensors"):
                encrypt_file(path, out.with_name(out.name + ENCRYPTED_SUFFIX), keyset)
            else:
                shutil.copyfile(path, out, follow_symlinks=False)
        sign_folder(staging, signing_key)
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dst


def load_model_folder(folder: str | os.PathLike[str], keyset: Keyset, public_key: VerifyKey) -> DecryptedModel:
    """Everything a model needs, from an `encrypt_model_folder` copy: verified, then decrypted in memory.

    Every file is read once, hashed, and handed on from memory, so nothing is
    re-read from disk after the check.
    """
    folder = Path(folder)
    decrypted, contents = _decrypted(folder, keyset, public_key, None)
    state_dict: dict[str, torch.Tensor] = {}
    for name in sorted(decrypted):
        if not name.endswith(".safetensors" + ENCRYPTED_SUFFIX):
            raise UnsafeFormat(f"{name}: only encrypted safetensors are loaded from an encrypted model folder")
        tensors = _parse_safetensors(decrypted.pop(name), name)
        if repeated := sorted(tensors.keys() & state_dict.keys()):
            raise FormatError(f"{name} repeats tensors of another weights file: {', '.join(repeated[:5])}")
        state_dict.update(tensors)
    files: dict[str, bytes] = {}
    for name in sorted(contents):
        data = bytes(contents.pop(name))
        refuse_pickle(name, data[:HEAD_BYTES])
        if name.endswith(".safetensors"):
            raise UnsafeFormat(f"{name} is plaintext weights in an encrypted model folder")
        files[name] = data
    if not state_dict:
        raise FileNotFoundError(f"{folder} has no encrypted weights (*.safetensors.enc)")
    try:
        config = json.loads(files[CONFIG_FILE])
    except KeyError:
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}") from None
    return DecryptedModel(config, state_dict, files)
