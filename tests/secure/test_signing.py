"""Signed manifests: every kind of change to a signed folder is caught and named, for both algorithms."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common.secure.errors import KeysetError, SignatureMismatch
from common.secure.signing import (
    SIGNATURE_FILE,
    build_manifest,
    generate_signing_key,
    load_private_key,
    load_public_key,
    public_key_id,
    read_verified,
    save_private_key,
    save_public_key,
    sign_folder,
    verify_folder,
)

ALGORITHMS = ("ecdsa-p256", "ed25519")
FILES = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    "empty.txt": b"",
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(params=ALGORITHMS)
def key(request: pytest.FixtureRequest):
    return generate_signing_key(request.param)


def test_round_trip_lists_every_file_with_digest_and_size(folder: Path, key) -> None:
    out = sign_folder(folder, key)
    assert out == folder / SIGNATURE_FILE
    manifest = verify_folder(folder, key.public_key())
    assert [f.path for f in manifest.files] == sorted(FILES)  # the signature file itself is not listed
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256(FILES[entry.path]).hexdigest() and entry.size == len(FILES[entry.path])
    assert manifest.signature_algorithm == ("Ed25519" if "Ed25519" in type(key).__name__ else "ECDSA-P256-SHA256")
    signed = json.loads(out.read_bytes())
    assert signed["signature"]["public_key_sha256"] == public_key_id(key.public_key())
    assert signed["manifest"] == manifest.to_json()


def test_resigning_is_stable_and_manifest_is_canonical(folder: Path, key) -> None:
    sign_folder(folder, key)
    first = build_manifest(folder, "x")
    sign_folder(folder, key)  # the old model.sig is not hashed into the new manifest
    assert build_manifest(folder, "x") == first
    assert first.canonical() == json.dumps(first.to_json(), sort_keys=True, separators=(",", ":")).encode()
    assert b" " not in first.canonical()


def test_tampered_file_is_named(folder: Path, key) -> None:
    sign_folder(folder, key)
    data = bytearray(FILES["model.safetensors"])
    data[123_456] ^= 1  # same size: only the digest can tell
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(SignatureMismatch, match=r"1 differ \(model\.safetensors\)") as caught:
        verify_folder(folder, key.public_key())
    assert caught.value.differs == ("model.safetensors",) and not caught.value.missing and not caught.value.extra


def test_deleted_file_is_named(folder: Path, key) -> None:
    sign_folder(folder, key)
    (folder / "tokenizer/vocab.txt").unlink()
    with pytest.raises(SignatureMismatch, match=r"1 missing \(tokenizer/vocab\.txt\)") as caught:
        verify_folder(folder, key.public_key())
    assert caught.value.missing == ("tokenizer/vocab.txt",) and not caught.value.differs


def test_added_file_is_named(folder: Path, key) -> None:
    sign_folder(folder, key)
    (folder / "tokenizer" / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(SignatureMismatch, match=r"1 extra \(tokenizer/modeling_evil\.py\)") as caught:
        verify_folder(folder, key.public_key())
    assert caught.value.extra == ("tokenizer/modeling_evil.py",)


def test_every_change_at_once_is_reported_together(folder: Path, key) -> None:
    sign_folder(folder, key)
    (folder / "config.json").write_bytes(b'{"hidden_size": 9999}')  # other size: caught without hashing
    (folder / "empty.txt").unlink()
    (folder / "extra.bin").write_bytes(b"\0")
    with pytest.raises(SignatureMismatch) as caught:
        verify_folder(folder, key.public_key())
    err = caught.value
    assert (err.differs, err.missing, err.extra) == (("config.json",), ("empty.txt",), ("extra.bin",))
    for name in ("config.json", "empty.txt", "extra.bin"):
        assert name in str(err)


def test_edited_manifest_fails_the_signature(folder: Path, key) -> None:
    """An attacker who swaps a file and writes its new digest into model.sig still fails: the manifest is signed."""
    sign_folder(folder, key)
    (folder / "config.json").write_bytes(b'{"hidden_size": 9}')
    signed = json.loads((folder / SIGNATURE_FILE).read_bytes())
    entry = next(f for f in signed["manifest"]["files"] if f["path"] == "config.json")
    entry["sha256"] = hashlib.sha256(b'{"hidden_size": 9}').hexdigest()
    (folder / SIGNATURE_FILE).write_text(json.dumps(signed))
    with pytest.raises(SignatureMismatch, match=r"signature over .* is invalid: the manifest was edited"):
        verify_folder(folder, key.public_key())


def test_dropping_a_file_from_manifest_and_folder_fails_the_signature(folder: Path, key) -> None:
    sign_folder(folder, key)
    signed = json.loads((folder / SIGNATURE_FILE).read_bytes())
    signed["manifest"]["files"] = [f for f in signed["manifest"]["files"] if f["path"] != "empty.txt"]
    (folder / SIGNATURE_FILE).write_text(json.dumps(signed))
    (folder / "empty.txt").unlink()
    with pytest.raises(SignatureMismatch, match="is invalid"):
        verify_folder(folder, key.public_key())


def test_flipped_signature_bit_fails(folder: Path, key) -> None:
    sign_folder(folder, key)
    signed = json.loads((folder / SIGNATURE_FILE).read_bytes())
    import base64

    sig = bytearray(base64.b64decode(signed["signature"]["value"]))
    sig[len(sig) // 2] ^= 0x10
    signed["signature"]["value"] = base64.b64encode(bytes(sig)).decode()
    (folder / SIGNATURE_FILE).write_text(json.dumps(signed))
    with pytest.raises(SignatureMismatch, match="is invalid"):
        verify_folder(folder, key.public_key())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_key_is_refused_and_says_which_key_signed(folder: Path, algorithm: str) -> None:
    key, other = generate_signing_key(algorithm), generate_signing_key(algorithm)
    sign_folder(folder, key)
    with pytest.raises(SignatureMismatch, match="signed by another key") as caught:
        verify_folder(folder, other.public_key())
    assert public_key_id(key.public_key())[:16] in str(caught.value)
    assert public_key_id(other.public_key())[:16] in str(caught.value)


def test_key_of_the_other_algorithm_is_refused(folder: Path) -> None:
    sign_folder(folder, generate_signing_key("ed25519"))
    with pytest.raises(SignatureMismatch, match="signed with Ed25519, but the verifying key is ECDSA-P256-SHA256"):
        verify_folder(folder, generate_signing_key("ecdsa-p256").public_key())


def test_unsigned_or_garbled_folder(folder: Path, key) -> None:
    with pytest.raises(SignatureMismatch, match=r"is not signed: model\.sig is missing"):
        verify_folder(folder, key.public_key())
    (folder / SIGNATURE_FILE).write_bytes(b"\x00not json")
    with pytest.raises(SignatureMismatch, match="not valid JSON"):
        verify_folder(folder, key.public_key())
    (folder / SIGNATURE_FILE).write_text('{"format": "hpai-model-signature", "version": 1, "manifest": {"files": 3}}')
    with pytest.raises(SignatureMismatch, match="malformed"):
        verify_folder(folder, key.public_key())


def test_symlinks_are_refused(folder: Path, key, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    (folder / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(SignatureMismatch, match=r"link\.txt .* is a symbolic link"):
        sign_folder(folder, key)


def test_read_verified_returns_the_bytes_it_hashed(folder: Path, key) -> None:
    sign_folder(folder, key)
    manifest, contents = read_verified(folder, key.public_key(), ["model.safetensors", "config.json"])
    assert contents == {"model.safetensors": FILES["model.safetensors"], "config.json": FILES["config.json"]}
    assert len(manifest.files) == len(FILES)
    with pytest.raises(SignatureMismatch, match=r"does not list weights\.bin"):
        read_verified(folder, key.public_key(), ["weights.bin"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pem_round_trip_private_key_is_encrypted(tmp_path: Path, folder: Path, algorithm: str) -> None:
    key = generate_signing_key(algorithm)
    password = b"correct horse battery"
    save_private_key(key, tmp_path / "signing.pem", password)
    save_public_key(key, tmp_path / "signing.pub.pem")
    pem = (tmp_path / "signing.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (tmp_path / "signing.pem").stat().st_mode & 0o777 == 0o600
    sign_folder(folder, load_private_key(tmp_path / "signing.pem", password))
    verify_folder(folder, load_public_key(tmp_path / "signing.pub.pem"))
    with pytest.raises(KeysetError, match="wrong password") as caught:
        load_private_key(tmp_path / "signing.pem", b"not the password")
    assert b"not the password".decode() not in str(caught.value)
    with pytest.raises(KeysetError, match="non-empty password"):
        save_private_key(key, tmp_path / "other.pem", b"")


def test_unsupported_keys_are_refused(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(KeysetError, match="ECDSA P-256 or Ed25519"):
        sign_folder(folder, rsa.generate_private_key(65537, 2048))
    with pytest.raises(KeysetError, match="P-256, got secp384r1"):
        sign_folder(folder, ec.generate_private_key(ec.SECP384R1()))
    (tmp_path / "x.pem").write_text("not a key")
    with pytest.raises(KeysetError, match="not a PEM public key"):
        load_public_key(tmp_path / "x.pem")


def test_keyset_signing_key_signs_and_verifies(tmp_path: Path, folder: Path) -> None:
    """The CLI's path: a keyset folder's own ECDSA key signs, its public half verifies."""
    from common.secure.keys import Keyset

    keyset = Keyset.generate(tmp_path / "keys", b"keyset-password")
    sign_folder(folder, keyset.signing_key())
    assert verify_folder(folder, keyset.verify_key()).signature_algorithm == "ECDSA-P256-SHA256"


# -- streamed reads: the SHA-256 follows the consumer on a second thread ----------------------------------------------
def _hashing_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "sha256-follower"]


@pytest.fixture
def small_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 KiB in a ring of 4: the 300 kB file wraps the ring many times."""
    from common.secure import signing

    monkeypatch.setattr(signing, "BLOCK_SIZE", 4096)
    monkeypatch.setattr(signing, "RING_BLOCKS", 4)


def _copy(reader, chunk: int = 1000) -> bytes:
    out = bytearray()
    buf = bytearray(chunk)
    while n := reader.readinto(buf):
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize("ring", ["default", "small"])
def test_streamed_file_is_the_bytes_hashed(folder: Path, key, ring: str, request: pytest.FixtureRequest) -> None:
    if ring == "small":
        request.getfixturevalue("small_ring")
    sign_folder(folder, key)
    _, got = read_verified(folder, key.public_key(), [], stream={"model.safetensors": _copy})
    assert got == {"model.safetensors": FILES["model.safetensors"]}
    _, got = read_verified(folder, key.public_key(), [], stream={"model.safetensors": lambda r: r.read(10) + r.read()})
    assert got == {"model.safetensors": FILES["model.safetensors"]}
    assert _hashing_threads() == []


@pytest.mark.parametrize("where", [0, 5000, 150_000, 299_999])
def test_a_tampered_block_of_a_streamed_file_is_caught_and_named(folder: Path, key, small_ring, where: int) -> None:
    sign_folder(folder, key)
    data = bytearray(FILES["model.safetensors"])
    data[where] ^= 1
    (folder / "model.safetensors").write_bytes(data)
    seen = []
    with pytest.raises(SignatureMismatch, match=r"1 differ \(model\.safetensors\)") as err:
        read_verified(folder, key.public_key(), [], stream={"model.safetensors": lambda r: seen.append(_copy(r))})
    assert err.value.differs == ("model.safetensors",)
    assert seen == [bytes(data)]  # it was consumed, but its result was never returned
    assert _hashing_threads() == []


def test_the_unread_rest_of_a_streamed_file_is_hashed_too(folder: Path, key, small_ring) -> None:
    sign_folder(folder, key)
    data = bytearray(FILES["model.safetensors"])
    data[-1] ^= 1
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(SignatureMismatch, match=r"model\.safetensors"):
        read_verified(folder, key.public_key(), [], stream={"model.safetensors": lambda r: r.read(100)})


def test_a_streamed_file_that_grew_after_the_size_check_differs(folder: Path, key) -> None:
    sign_folder(folder, key)
    path = folder / "model.safetensors"

    def grow_then_read(reader):
        with open(path, "ab") as f:
            f.write(b"appended")
        return _copy(reader)

    with pytest.raises(SignatureMismatch, match=r"1 differ \(model\.safetensors\)"):
        read_verified(folder, key.public_key(), [], stream={"model.safetensors": grow_then_read})


class _ConsumerFailed(Exception):
    pass


def _failing(reader):
    reader.read(5000)
    raise _ConsumerFailed("the consumer gave up")


def test_a_consumer_error_on_a_tampered_file_reports_the_tampering(folder: Path, key, small_ring) -> None:
    sign_folder(folder, key)
    data = bytearray(FILES["model.safetensors"])
    data[200_000] ^= 1
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(SignatureMismatch, match=r"1 differ \(model\.safetensors\)"):
        read_verified(folder, key.public_key(), [], stream={"model.safetensors": _failing})
    assert _hashing_threads() == []


def test_a_consumer_error_on_an_intact_file_is_raised_and_the_thread_is_joined(folder: Path, key, small_ring) -> None:
    sign_folder(folder, key)
    with pytest.raises(_ConsumerFailed):
        read_verified(folder, key.public_key(), [], stream={"model.safetensors": _failing})
    assert _hashing_threads() == []

    def interrupted(reader):
        reader.read(5000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        read_verified(folder, key.public_key(), [], stream={"model.safetensors": interrupted})
    assert _hashing_threads() == []


def test_a_failing_hash_thread_fails_the_read_instead_of_hanging(folder: Path, key, small_ring, monkeypatch) -> None:
    from common.secure import signing

    sign_folder(folder, key)

    class _Broken:
        def update(self, data) -> None:
            raise MemoryError("simulated")

    real = signing.hashlib.sha256
    monkeypatch.setattr(signing.hashlib, "sha256", lambda *a: _Broken() if not a else real(*a))
    with pytest.raises(RuntimeError, match="hashing the file failed"):
        read_verified(folder, key.public_key(), [], stream={"model.safetensors": _copy})
    assert _hashing_threads() == []
