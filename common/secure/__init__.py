"""The secure model pipeline: envelope encryption, keysets and rotation, an HSM, signed manifests,
weights decrypted only in memory, and mutual TLS. Built on `cryptography` and `python-pkcs11`.

The front door, in the manner of pyca's Fernet: a keyset holds the keys, and the functions choose
everything else (a fresh AES-256-GCM data key per artifact, its nonces, the chunking, the header).
No function takes a nonce, and none returns a byte of plaintext that failed authentication: a
tampered, truncated or foreign artifact raises `IntegrityError` (a `SecureError`, as all errors here)::

    >>> from common.secure import Keyset, decrypt_bytes, encrypt_bytes
    >>> keyset = Keyset.generate()  # in memory; Keyset.generate(folder, password) keeps it on disk
    >>> sealed = encrypt_bytes(b"model weights", keyset)
    >>> decrypt_bytes(sealed, keyset)
    b'model weights'
    >>> decrypt_bytes(sealed[:-1], keyset)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    common.secure.errors.IntegrityError: the last chunk failed authentication: altered, reordered, ...

Files the same way, streamed in 1 MiB chunks whatever their size; the output appears (mode 0600)
only once complete, and a decrypted file only once every chunk authenticated::

    encrypt_file("weights.safetensors", "weights.safetensors.enc", keyset)
    decrypt_file("weights.safetensors.enc", "weights.safetensors", keyset)

A keyset kept on disk (`Keyset.generate(folder, password)`, later `Keyset.load(folder, password)`)
rotates: `keyset.rotate()` adds a new primary and `rewrap(path, keyset)` moves an artifact to it by
rewriting its header only (the data key stays); `reencrypt(path, keyset)` gives it a new data key, what
a compromised key calls for. Beyond the front door, each file holds one layer (module 04's README has
the table): `envelope` (the format), `keys` and `kek` (keysets, the KEK interface), `hsm` (PKCS#11),
`signing` (manifests), `weights` (encrypted model folders), `memory` (secrets in memory), `pickles` (refusing pickle checkpoints),
`tls` (certificates and contexts), `errors`.
"""

from common.secure.envelope import (
    decrypt_bytes,
    decrypt_file,
    decrypt_stream,
    encrypt_bytes,
    encrypt_file,
    encrypt_stream,
    read_header,
    reencrypt,
    rewrap,
)
from common.secure.errors import (
    FormatError,
    HSMError,
    IntegrityError,
    KeyDisabled,
    KeyNotFound,
    KeysetError,
    SecureError,
    SignatureMismatch,
    TLSMaterialError,
    UnsafeFormat,
)
from common.secure.kek import KeyEncryptionKey
from common.secure.keys import Keyset, LocalRSAKey
from common.secure.memory import mapping_flags, memory_exposure
from common.secure.pickles import refuse_pickle
from common.secure.signing import (
    generate_signing_key,
    load_private_key,
    load_public_key,
    read_verified,
    save_private_key,
    save_public_key,
    sign_folder,
    verify_folder,
)
from common.secure.tls import client_context, client_id, dev_pki, server_context
from common.secure.weights import (
    DecryptedModel,
    encrypt_model_folder,
    load_encrypted,
    load_model_folder,
    save_encrypted,
)

__all__ = [
    "DecryptedModel",
    "FormatError",
    "HSMError",
    "IntegrityError",
    "KeyDisabled",
    "KeyEncryptionKey",
    "KeyNotFound",
    "Keyset",
    "KeysetError",
    "LocalRSAKey",
    "SecureError",
    "SignatureMismatch",
    "TLSMaterialError",
    "UnsafeFormat",
    "client_context",
    "client_id",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "dev_pki",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_model_folder",
    "encrypt_stream",
    "generate_signing_key",
    "load_encrypted",
    "load_model_folder",
    "load_private_key",
    "load_public_key",
    "mapping_flags",
    "memory_exposure",
    "read_header",
    "read_verified",
    "reencrypt",
    "refuse_pickle",
    "rewrap",
    "save_encrypted",
    "save_private_key",
    "save_public_key",
    "server_context",
    "sign_folder",
    "verify_folder",
]
