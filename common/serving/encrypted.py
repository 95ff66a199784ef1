"""Serving from an encrypted, signed model folder (module 04's `common.secure.weights`)."""

from __future__ import annotations

from common.device import set_thread_count
from common.engine import Engine, build_engine
from common.serving.settings import ServingSettings


def encrypted_engine(settings: ServingSettings) -> Engine:
    """The engine over an encrypted, signed model folder: verified, decrypted into memory, never to disk.

    `python -m common.serving` builds it before serving, so a bad key or signature stops the start; an app
    made by `create_app(settings)` alone builds it in its background load.
    """
    from common.engine.embedding import EmbeddingCodec, sentence_encoder_from_memory
    from common.secure.keys import Keyset
    from common.secure.signing import load_public_key
    from common.secure.weights import load_model_folder

    if not (settings.encrypted_model and settings.keyset_dir and settings.keyset_password):
        raise ValueError("encrypted_engine needs encrypted_model, keyset_dir and keyset_password")
    keyset = Keyset.load(settings.keyset_dir, settings.keyset_password.get_secret_value().encode())
    public_key = load_public_key(settings.signing_public_key) if settings.signing_public_key else keyset.verify_key()
    model = load_model_folder(settings.encrypted_model, keyset, public_key)
    if settings.threads:
        set_thread_count(settings.threads)
    return build_engine(
        sentence_encoder_from_memory(model.config, model.state_dict, name=settings.model_name),
        EmbeddingCodec.from_files(model.files, max_tokens=settings.max_tokens),
        runtime=settings.runtime,
        device=settings.device,
        precision=settings.precision,
        workers=settings.model_copies,
    )
