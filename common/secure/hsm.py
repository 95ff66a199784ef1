"""A key-encryption key that never leaves a PKCS#11 token (an HSM; SoftHSM2 in development).

The KEK is an AES-256 key generated *on* the token with CKA_EXTRACTABLE=False
and CKA_SENSITIVE=True: no call, not even with the PIN, returns its value.

A data key is protected the way a cloud KMS's Encrypt/Decrypt (and GenerateDataKey)
do it: the token encrypts the 32 data-key bytes as *data* with AES-256-GCM under the
KEK (C_Encrypt), and decrypts them back (C_Decrypt). No key object is ever made from
a plaintext, and no key attribute is ever read: the plaintext data key exists only
in this process, which needs it anyway to encrypt the body with AES-GCM at memory
speed. Why not C_WrapKey/C_UnwrapKey, the calls named after the job: they move
key *objects*, so wrapping a host-made data key means importing it with
C_CreateObject as a non-sensitive, extractable key, and getting it back means
unwrapping into such a key and reading CKA_VALUE. SoftHSM allows both; an HSM in
FIPS mode refuses to create or unwrap a non-sensitive secret key and never returns
CKA_VALUE. The key-object pattern that such an HSM does allow, a data key generated
on the token (sensitive, extractable only by wrapping) and C_WrapKey'd out, leaves
the plaintext key inside the token, where it suits data the token itself encrypts,
not a body encrypted here.

Wrapped bytes: a 12-byte IV, the encrypted data key, a 16-byte GCM tag (32 -> 60
bytes). The associated data names the KEK, so bytes made by one key are refused
by another even before the tag (which fails too). The IV is random, as NIST SP
800-38D allows for at most 2^32 encryptions under one key: far more data keys than
one KEK should wrap before it is rotated. A FIPS 140-3 module must generate GCM
IVs itself (PKCS#11 3.0's C_EncryptMessage with CKG_GENERATE_RANDOM, or a vendor's
own GCM mechanism); SoftHSM 2.6 implements PKCS#11 2.40, which takes the caller's.

PKCS#11 logs in once per application and token, and a session must not be used
by two threads at once: an `HSMToken` owns one logged-in session behind a lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from common.secure.errors import HSMError, IntegrityError, KeyNotFound, KeysetError

PROVIDER = "pkcs11"  # the provider name a keyset records for HSM keys
ALGORITHM = "AES-256-GCM"  # the data key encrypted as data by a PKCS#11 token (C_Encrypt with CKM_AES_GCM)
IV_SIZE, GCM_TAG_SIZE = 12, 16
DATA_KEY_SIZES = range(16, 65)  # AES-128 .. a 512-bit secret: anything else is not a data key

# What SoftHSM (and tokens generally) answer when wrapped bytes were not made by this key:
# GCM's tag check fails inside the token, which reports it as one of these (SoftHSM: GeneralError).
_NOT_OURS = ("WrappedKeyInvalid", "WrappedKeyLenRange", "EncryptedDataInvalid", "EncryptedDataLenRange", "GeneralError")


def _refuse_pickle(obj: object) -> NoReturn:
    raise TypeError(f"{type(obj).__name__} refuses pickling: it is a live handle to an HSM session, not data")


class HSMToken:
    """One logged-in, read-write session on a token; shared by every `HSMKey` found or created on it.

    Holds no PIN: the login is the session's state. Close it (or use `with`) to log out.
    """

    def __init__(self, library: str, label: str, session: Any):
        self.library, self.label = library, label
        self._session = session
        self._lock = threading.Lock()

    def run(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `fn` with the session under the lock; a token failure becomes an HSMError naming `what`."""
        import pkcs11

        with self._lock:
            if self._session is None:
                raise HSMError(f"{what}: token {self.label!r} is closed")
            try:
                return fn(self._session, *args, **kwargs)
            except pkcs11.PKCS11Error as exc:
                raise HSMError(f"{what} on token {self.label!r} failed: {type(exc).__name__}") from None

    def close(self) -> None:
        """Log out and close the session (idempotent)."""
        import pkcs11

        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            # PKCS11Error: the library was finalised or the token removed, so nothing is left to close
            with contextlib.suppress(pkcs11.PKCS11Error):
                session.close()

    def __enter__(self) -> HSMToken:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._session is None else "open"
        return f"HSMToken(label={self.label!r}, library={self.library!r}, {state})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        _refuse_pickle(self)


class HSMKey:
    """A KeyEncryptionKey whose AES-256 key lives on the token; `key_id` is its CKA_LABEL."""

    algorithm = ALGORITHM
    provider = PROVIDER

    def __init__(self, token: HSMToken, key_id: str, handle: Any):
        self.key_id = key_id
        self.token = token
        self._handle = handle

    def wrap(self, data_key: bytes) -> bytes:
        """The data key encrypted by the token (AES-256-GCM, C_Encrypt): IV || ciphertext || tag."""
        if not isinstance(data_key, bytes | bytearray) or len(data_key) not in DATA_KEY_SIZES:
            size = f"{len(data_key)} bytes" if isinstance(data_key, bytes | bytearray) else type(data_key).__name__
            raise ValueError(f"a data key is 16 to 64 bytes (AES-256: 32), got {size}")
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        iv = os.urandom(IV_SIZE)
        params = GCMParams(iv, self._aad, GCM_TAG_SIZE * 8)

        def encrypt(session: Any) -> bytes:
            return bytes(self._handle.encrypt(bytes(data_key), mechanism=Mechanism.AES_GCM, mechanism_param=params))

        return iv + self.token.run(f"encrypting a data key with {self.key_id!r}", encrypt)

    def unwrap(self, wrapped: bytes) -> bytes:
        """The data key back; IntegrityError if `wrapped` was not made by this key (GCM's tag check fails)."""
        import pkcs11
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        if not isinstance(wrapped, bytes | bytearray):
            raise IntegrityError(f"wrapped data key must be bytes, got {type(wrapped).__name__}")
        if len(wrapped) - IV_SIZE - GCM_TAG_SIZE not in DATA_KEY_SIZES:
            raise IntegrityError(
                f"wrapped data key is {len(wrapped)} bytes; HSM key {self.key_id!r} makes "
                f"{IV_SIZE + GCM_TAG_SIZE + DATA_KEY_SIZES.start} to {IV_SIZE + GCM_TAG_SIZE + DATA_KEY_SIZES[-1]}"
            )
        params = GCMParams(bytes(wrapped[:IV_SIZE]), self._aad, GCM_TAG_SIZE * 8)

        def decrypt(session: Any) -> bytes:
            try:
                sealed = bytes(wrapped[IV_SIZE:])
                return bytes(self._handle.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params))
            except pkcs11.PKCS11Error as exc:
                if type(exc).__name__ in _NOT_OURS:
                    raise IntegrityError(
                        f"wrapped data key ({len(wrapped)} bytes) was not made by HSM key {self.key_id!r} "
                        f"on token {self.token.label!r}: the token's GCM tag check failed"
                    ) from None
                raise

        return self.token.run(f"decrypting a data key with {self.key_id!r}", decrypt)

    @property
    def _aad(self) -> bytes:
        # binds the encrypted data key to this KEK's label: bytes moved between keys are refused
        return b"hpai data key for " + self.key_id.encode()

    def record(self) -> dict[str, str]:
        """What a keyset file stores to find this key again: the token, never the PIN."""
        return {"token": self.token.label}

    def __repr__(self) -> str:
        return f"HSMKey(key_id={self.key_id!r}, algorithm={self.algorithm!r}, token={self.token.label!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        _refuse_pickle(self)


def open_token(library: str | Path, label: str, pin: str) -> HSMToken:
    """Log in to the token labelled `label`; HSMError says which of library, token or PIN was wrong."""
    import pkcs11

    library = str(library)
    try:
        lib = pkcs11.lib(library)
    except (pkcs11.PKCS11Error, OSError) as exc:
        raise HSMError(f"cannot load the PKCS#11 library {library}: {exc}") from None
    try:
        token = lib.get_token(token_label=label)
    except pkcs11.NoSuchToken:
        labels = sorted(t.label for t in lib.get_tokens() if t.label)
        hint = f" (SOFTHSM2_CONF={os.environ['SOFTHSM2_CONF']})" if "SOFTHSM2_CONF" in os.environ else ""
        raise HSMError(f"no token labelled {label!r} in {library}{hint}; tokens present: {labels}") from None
    except pkcs11.MultipleTokensReturned:
        raise HSMError(f"several tokens in {library} are labelled {label!r}: labels must be unique") from None
    except pkcs11.PKCS11Error as exc:
        raise HSMError(f"cannot list the tokens of {library}: {type(exc).__name__}") from None
    try:
        session = token.open(rw=True, user_pin=pin)
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
        raise HSMError(f"token {label!r} rejected the PIN") from None
    except pkcs11.PinLocked:
        raise HSMError(f"token {label!r}: the user PIN is locked (too many wrong attempts)") from None
    except pkcs11.UserAlreadyLoggedIn:
        raise HSMError(
            f"token {label!r} is already open in this process: PKCS#11 logs in once per application, "
            "so share that HSMToken (or close it first)"
        ) from None
    except pkcs11.PKCS11Error as exc:
        raise HSMError(f"cannot open a session on token {label!r}: {type(exc).__name__}") from None
    return HSMToken(library, label, session)


def _find(session: Any, key_id: str) -> list[Any]:
    from pkcs11 import Attribute, ObjectClass

    return list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: key_id}))


def create_kek(token: HSMToken, key_id: str) -> HSMKey:
    """Generate a new AES-256 KEK on the token: stored, private, non-extractable, sensitive, encrypt/decrypt only."""
    from pkcs11 import Attribute, KeyType, MechanismFlag

    if not key_id:
        raise ValueError("key_id must be a non-empty string")

    def create(session: Any) -> Any:
        if _find(session, key_id):
            raise KeysetError(f"token {token.label!r} already holds a key labelled {key_id!r}")
        return session.generate_key(
            KeyType.AES,
            256,
            label=key_id,
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,  # of data keys, as data
            template={
                Attribute.EXTRACTABLE: False,  # may never leave the token, wrapped or not
                Attribute.SENSITIVE: True,  # CKA_VALUE is never readable
                Attribute.PRIVATE: True,  # invisible without the PIN
                Attribute.MODIFIABLE: False,
            },
        )

    return HSMKey(token, key_id, token.run(f"creating key {key_id!r}", create))


def find_kek(token: HSMToken, key_id: str) -> HSMKey:
    """The KEK labelled `key_id`; KeyNotFound if the token has none, HSMError if it has several."""
    found = token.run(f"finding key {key_id!r}", _find, key_id)
    if not found:
        raise KeyNotFound(f"token {token.label!r} holds no key labelled {key_id!r}")
    if len(found) > 1:
        raise HSMError(f"token {token.label!r} holds {len(found)} keys labelled {key_id!r}; labels must be unique")
    return HSMKey(token, key_id, found[0])


def provider_loader(token: HSMToken) -> Callable[[Mapping[str, Any]], HSMKey]:
    """For `Keyset.load(..., providers={PROVIDER: provider_loader(token)})`: re-attach HSM keys on an open token."""

    def load(record: Mapping[str, Any]) -> HSMKey:
        if record.get("token") != token.label:
            raise KeysetError(f"key {record.get('id')!r} lives on token {record.get('token')!r}, not {token.label!r}")
        return find_kek(token, record["id"])

    return load


SOFTHSM_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


def softhsm_library() -> str | None:
    """SoftHSM2's PKCS#11 library if it and its token tool are installed (Debian package softhsm2), else None."""
    import ctypes.util
    import glob

    found = [p for p in SOFTHSM_PATHS if os.path.exists(p)] + sorted(glob.glob("/usr/lib/*/softhsm/libsofthsm2.so"))
    library = found[0] if found else ctypes.util.find_library("softhsm2")
    return library if library and shutil.which("softhsm2-util") else None


def init_softhsm_token(
    directory: str | Path, label: str, pin: str, so_pin: str, library: str | Path | None = None
) -> Path:
    """A fresh SoftHSM2 token stored under `directory`, for tests and notebooks; returns its config file.

    SoftHSM finds tokens through the file named by SOFTHSM2_CONF, read at C_Initialize:
    this sets the variable for the whole process and, when `library` is given and already
    loaded here, re-initialises it so the new token is visible (which ends open sessions).
    """
    util = shutil.which("softhsm2-util")
    if util is None:
        raise HSMError("softhsm2-util is not installed (Debian/Ubuntu package softhsm2)")
    directory = Path(directory)
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    if not conf.exists():
        conf.write_text(
            f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    args = [util, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # softhsm2-util never echoes PINs; its message says what it refused
        raise HSMError(f"softhsm2-util could not create token {label!r}: {done.stderr.strip() or done.stdout.strip()}")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    if library is not None:
        import pkcs11

        pkcs11.lib(str(library)).reinitialize()
    return conf
