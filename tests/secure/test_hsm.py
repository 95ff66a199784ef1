"""The PKCS#11 KEK on a real SoftHSM2 token created in a temp dir for this module."""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.secure.errors import HSMError, IntegrityError, KeyNotFound, KeysetError
from common.secure.hsm import HSMKey, HSMToken, create_kek, find_kek, init_softhsm_token, open_token
from common.secure.kek import KeyEncryptionKey
from tests.conftest import softhsm_library

pytestmark = pytest.mark.hsm

PIN, SO_PIN = "user-pin-4F7Q", "so-pin-9K2W"  # distinctive, so a leak into a message or repr is found
LABEL, PIN_LABEL, TWIN_LABEL = "s2-keks", "s2-pin-checks", "s2-twin"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    lib = softhsm_library()
    assert lib is not None
    before = os.environ.get("SOFTHSM2_CONF")
    directory = tmp_path_factory.mktemp("softhsm")
    init_softhsm_token(directory, LABEL, PIN, SO_PIN)
    init_softhsm_token(directory, PIN_LABEL, PIN, SO_PIN)
    init_softhsm_token(directory, TWIN_LABEL, PIN, SO_PIN)
    init_softhsm_token(directory, TWIN_LABEL, PIN, SO_PIN, library=lib)  # tokens made, now the library sees them
    yield lib
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture(scope="module")
def token(library: str) -> Iterator[HSMToken]:
    with open_token(library, LABEL, PIN) as tok:
        yield tok


def new_kek(token: HSMToken) -> HSMKey:
    return create_kek(token, f"kek-{uuid.uuid4().hex[:8]}")


def test_wrap_unwrap_round_trip(token: HSMToken) -> None:
    kek = new_kek(token)
    assert isinstance(kek, KeyEncryptionKey) and kek.algorithm == "AES-256-GCM"
    for size in (16, 20, 32, 64):
        data_key = os.urandom(size)
        wrapped = kek.wrap(data_key)
        assert data_key not in wrapped and len(wrapped) == 12 + size + 16  # IV, ciphertext, GCM tag
        assert kek.unwrap(wrapped) == data_key
    assert kek.wrap(data_key)[:12] != kek.wrap(data_key)[:12]  # a fresh IV every time


def test_what_is_not_a_data_key_is_refused(token: HSMToken) -> None:
    kek = new_kek(token)
    for size in (0, 8, 15, 65):
        with pytest.raises(ValueError, match=f"16 to 64 bytes .*got {size} bytes"):
            kek.wrap(os.urandom(size))
    with pytest.raises(ValueError, match="got str"):
        kek.wrap("not bytes")  # type: ignore[arg-type]  # the wrong type on purpose


def test_the_token_computes_standard_aes_gcm(token: HSMToken) -> None:
    """What the token returns is AES-256-GCM as `cryptography` computes it, with the KEK's label as AAD.

    A known KEK has to be imported to compare (a generated one cannot be known), so this test builds an
    HSMKey around an imported session key; production keys come only from create_kek."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from pkcs11 import Attribute, KeyType, ObjectClass

    kek_bytes = os.urandom(32)
    handle = token.run(
        "importing a known test key",
        lambda s: s.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: kek_bytes,
                Attribute.TOKEN: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            }
        ),
    )
    kek = HSMKey(token, "known-kek", handle)
    data_key = os.urandom(32)
    wrapped = kek.wrap(data_key)
    iv, sealed = wrapped[:12], wrapped[12:]
    assert AESGCM(kek_bytes).decrypt(iv, sealed, b"hpai data key for known-kek") == data_key
    iv = os.urandom(12)
    made_here = iv + AESGCM(kek_bytes).encrypt(iv, data_key, b"hpai data key for known-kek")
    assert kek.unwrap(made_here) == data_key


def test_no_plaintext_key_object_is_made_or_read(token: HSMToken, monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable pattern: C_Encrypt/C_Decrypt of data only. No key object is made through the session
    (C_CreateObject from a plaintext, which an HSM in FIPS mode refuses), and the KEK cannot wrap or unwrap
    key objects at all, so no unwrapped key's CKA_VALUE can be read back."""
    import pkcs11

    kek = new_kek(token)
    used: list[str] = []

    class Recording:  # the session, with every method the library code asks it for recorded
        def __init__(self, session: object):
            self._session = session

        def __getattr__(self, name: str) -> object:
            used.append(name)
            return getattr(self._session, name)

    monkeypatch.setattr(token, "_session", Recording(token._session))
    data_key = os.urandom(32)
    assert kek.unwrap(kek.wrap(data_key)) == data_key
    assert used == [], used  # only the KEK's own encrypt and decrypt ran
    handle = kek._handle
    assert handle[pkcs11.Attribute.ENCRYPT] is True and handle[pkcs11.Attribute.DECRYPT] is True
    assert handle[pkcs11.Attribute.WRAP] is False and handle[pkcs11.Attribute.UNWRAP] is False


def test_kek_never_leaves_the_token(token: HSMToken) -> None:
    from pkcs11 import Attribute, Mechanism, exceptions

    kek = new_kek(token)
    handle = kek._handle
    assert handle[Attribute.EXTRACTABLE] is False and handle[Attribute.SENSITIVE] is True
    assert handle[Attribute.NEVER_EXTRACTABLE] is True and handle[Attribute.ALWAYS_SENSITIVE] is True
    with pytest.raises(exceptions.AttributeSensitive):
        handle[Attribute.VALUE]
    from pkcs11 import KeyType, MechanismFlag

    transport = token.run(  # a key that may wrap, as one that moves keys between HSMs would be
        "making a wrapping key", lambda s: s.generate_key(KeyType.AES, 256, capabilities=MechanismFlag.WRAP)
    )
    with pytest.raises(exceptions.KeyUnextractable):  # not even wrapped under another key of the same token
        transport.wrap_key(handle, mechanism=Mechanism.AES_KEY_WRAP)
    with pytest.raises(exceptions.PKCS11Error):  # CKA_EXTRACTABLE cannot be switched back on
        handle[Attribute.EXTRACTABLE] = True
    assert handle[Attribute.EXTRACTABLE] is False


def test_wrong_key_or_tampered_bytes_are_integrity_errors(token: HSMToken) -> None:
    kek, other = new_kek(token), new_kek(token)
    wrapped = kek.wrap(os.urandom(32))
    with pytest.raises(IntegrityError, match=other.key_id):
        other.unwrap(wrapped)
    flipped_iv = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    for bad in (wrapped[:-1] + bytes([wrapped[-1] ^ 1]), flipped_iv, wrapped[:-8], wrapped + b"\0" * 8):
        with pytest.raises(IntegrityError, match="not made by HSM key"):
            kek.unwrap(bad)
    for short in (wrapped[:7], b"", wrapped[:43]):  # too short to hold a data key: refused before the token
        with pytest.raises(IntegrityError, match=f"is {len(short)} bytes"):
            kek.unwrap(short)


def test_keys_persist_and_are_found_by_id(library: str, token: HSMToken) -> None:
    kek = new_kek(token)
    data_key = os.urandom(32)
    wrapped = kek.wrap(data_key)
    assert find_kek(token, kek.key_id).unwrap(wrapped) == data_key
    with pytest.raises(KeysetError, match="already holds"):
        create_kek(token, kek.key_id)
    with pytest.raises(KeyNotFound, match="no-such-key"):
        find_kek(token, "no-such-key")


def test_reopened_token_unwraps_what_an_earlier_session_wrapped(library: str) -> None:
    data_key = os.urandom(32)
    with open_token(library, PIN_LABEL, PIN) as tok:
        kek = new_kek(tok)
        new_kek_id, wrapped = kek.key_id, kek.wrap(data_key)
    with pytest.raises(HSMError, match="closed"):
        kek.wrap(data_key)
    with open_token(library, PIN_LABEL, PIN) as tok:
        assert find_kek(tok, new_kek_id).unwrap(wrapped) == data_key


def test_missing_token_and_library_are_clear_errors(library: str) -> None:
    with pytest.raises(HSMError, match=r"no token labelled 'no-such-token'.*tokens present: \[.*'s2-keks'"):
        open_token(library, "no-such-token", PIN)
    with pytest.raises(HSMError, match=r"cannot load the PKCS#11 library /nonexistent/libpkcs11\.so"):
        open_token("/nonexistent/libpkcs11.so", LABEL, PIN)


def test_wrong_pin_is_refused_without_echoing_it(library: str) -> None:
    wrong = "wrong-pin-X8Z3"
    with pytest.raises(HSMError, match=f"token '{PIN_LABEL}' rejected the PIN") as caught:
        open_token(library, PIN_LABEL, wrong)
    assert wrong not in str(caught.value) and wrong not in repr(caught.value)


def test_second_open_in_one_process_is_explained(library: str, token: HSMToken) -> None:
    with pytest.raises(HSMError, match="already open in this process"):
        open_token(library, LABEL, PIN)


def test_no_secret_in_repr_and_no_pickling(token: HSMToken) -> None:
    kek = new_kek(token)
    for obj in (kek, token):
        assert PIN not in repr(obj) and SO_PIN not in repr(obj) and PIN not in str(obj)
        with pytest.raises(TypeError, match="refuses pickling"):
            pickle.dumps(obj)
    assert repr(kek) == f"HSMKey(key_id={kek.key_id!r}, algorithm='AES-256-GCM', token='s2-keks')"


def test_init_token_without_softhsm_util_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    before = os.environ.get("SOFTHSM2_CONF")
    with pytest.raises(HSMError, match="softhsm2-util is not installed"):
        init_softhsm_token(tmp_path, "x", PIN, SO_PIN)
    assert os.environ.get("SOFTHSM2_CONF") == before


def test_hsm_key_as_keyset_primary_survives_reload(tmp_path: Path, token: HSMToken) -> None:
    """An envelope wrapped by the HSM key opens after the keyset is reloaded with the HSM provider."""
    from common.secure.envelope import decrypt_bytes, encrypt_bytes
    from common.secure.hsm import PROVIDER, provider_loader
    from common.secure.keys import Keyset

    keyset = Keyset.generate(tmp_path / "keys", b"keyset-password")
    kek = new_kek(token)
    keyset.rotate(kek)
    blob = encrypt_bytes(b"weights" * 1000, keyset)
    assert kek.key_id.encode() in blob and PIN.encode() not in (tmp_path / "keys" / "keyset.json").read_bytes()
    with pytest.raises(KeysetError, match="pass a loader"):
        Keyset.load(tmp_path / "keys", b"keyset-password")
    again = Keyset.load(tmp_path / "keys", b"keyset-password", providers={PROVIDER: provider_loader(token)})
    assert again.primary.key_id == kek.key_id
    assert decrypt_bytes(blob, again) == b"weights" * 1000


def test_two_tokens_with_one_label_are_refused(library: str) -> None:
    """Which token holds the keys must never be a guess."""
    with pytest.raises(HSMError, match=r"several tokens .* are labelled 's2-twin'"):
        open_token(library, TWIN_LABEL, PIN)


def test_threads_share_one_token_safely(token: HSMToken) -> None:
    """A PKCS#11 session is not thread-safe; the token's lock makes concurrent wraps and unwraps correct."""
    from concurrent.futures import ThreadPoolExecutor

    kek = new_kek(token)

    def round_trip(i: int) -> bool:
        data_key = os.urandom(32)
        return all(kek.unwrap(kek.wrap(data_key)) == data_key for _ in range(20))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(round_trip, range(8)))
