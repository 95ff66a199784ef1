"""The secure model pipeline: envelope encryption, keysets and rotation, an HSM, signed manifests,
weights decrypted only in memory, and mutual TLS. Built on `cryptography` and `python-pkcs11`."""
