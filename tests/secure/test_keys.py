"""Keysets and local RSA keys: persistence, one primary, rotation, disable/retire, no leaks, re-wrap cost."""

from __future__ import annotations

import copy
import json
import os
import pickle
import statistics
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from hypothesis import given, settings
from hypothesis import strategies as st

from common.secure import envelope as env
from common.secure.errors import IntegrityError, KeyDisabled, KeyNotFound, KeysetError
from common.secure.kek import KeyEncryptionKey
from common.secure.keys import KEYSET_FILE, SIGNING_KEY_FILE, Keyset, LocalRSAKey

PASSWORD = b"correct horse battery staple 7"


@pytest.fixture(scope="module")
def rsa_keys() -> list[LocalRSAKey]:
    return [LocalRSAKey.generate() for _ in range(3)]


def secret_forms(key: LocalRSAKey) -> list[str]:
    """Ways key material could leak into text: the private exponent in hex and decimal, the PEM body."""
    numbers = key._private.private_numbers()
    pem = key._private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return [f"{numbers.d:x}"[:32], str(numbers.d)[:32], pem.decode().splitlines()[1]]


# -- the local RSA KEK -----------------------------------------------------------------------------------------------
def test_local_rsa_key_implements_the_protocol(rsa_keys: list[LocalRSAKey]) -> None:
    key = rsa_keys[0]
    assert isinstance(key, KeyEncryptionKey)
    assert key.algorithm == "RSA-OAEP-3072-SHA256" and key.key_id.startswith("rsa3072-")
    data_key = os.urandom(32)
    wrapped = key.wrap(data_key)
    assert len(wrapped) == 384 and data_key not in wrapped
    assert key.unwrap(wrapped) == data_key
    assert key.wrap(data_key) != wrapped  # OAEP is randomised


@settings(max_examples=25, deadline=None)
@given(data_key=st.binary(min_size=1, max_size=64), flip=st.integers(0, 383))
def test_unwrap_refuses_altered_or_foreign_bytes(rsa_keys: list[LocalRSAKey], data_key: bytes, flip: int) -> None:
    wrapped = bytearray(rsa_keys[0].wrap(data_key))
    wrapped[flip] ^= 0x80
    with pytest.raises(IntegrityError, match=rsa_keys[0].key_id):
        rsa_keys[0].unwrap(bytes(wrapped))
    with pytest.raises(IntegrityError):
        rsa_keys[1].unwrap(rsa_keys[0].wrap(data_key))
    with pytest.raises(IntegrityError, match="384"):
        rsa_keys[0].unwrap(bytes(wrapped[:-1]))


def test_keys_never_print_or_pickle_themselves(rsa_keys: list[LocalRSAKey]) -> None:
    key = rsa_keys[0]
    for text in (repr(key), str(key), f"{key}"):
        assert text == f"LocalRSAKey(key_id={key.key_id!r}, algorithm='RSA-OAEP-3072-SHA256')"
        for secret in secret_forms(key):
            assert secret not in text
    for clone in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="refuses to be pickled"):
            clone(key)
    ks = Keyset()
    ks.add(key)
    with pytest.raises(TypeError, match="refuses"):
        pickle.dumps(ks)
    assert all(secret not in repr(ks) for secret in secret_forms(key))


def test_key_file_round_trip_and_wrong_password(rsa_keys: list[LocalRSAKey], tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    rsa_keys[0].save(path, PASSWORD)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert all(secret not in text for secret in secret_forms(rsa_keys[0]))
    loaded = LocalRSAKey.load(path, PASSWORD)
    assert loaded.key_id == rsa_keys[0].key_id
    assert loaded.unwrap(rsa_keys[0].wrap(b"k" * 32)) == b"k" * 32
    with pytest.raises(KeysetError, match="wrong password") as info:
        LocalRSAKey.load(path, b"not the password")
    assert "not the password" not in str(info.value) and PASSWORD.decode() not in str(info.value)


# -- keysets -----------------------------------------------------------------------------------------------------------
def test_generate_writes_metadata_and_encrypted_keys_only(tmp_path: Path) -> None:
    ks = Keyset.generate(tmp_path / "ks", PASSWORD)
    folder = tmp_path / "ks"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [KEYSET_FILE, SIGNING_KEY_FILE, f"{ks.primary.key_id}.pem"]
    )
    assert all(p.stat().st_mode & 0o077 == 0 for p in folder.iterdir())
    meta = json.loads((folder / KEYSET_FILE).read_text())
    assert meta["primary"] == ks.primary.key_id
    assert [set(k) for k in meta["keys"]] == [{"id", "algorithm", "provider", "status", "created", "file"}]
    assert all(secret not in (folder / KEYSET_FILE).read_text() for secret in secret_forms(ks.primary))
    assert PASSWORD not in b"".join(p.read_bytes() for p in folder.iterdir())
    with pytest.raises(KeysetError, match="already holds a keyset"):
        Keyset.generate(folder, PASSWORD)
    again = Keyset.load(folder, PASSWORD)
    assert again.primary.key_id == ks.primary.key_id and again.describe() == ks.describe()
    assert again.verify_key().public_numbers() == ks.signing_key().public_key().public_numbers()


def test_load_errors_are_clear_and_never_echo_the_password(tmp_path: Path) -> None:
    Keyset.generate(tmp_path, PASSWORD)
    with pytest.raises(KeysetError) as info:
        Keyset.load(tmp_path, b"hunter2-wrong")
    assert "hunter2" not in str(info.value) and PASSWORD.decode() not in str(info.value)
    with pytest.raises(KeysetError, match="missing"):
        Keyset.load(tmp_path / "nowhere", PASSWORD)
    meta = json.loads((tmp_path / KEYSET_FILE).read_text())
    for broken, words in [
        ({**meta, "primary": "nope"}, "primary"),
        ({**meta, "keys": [{**meta["keys"][0], "status": "weird"}]}, "status"),
        ({**meta, "keys": [{"id": "x"}]}, "missing a field"),
        ({**meta, "version": 2}, "version-1"),
        ({**meta, "keys": [{**meta["keys"][0], "file": "../elsewhere.pem"}]}, "unexpected key file"),
    ]:
        (tmp_path / KEYSET_FILE).write_text(json.dumps(broken))
        with pytest.raises(KeysetError, match=words):
            Keyset.load(tmp_path, PASSWORD)


def test_exactly_one_primary(rsa_keys: list[LocalRSAKey]) -> None:
    ks = Keyset()
    with pytest.raises(KeysetError, match="empty"):
        _ = ks.primary
    ks.add(rsa_keys[0])
    ks.add(rsa_keys[1])
    assert ks.primary is rsa_keys[0]  # the first key is primary until told otherwise
    assert sum(row["primary"] for row in ks.describe()) == 1
    with pytest.raises(KeysetError, match="already in the keyset"):
        ks.add(rsa_keys[0])
    for action in (ks.disable, ks.retire):
        with pytest.raises(KeysetError, match="primary"):
            action(rsa_keys[0].key_id)
    ks.disable(rsa_keys[1].key_id)
    with pytest.raises(KeysetError, match="disabled"):
        ks.set_primary(rsa_keys[1].key_id)
    with pytest.raises(KeysetError, match="KeyEncryptionKey"):
        ks.add(object())  # type: ignore[arg-type]  # the wrong type, on purpose


def test_rotation_persists_and_keeps_old_artifacts_readable(tmp_path: Path) -> None:
    ks = Keyset.generate(tmp_path, PASSWORD)
    first = ks.primary.key_id
    old = env.encrypt_bytes(b"written before the rotation", ks)
    new_key = ks.rotate()
    assert ks.primary is new_key and new_key.key_id != first
    reloaded = Keyset.load(tmp_path, PASSWORD)  # rotate() saved by itself
    assert reloaded.primary.key_id == new_key.key_id and reloaded.status(first) == "enabled"
    assert env.decrypt_bytes(old, reloaded) == b"written before the rotation"
    fresh = env.encrypt_bytes(b"after", reloaded)
    assert env.read_header(__import__("io").BytesIO(fresh)).key_id == new_key.key_id


def test_disable_then_retire(tmp_path: Path) -> None:
    ks = Keyset.generate(tmp_path, PASSWORD)
    first = ks.primary.key_id
    blob = env.encrypt_bytes(b"old", ks)
    ks.rotate()
    ks.disable(first)
    with pytest.raises(KeyDisabled, match=first):
        Keyset.load(tmp_path, PASSWORD).unwrap(first, b"\x00" * 384)
    ks.enable(first)
    assert env.decrypt_bytes(blob, ks) == b"old"
    ks.retire(first)
    assert not (tmp_path / f"{first}.pem").exists()  # key material gone, not just unlisted
    reloaded = Keyset.load(tmp_path, PASSWORD)
    assert first not in reloaded and len(reloaded) == 1
    with pytest.raises(KeyNotFound, match="retired"):
        env.decrypt_bytes(blob, reloaded)


def test_save_to_a_folder_and_change_the_password(rsa_keys: list[LocalRSAKey], tmp_path: Path) -> None:
    ks = Keyset()
    ks.add(rsa_keys[0])
    with pytest.raises(KeysetError, match="only in memory"):
        ks.save()
    ks.save(tmp_path / "a", PASSWORD)
    signer = ks.verify_key().public_numbers()
    ks.rotate(rsa_keys[1])  # saved by itself from now on
    moved = Keyset.load(tmp_path / "a", PASSWORD)
    assert moved.primary.key_id == rsa_keys[1].key_id and len(moved) == 2
    moved.save(tmp_path / "b", b"a new password")
    moved.save(tmp_path / "a", b"a new password")  # in place: every key file re-encrypted
    for folder in ("a", "b"):
        again = Keyset.load(tmp_path / folder, b"a new password")
        assert [k.key_id for k in again] == [rsa_keys[0].key_id, rsa_keys[1].key_id]
        assert again.verify_key().public_numbers() == signer
        with pytest.raises(KeysetError, match="wrong password"):
            Keyset.load(tmp_path / folder, PASSWORD)


def test_a_key_file_swapped_for_another_is_noticed(rsa_keys: list[LocalRSAKey], tmp_path: Path) -> None:
    ks = Keyset.generate(tmp_path, PASSWORD)
    rsa_keys[2].save(tmp_path / f"{ks.primary.key_id}.pem", PASSWORD)
    with pytest.raises(KeysetError, match="different key"):
        Keyset.load(tmp_path, PASSWORD)


class AESWrapKEK:
    """Stands in for another provider (an HSM): a KEK the keyset holds but does not persist itself."""

    algorithm, provider = "AES-KW-256", "test-kw"

    def __init__(self, key_id: str, kek: bytes):
        self.key_id, self._kek = key_id, kek

    def wrap(self, data_key: bytes) -> bytes:
        return aes_key_wrap(self._kek, data_key)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._kek, wrapped)
        except ValueError:
            raise IntegrityError(f"not wrapped by {self.key_id}") from None

    def record(self) -> dict[str, str]:
        return {"slot": "7"}


def test_other_providers_join_and_are_never_dropped(tmp_path: Path) -> None:
    material = os.urandom(32)
    ks = Keyset.generate(tmp_path, PASSWORD)
    blob = env.encrypt_bytes(b"under rsa", ks)
    ks.rotate(AESWrapKEK("kw-1", material))
    sealed = env.encrypt_bytes(b"under kw", ks)
    with pytest.raises(KeysetError, match="test-kw"):
        Keyset.load(tmp_path, PASSWORD)  # no loader for it: an error, not a keyset missing its primary
    seen: list[dict] = []

    def loader(record):
        seen.append(dict(record))
        return AESWrapKEK(record["id"], material)

    again = Keyset.load(tmp_path, PASSWORD, providers={"test-kw": loader})
    assert seen[0]["slot"] == "7" and again.primary.key_id == "kw-1"
    assert env.decrypt_bytes(sealed, again) == b"under kw" and env.decrypt_bytes(blob, again) == b"under rsa"


# -- re-wrap cost does not grow with the artifact ---------------------------------------------------------------------
@pytest.mark.slow
def test_rewrap_cost_is_independent_of_artifact_size(rsa_keys: list[LocalRSAKey], tmp_path: Path) -> None:
    ks = Keyset()
    ks.add(rsa_keys[0])
    ks.add(rsa_keys[1])
    paths = {}
    for name, size in (("small", 1 << 10), ("large", 64 << 20)):
        paths[name] = tmp_path / f"{name}.env"
        with open(paths[name], "wb") as out:
            env.encrypt_stream(_Zeros(size), out, ks)
    times: dict[str, list[float]] = {"small": [], "large": []}
    for i in range(6):  # interleaved, each round moves both artifacts to the other key
        ks.set_primary(rsa_keys[(i + 1) % 2].key_id)
        for name in times:
            start = time.perf_counter()
            env.rewrap(paths[name], ks)
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(times["large"]) / statistics.median(times["small"])
    print(f"re-wrap 64 MiB / 1 KiB = {ratio:.2f} (medians {statistics.median(times['large']) * 1e3:.1f} ms, "
          f"{statistics.median(times['small']) * 1e3:.1f} ms)")  # fmt: skip
    assert ratio < 3
    with open(paths["large"], "rb") as src:  # the header only: 64 chunks of 1 MiB, each with its tag
        length = env.read_header(src).length
    assert paths["large"].stat().st_size == length + 64 * env.TAG_SIZE + (64 << 20)
    with open(paths["large"], "rb") as src:
        assert env.read_header(src).key_id == rsa_keys[0].key_id  # six moves: back on the first key
        src.seek(0)
        assert env.decrypt_stream(src, _Sink(), ks) == 64 << 20  # and the untouched body still authenticates


class _Zeros:
    """A file-like source of n zero bytes (no 64 MiB bytes object in the test)."""

    def __init__(self, n: int):
        self.left = n

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


class _Sink:
    def write(self, data: memoryview) -> int:
        assert not any(data[:64])
        return len(data)
