"""Encrypted weights: round trips, verification before use, no plaintext on disk, no pickle, and serving from them."""

from __future__ import annotations

import json
import mmap
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data.memory import assert_zero_copy
from common.engine import build_engine
from common.engine.embedding import EmbeddingCodec, minilm_path, sentence_encoder
from common.secure import weights
from common.secure.errors import FormatError, IntegrityError, KeyNotFound, SignatureMismatch, UnsafeFormat
from common.secure.keys import Keyset
from common.secure.signing import SIGNATURE_FILE, generate_signing_key, sign_folder, verify_folder
from common.secure.weights import (
    WEIGHTS_FILE,
    _parse_safetensors,
    encrypt_model_folder,
    load_encrypted,
    load_model_folder,
    save_encrypted,
)

PASSWORD = b"weights-test-password"
TEXTS = ["hello world", "Encrypted at rest, decrypted only in memory.", "Ünïcode and CAPS"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys") / "keyset"
    Keyset.generate(folder, PASSWORD)
    return folder


@pytest.fixture(scope="module")
def keyset(keys: Path) -> Keyset:
    return Keyset.load(keys, PASSWORD)


def state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(64, 33, generator=g),
        "layer.bias": torch.randn(33, generator=g).half(),
        "norm.scale": torch.randn(7, generator=g).bfloat16(),
        "position_ids": torch.arange(512).unsqueeze(0),
        "mask": torch.rand(5, 3, generator=g) > 0.5,
        "bytes": torch.randint(0, 255, (11,), generator=g, dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# -- save / load ----------------------------------------------------------------------------------------------------
def test_round_trip_every_dtype(tmp_path: Path, keyset: Keyset) -> None:
    sd = state_dict()
    artifact = save_encrypted(sd, tmp_path / "m", keyset, keyset.signing_key(), config={"hidden_size": 33})
    assert artifact == tmp_path / "m" / WEIGHTS_FILE
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", WEIGHTS_FILE, SIGNATURE_FILE]
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == {"hidden_size": 33}
    plain = safetensors.torch.save(sd)
    blob = artifact.read_bytes()
    for i in range(0, len(plain) - 32, 997):  # no 32-byte run of the plaintext survives into the artifact
        assert plain[i : i + 32] not in blob
    assert_same(load_encrypted(tmp_path / "m", keyset, keyset.verify_key()), sd)


def test_parser_is_held_equal_to_safetensors(tmp_path: Path) -> None:
    """The zero-copy parser gives what safetensors.torch.load gives: a random dict, metadata, and MiniLM."""
    for data in (
        safetensors.torch.save(state_dict(1)),
        safetensors.torch.save(state_dict(2), metadata={"format": "pt", "note": "x"}),
        (minilm_path() / "model.safetensors").read_bytes(),
    ):
        assert_same(_parse_safetensors(bytearray(data), "t"), safetensors.torch.load(data))


def test_parsed_tensors_lie_inside_the_buffer_they_were_parsed_from() -> None:
    """Zero copy, by address: every tensor's bytes (data_ptr .. + nbytes) are inside the plaintext buffer."""
    plain = bytearray(safetensors.torch.save(state_dict(3)))
    tensors = _parse_safetensors(plain, "t")
    assert [name for name, t in tensors.items() if t.numel() == 0] == ["empty"]  # no bytes, no buffer to check
    for t in (t for t in tensors.values() if t.numel()):
        assert_zero_copy(plain, t)
    with pytest.raises(AssertionError, match="1 of 1 buffers were copied"):  # the check sees a copy
        assert_zero_copy(plain, tensors["layer.weight"].clone())


def test_a_load_decrypts_into_one_anonymous_buffer_and_the_tensors_are_views_of_it(
    tmp_path: Path, keyset: Keyset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No copy between the cipher and the tensors: chunks are decrypted in place (the writer's copying
    `write` is never called) into memory the tensors then point into."""
    parsed: list[memoryview] = []
    parse = weights._parse_safetensors

    def spy(plain: memoryview, name: str) -> dict[str, torch.Tensor]:
        parsed.append(plain)
        return parse(plain, name)

    def copying_write(self: object, data: object) -> int:
        raise AssertionError("a chunk was copied into the plaintext buffer instead of decrypted in place")

    monkeypatch.setattr(weights, "_parse_safetensors", spy)
    monkeypatch.setattr(weights._MemoryWriter, "write", copying_write)
    sd = state_dict(4)
    save_encrypted(sd, tmp_path / "m", keyset, keyset.signing_key())
    loaded = load_encrypted(tmp_path / "m", keyset, keyset.verify_key())
    assert_same(loaded, sd)
    (plain,) = parsed
    assert isinstance(plain.obj, mmap.mmap if hasattr(mmap, "MAP_ANONYMOUS") else bytearray), type(plain.obj)
    for t in (t for t in loaded.values() if t.numel()):
        assert_zero_copy(plain, t)


def _craft(header: object, body: bytes = b"") -> bytearray:
    raw = json.dumps(header).encode()
    return bytearray(len(raw).to_bytes(8, "little") + raw + body)


@pytest.mark.parametrize(
    ("plain", "why"),
    [
        (bytearray(b"\x01\x02"), "shorter than the 8-byte header length"),
        (bytearray((10**9).to_bytes(8, "little") + b"{}"), "exceeds the data"),
        (bytearray((4).to_bytes(8, "little") + b"nope"), "not JSON"),
        (_craft([1, 2]), "not a JSON object"),
        (_craft({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown or malformed"),
        (_craft({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "does not match bytes"),
        (_craft({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4), "does not match bytes"),
        (_craft({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "does not match"),
        (
            _craft(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                },
                b"\0" * 8,
            ),
            "gaps and overlaps",
        ),
        (_craft({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 5), "cover 2 of 5"),
    ],
)
def test_malformed_plaintext_is_a_format_error(plain: bytearray, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        _parse_safetensors(plain, "model.safetensors.enc")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda h, b: bytes(_craft(h, b)), st.dictionaries(
    st.text(max_size=3), st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "U8", "X"]),
                                               "shape": st.lists(st.integers(-2, 4), max_size=3),
                                               "data_offsets": st.lists(st.integers(-2, 20), min_size=2, max_size=2)}),
    max_size=3), st.binary(max_size=24)))  # fmt: skip
def test_parser_never_crashes(data: bytes) -> None:
    """Random bytes and random headers: tensors or a typed error, never another exception."""
    try:
        tensors = _parse_safetensors(bytearray(data), "fuzz")
    except (FormatError, UnsafeFormat):
        return
    for t in tensors.values():
        t.sum()


def test_altered_artifact_fails_verification_before_anything_is_returned(tmp_path: Path, keyset: Keyset) -> None:
    save_encrypted(state_dict(), tmp_path / "m", keyset, keyset.signing_key())
    artifact = tmp_path / "m" / WEIGHTS_FILE
    data = bytearray(artifact.read_bytes())
    for where in (20, 200, len(data) - 5):  # header, key slot, last chunk's tag
        altered = bytearray(data)
        altered[where] ^= 1
        artifact.write_bytes(altered)
        with pytest.raises(SignatureMismatch, match="1 differ") as caught:
            load_encrypted(tmp_path / "m", keyset, keyset.verify_key())
        assert caught.value.differs == (WEIGHTS_FILE,)


def test_wrong_signer_or_keyset_is_refused(tmp_path: Path, keyset: Keyset) -> None:
    save_encrypted(state_dict(), tmp_path / "m", keyset, keyset.signing_key())
    with pytest.raises(SignatureMismatch, match="signed by another key"):
        load_encrypted(tmp_path / "m", keyset, generate_signing_key().public_key())
    other = Keyset.generate(tmp_path / "other", b"other-password")
    with pytest.raises(KeyNotFound):
        load_encrypted(tmp_path / "m", other, keyset.verify_key())


# -- never a plaintext file -----------------------------------------------------------------------------------------
_WRITES: list[tuple[str, tuple]] | None = None
_WRITE_EVENTS = {"os.rename", "os.link", "os.symlink", "os.truncate", "shutil.copyfile", "tempfile.mkstemp",
                 "tempfile.mkdtemp", "os.mkdir", "os.remove"}  # fmt: skip


def _audit(event: str, args: tuple) -> None:
    if _WRITES is None:
        return
    if event == "open":
        _, mode, flags = args
        writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        )
        if writes:
            _WRITES.append((event, args))
    elif event == "mmap.__new__":
        if args[0] != -1:  # a file-backed map (anonymous memory is fine)
            _WRITES.append((event, args))
    elif event in _WRITE_EVENTS:
        _WRITES.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only while _WRITES is a list


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*") if p.is_file()}


def _recording(fn) -> list[tuple[str, tuple]]:
    """The file-writing events the audit hook saw while `fn` ran."""
    global _WRITES
    _WRITES = []
    try:
        fn()
        return _WRITES
    finally:
        _WRITES = None


def test_load_writes_nothing_python_can_see(tmp_path: Path, keyset: Keyset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proof, in-process: (1) an audit hook (PEP 578) sees every open() and os.open() Python makes, in any
    library, with its mode and flags, plus renames, copies, mkstemp and file-backed mmaps: none may write
    during the load (and a control that does write a plaintext file is seen); (2) the model folder and a
    private TMPDIR are unchanged afterwards; (3) the plaintext's tensor bytes appear in no file under them.
    Native code (torch, safetensors) is covered by the strace test."""
    sd = state_dict(3)
    save_encrypted(sd, tmp_path / "m", keyset, keyset.signing_key())
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    before = _snapshot(tmp_path)
    loaded: dict[str, torch.Tensor] = {}
    writes = _recording(lambda: loaded.update(load_encrypted(tmp_path / "m", keyset, keyset.verify_key())))
    assert writes == [], f"the load wrote to the file system: {writes}"
    assert _snapshot(tmp_path) == before
    assert_same(loaded, sd)
    marker = safetensors.torch.save(sd)[-64:]  # tensor bytes, not header
    for path in before:
        assert marker not in Path(path).read_bytes(), path

    from common.secure.envelope import decrypt_file

    leak = private_tmp / "leak.safetensors"
    control = _recording(lambda: decrypt_file(tmp_path / "m" / WEIGHTS_FILE, leak, keyset))
    assert any(event == "os.rename" and str(leak) in map(str, args) for event, args in control), control
    assert any(event == "open" and args[2] & os.O_CREAT for event, args in control), control


_CHILD = """
import os, sys
from common.secure.envelope import decrypt_file
from common.secure.keys import Keyset
from common.secure.weights import load_encrypted
import torch, safetensors.torch  # imports first: they are not the load
keyset_dir, password, folder, control = sys.argv[1:]
keyset = Keyset.load(keyset_dir, password.encode())
os.write(2, b"@@LOAD-BEGIN\\n")
sd = load_encrypted(folder, keyset, keyset.verify_key())
if control == "write-plaintext":  # the negative control: what the watcher must catch
    decrypt_file(os.path.join(folder, "model.safetensors.enc"), os.path.join(folder, "leak.safetensors"), keyset)
os.write(2, b"@@LOAD-END\\n")
print(sum(t.numel() for t in sd.values()))
"""
_CREATING = ("creat(", "memfd_create(", "rename", "link(", "linkat(", "mknod", "truncate(")


def _writing_calls_during_load(tmp_path: Path, keys: Path, folder: Path, control: str) -> list[str]:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("needs strace (Debian package strace) to watch system calls")
    trace = tmp_path / f"trace-{control}.txt"
    calls = (
        "open,openat,openat2,creat,memfd_create,rename,renameat,renameat2,link,linkat,symlink,mknod,mknodat,truncate"
    )
    strace_args = [strace, "-f", "-qq", "-e", f"trace={calls},write", "-e", "signal=none", "-o", str(trace)]
    done = subprocess.run(
        [*strace_args, sys.executable, "-c", _CHILD, str(keys), PASSWORD.decode(), str(folder), control],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=120,
        check=False,
    )
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        pytest.skip(f"strace cannot trace here (ptrace not permitted): {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) == sum(t.numel() for t in state_dict(4).values())
    lines = trace.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if "@@LOAD-BEGIN" in line)
    end = next(i for i, line in enumerate(lines) if "@@LOAD-END" in line)
    during = [line for line in lines[begin + 1 : end] if " write(" not in line]
    assert any(WEIGHTS_FILE in line and "open" in line for line in during), "the trace must show the artifact read"
    return [
        line
        for line in during
        if any(flag in line for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_TMPFILE"))
        or any(call in line for call in _CREATING)
    ]


@pytest.mark.slow
def test_load_makes_no_file_writing_syscall(tmp_path: Path, keys: Path, keyset: Keyset) -> None:
    """Proof at the system-call level, native code included: the load runs in a child under strace, which
    logs every open/openat/creat with its flags and every call that makes, links or moves a file. Between
    the child's two markers none may create a file or open one for writing. A control run that does write
    the plaintext to a file shows the watcher catches exactly that."""
    save_encrypted(state_dict(4), tmp_path / "m", keyset, keyset.signing_key())
    writing = _writing_calls_during_load(tmp_path, keys, tmp_path / "m", "none")
    assert writing == [], "file-creating or writing system calls during the load:\n" + "\n".join(writing)
    caught = _writing_calls_during_load(tmp_path, keys, tmp_path / "m", "write-plaintext")
    assert any("O_CREAT" in line for line in caught) and any("leak.safetensors" in line for line in caught)


# -- pickle ---------------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a file: proof that nothing unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_an_encrypted_signed_pickle_is_refused_and_never_unpickled(tmp_path: Path, keyset: Keyset) -> None:
    """Even a pickle that was encrypted and signed (a careless or hostile signer) is refused, and its code never runs."""
    from common.secure.envelope import encrypt_bytes

    marker = tmp_path / "pwned"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes(encrypt_bytes(pickle.dumps(_Payload(str(marker))), keyset))
    sign_folder(folder, keyset.signing_key())
    with pytest.raises(UnsafeFormat, match="holds pickle data"):
        load_encrypted(folder, keyset, keyset.verify_key())
    assert not marker.exists()


def test_encrypting_a_folder_with_a_pickle_checkpoint_is_refused(tmp_path: Path, keyset: Keyset) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(safetensors.torch.save({"w": torch.ones(2)}))
    (src / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(UnsafeFormat, match=r"pytorch_model\.bin"):
        encrypt_model_folder(src, tmp_path / "dst", keyset, keyset.signing_key())
    assert not (tmp_path / "dst").exists() and list(tmp_path.glob(".dst*")) == []


# -- a Hugging Face folder: MiniLM ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encrypted_minilm(tmp_path_factory: pytest.TempPathFactory, keyset: Keyset) -> Path:
    return encrypt_model_folder(minilm_path(), tmp_path_factory.mktemp("enc") / "minilm", keyset, keyset.signing_key())


@pytest.fixture(scope="module")
def plain_embeddings() -> np.ndarray:
    codec = EmbeddingCodec.from_folder()
    with build_engine(sentence_encoder(), codec, device="cpu", warmup=0) as engine:
        return np.stack(engine.infer(codec.tokenize(TEXTS)))


def test_encrypted_folder_layout(encrypted_minilm: Path, keyset: Keyset) -> None:
    names = {p.relative_to(encrypted_minilm).as_posix() for p in encrypted_minilm.rglob("*") if p.is_file()}
    plain = {p.relative_to(minilm_path()).as_posix() for p in minilm_path().rglob("*") if p.is_file()}
    assert names == (plain - {"model.safetensors"}) | {WEIGHTS_FILE, SIGNATURE_FILE}  # every file kept
    assert (encrypted_minilm / "tokenizer.json").read_bytes() == (minilm_path() / "tokenizer.json").read_bytes()
    assert len(verify_folder(encrypted_minilm, keyset.verify_key()).files) == len(names) - 1
    with pytest.raises(FileExistsError):
        encrypt_model_folder(minilm_path(), encrypted_minilm, keyset, keyset.signing_key())


def test_encrypted_minilm_embeds_exactly_like_the_plain_one(
    encrypted_minilm: Path, keyset: Keyset, plain_embeddings: np.ndarray
) -> None:
    from common.engine.embedding import sentence_encoder_from_memory

    model = load_model_folder(encrypted_minilm, keyset, keyset.verify_key())
    assert "model.safetensors" not in model.files and "tokenizer.json" in model.files
    assert_same(model.state_dict, safetensors.torch.load_file(minilm_path() / "model.safetensors"))
    codec = EmbeddingCodec.from_files(model.files)
    assert codec.tokenize(TEXTS) == EmbeddingCodec.from_folder().tokenize(TEXTS)
    with build_engine(sentence_encoder_from_memory(model.config, model.state_dict), codec, warmup=0) as engine:
        ours = np.stack(engine.infer(codec.tokenize(TEXTS)))
    np.testing.assert_array_equal(ours, plain_embeddings)


def test_a_changed_tokenizer_file_stops_the_load(tmp_path: Path, encrypted_minilm: Path, keyset: Keyset) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(encrypted_minilm, copy)
    (copy / "vocab.txt").write_text((copy / "vocab.txt").read_text().replace("hello", "hellp"))
    with pytest.raises(SignatureMismatch, match=r"1 differ \(vocab\.txt\)"):
        load_model_folder(copy, keyset, keyset.verify_key())


# -- serving --------------------------------------------------------------------------------------------------------
def test_settings_need_keys_and_hide_the_password(keys: Path) -> None:
    from pydantic import ValidationError

    from common.serving.settings import ServingSettings

    with pytest.raises(ValidationError, match="needs keyset_dir and keyset_password"):
        ServingSettings(encrypted_model="/x")
    with pytest.raises(ValidationError, match="not both"):
        ServingSettings(encrypted_model="/x", model_path="/y", keyset_dir=str(keys), keyset_password="p")
    s = ServingSettings(encrypted_model="/x", keyset_dir=str(keys), keyset_password=PASSWORD.decode())
    shown = " ".join(f"{k}={v}" for k, v in s.model_dump().items())  # what __main__ logs
    assert PASSWORD.decode() not in shown and PASSWORD.decode() not in repr(s)


def test_app_serves_the_encrypted_model(
    encrypted_minilm: Path, keys: Path, plain_embeddings: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`create_app(settings)` alone loads the encrypted model in its background load: never the plain one."""
    import time

    from fastapi.testclient import TestClient

    from common.serving.app import create_app
    from common.serving.settings import ServingSettings

    monkeypatch.setenv("HPAI_KEYSET_PASSWORD", PASSWORD.decode())
    settings = ServingSettings(encrypted_model=str(encrypted_minilm), keyset_dir=str(keys), device="cpu")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        r = client.post("/v1/embeddings", json={"input": TEXTS})
    assert r.status_code == 200, r.text
    served = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(served, plain_embeddings, atol=1e-6)


def test_wrong_password_stops_the_server_with_a_clear_error(encrypted_minilm: Path, keys: Path) -> None:
    env = {**os.environ, "HPAI_KEYSET_PASSWORD": "not-the-password"}
    done = subprocess.run(
        [sys.executable, "-m", "common.serving", "--encrypted-model", str(encrypted_minilm), "--keyset-dir", str(keys)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "cannot load the encrypted model: KeysetError" in done.stderr, done.stderr[-1500:]
    assert "not-the-password" not in done.stderr


@pytest.mark.slow
def test_cli_serves_the_encrypted_model(
    encrypted_minilm: Path, keys: Path, plain_embeddings: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m common.serving --encrypted-model DIR --keyset-dir KEYS` with HPAI_KEYSET_PASSWORD, over HTTP."""
    import httpx

    from common.serving.server import server_process

    monkeypatch.setenv("HPAI_KEYSET_PASSWORD", PASSWORD.decode())
    with server_process(threads=1, encrypted_model=encrypted_minilm, keyset_dir=keys) as server:
        url = server.url
        r = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS}, timeout=30)
    assert r.status_code == 200, r.text
    served = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(served, plain_embeddings, atol=1e-5)


def test_sharded_folder_merges_shards_and_refuses_repeats(tmp_path: Path, keyset: Keyset) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "bert"}')
    sd = state_dict(5)
    names = sorted(sd)
    safetensors.torch.save_file({k: sd[k] for k in names[:4]}, src / "model-00001-of-00002.safetensors")
    safetensors.torch.save_file({k: sd[k] for k in names[4:]}, src / "model-00002-of-00002.safetensors")
    encrypt_model_folder(src, tmp_path / "enc", keyset, keyset.signing_key())
    model = load_model_folder(tmp_path / "enc", keyset, keyset.verify_key())
    assert_same(model.state_dict, sd)
    assert model.config == {"model_type": "bert"} and list(model.files) == ["config.json"]
    safetensors.torch.save_file({names[0]: sd[names[0]]}, src / "model-extra.safetensors")
    encrypt_model_folder(src, tmp_path / "enc2", keyset, keyset.signing_key())
    with pytest.raises(FormatError, match="repeats tensors of another weights file"):
        load_model_folder(tmp_path / "enc2", keyset, keyset.verify_key())


# -- the plaintext buffer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fallback", [False, True], ids=["populate-ahead", "populate-up-front"])
def test_plaintext_buffer_is_prefaulted_ahead_of_the_writes(monkeypatch: pytest.MonkeyPatch, fallback: bool) -> None:
    """Writes of odd sizes cross many populate steps and land exactly; a kernel that refuses
    MADV_POPULATE_WRITE (simulated by an invalid advice) gets the whole buffer pre-faulted up front."""
    monkeypatch.setattr(weights, "POPULATE_STEP", 8192)
    if fallback:
        monkeypatch.setattr(weights, "MADV_POPULATE_WRITE", 12345)
    data = os.urandom(100_003)
    writer = weights._MemoryWriter(200_000)
    for start in range(0, len(data), 3001):
        writer.write(data[start : start + 3001])
    assert bytes(writer.finish()) == data
    assert writer._populated == (200_000 if fallback else -(-len(data) // 8192) * 8192)  # only what was needed
    with pytest.raises(IntegrityError, match="more bytes than it holds"):
        writer.write(bytes(100_000))


def test_a_load_leaves_no_hashing_thread_behind(tmp_path: Path, keyset: Keyset) -> None:
    import threading

    save_encrypted(state_dict(5), tmp_path / "m", keyset, keyset.signing_key())
    assert_same(load_encrypted(tmp_path / "m", keyset, keyset.verify_key()), state_dict(5))
    artifact = tmp_path / "m" / WEIGHTS_FILE
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 1
    artifact.write_bytes(data)
    with pytest.raises(SignatureMismatch, match=r"1 differ \(model\.safetensors\.enc\)"):
        load_encrypted(tmp_path / "m", keyset, keyset.verify_key())
    assert not [t for t in threading.enumerate() if t.name == "sha256-follower"]
