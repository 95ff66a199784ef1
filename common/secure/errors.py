"""Typed failures of the secure pipeline.

Each says what failed (which artifact, which key id, which chunk or file) and
never includes key material or plaintext. Catch `SecureError` for all of them.
"""

from __future__ import annotations


class SecureError(Exception):
    """Base class of every failure in common.secure."""


class IntegrityError(SecureError):
    """Ciphertext, header or tag failed authentication: tampered, truncated, reordered or the wrong key."""


class FormatError(IntegrityError):
    """Bytes that are not a well-formed envelope (bad magic, unknown version or algorithm, malformed header)."""


class KeyNotFound(SecureError):
    """An artifact names a key id that is not in the keyset (or was retired)."""


class KeyDisabled(SecureError):
    """The key exists but is disabled: it may not wrap, and by policy may not unwrap either."""


class KeysetError(SecureError):
    """A keyset that breaks its rules: no primary, two primaries, a duplicate id, a bad password."""


class SignatureMismatch(SecureError):
    """A model folder does not match its signed manifest, or the manifest's signature is invalid.

    `differs`, `missing` and `extra` name the files concerned.
    """

    def __init__(
        self, message: str, *, differs: tuple[str, ...] = (), missing: tuple[str, ...] = (), extra: tuple[str, ...] = ()
    ):
        super().__init__(message)
        self.differs, self.missing, self.extra = differs, missing, extra


class UnsafeFormat(SecureError):
    """A format that can run code when loaded (a pickle checkpoint) was refused."""


class HSMError(SecureError):
    """The PKCS#11 token refused or failed an operation (no token, wrong PIN, missing key)."""


class TLSMaterialError(SecureError):
    """A certificate, key or CA file that cannot be used: missing, malformed, not matching, or expired."""
