"""The engine a server runs, built from its settings: one path for a plain and an encrypted model.

The model and its tokenizer come from the packaged MiniLM, a local Hugging Face folder, or an
encrypted, signed folder (module 04's `common.secure.weights`: verified, then decrypted into memory,
never to disk); the runtime, device, precision and worker threads are applied the same way to each.
"""

from __future__ import annotations

from common.device import set_thread_count
from common.engine import Engine, Model, build_engine
from common.engine.embedding import EmbeddingCodec, sentence_encoder, sentence_encoder_from_memory
from common.serving.settings import ServingSettings


def load_engine(settings: ServingSettings) -> Engine:
    """The engine `settings` describe, not yet started (its warm-up runs in `Engine.start`).

    With `encrypted_model` it never falls back to the plain packaged model. `python -m common.serving`
    calls it before serving an encrypted model, so a bad key or signature stops the start; an app made
    by `create_app(settings)` alone calls it in its background load.
    """
    if settings.threads:
        set_thread_count(settings.threads)
    model, codec = _encrypted(settings) if settings.encrypted_model else _plain(settings)
    return build_engine(
        model,
        codec,
        runtime=settings.runtime,
        device=settings.device,
        precision=settings.precision,
        workers=settings.model_copies,
    )


def _plain(settings: ServingSettings) -> tuple[Model, EmbeddingCodec]:
    model = sentence_encoder(settings.model_path, name=settings.model_name)  # first: it names a missing config.json
    return model, EmbeddingCodec.from_folder(settings.model_path, max_tokens=settings.max_tokens)


def _encrypted(settings: ServingSettings) -> tuple[Model, EmbeddingCodec]:
    from common.secure.keys import Keyset
    from common.secure.signing import load_public_key
    from common.secure.weights import load_model_folder

    if not (settings.encrypted_model and settings.keyset_dir and settings.keyset_password):
        raise ValueError("an encrypted model needs encrypted_model, keyset_dir and keyset_password")
    keyset = Keyset.load(settings.keyset_dir, settings.keyset_password.get_secret_value().encode())
    public_key = load_public_key(settings.signing_public_key) if settings.signing_public_key else keyset.verify_key()
    folder = load_model_folder(settings.encrypted_model, keyset, public_key)
    model = sentence_encoder_from_memory(folder.config, folder.state_dict, name=settings.model_name)
    return model, EmbeddingCodec.from_files(folder.files, max_tokens=settings.max_tokens)
