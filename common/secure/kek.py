"""The one interface every key-encryption key (KEK) provider implements.

Envelopes never see key material of a KEK: they hand a fresh data key to
`wrap` and get it back from `unwrap`. A local RSA key, an HSM-held AES key
and any cloud KMS fit behind the same three members.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class KeyEncryptionKey(Protocol):
    key_id: str  # stable, unique in its keyset; written into every envelope header it wraps for
    algorithm: str  # e.g. "RSA-OAEP-3072-SHA256" (local) or "AES-256-GCM" (HSM)

    def wrap(self, data_key: bytes) -> bytes:
        """The data key encrypted under this KEK."""
        ...

    def unwrap(self, wrapped: bytes) -> bytes:
        """The data key back; raises errors.IntegrityError if `wrapped` was not made by this KEK."""
        ...
