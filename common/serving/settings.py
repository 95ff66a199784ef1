"""Server settings: every field is a CLI flag (`--max-batch-size 32`) and an
environment variable (`HPAI_MAX_BATCH_SIZE=32`), validated by pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.engine.embedding import MINILM_MAX_TOKENS, MINILM_NAME
from common.engine.precision import Precision
from common.serving.batcher import BatchPolicy


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPAI_", extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    model_name: str = Field(MINILM_NAME, description="name the API serves the model under")
    model_path: str | None = Field(None, description="Hugging Face model folder (default: the packaged MiniLM)")
    runtime: str = Field("torch-eager", description="runtime from common.engine's registry")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Precision = Field("fp32", description="numeric precision of the model's weights and compute")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    model_copies: int = Field(
        1, ge=1, description="batches computed at once on the engine's threads (sharing one model)"
    )
    max_batch_size: int = Field(32, ge=1, description="inputs per batch at most")
    max_queue_delay_ms: float = Field(5.0, ge=0, description="longest the oldest request waits for a batch to fill")
    max_batch_tokens: int = Field(8192, ge=1, description="padded tokens per batch at most")
    max_queue_size: int = Field(256, ge=1, description="requests waiting at most; more are refused with 429")
    request_timeout_s: float = Field(10.0, gt=0, description="deadline in the queue; later answers 504")
    max_inputs_per_request: int = Field(256, ge=1, description="inputs in one request at most (413 beyond)")
    max_tokens: int = Field(MINILM_MAX_TOKENS, ge=2, description="tokens per input at most (413 beyond)")
    max_body_bytes: int = Field(
        2_000_000,  # TEI's --payload-limit default
        ge=1,
        description="request body size at most (413 beyond: from Content-Length before reading, or while reading)",
    )
    limit_concurrency: int | None = Field(
        None, ge=1, description="connections+requests uvicorn serves at once; beyond it answers 503 without parsing"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # mutual TLS: all three files, or none (plain HTTP); see common.secure.tls and `make serve TLS=1`
    tls_cert: str | None = Field(None, description="server certificate (PEM); with tls_key and tls_ca: mutual TLS")
    tls_key: str | None = Field(None, description="server private key (PEM)")
    tls_ca: str | None = Field(None, description="CA whose client certificates are accepted (the only trust root)")
    allowed_clients: list[str] = Field(
        default_factory=list, description="client identities (e.g. spiffe://hpai/client) allowed to call; others 403"
    )
    # encrypted weights: a folder made by common.secure.weights.encrypt_model_folder, verified then decrypted in memory
    encrypted_model: str | None = Field(None, description="encrypted, signed model folder (instead of model_path)")
    keyset_dir: str | None = Field(None, description="keyset folder whose keys unwrap the encrypted model's data key")
    keyset_password: SecretStr | None = Field(
        None, description="keyset password: set HPAI_KEYSET_PASSWORD (a flag would show in ps)"
    )
    signing_public_key: str | None = Field(
        None, description="PEM public key the model must be signed by (default: the keyset's own signing key)"
    )

    @model_validator(mode="after")
    def _check(self) -> ServingSettings:
        tls = {"tls_cert": self.tls_cert, "tls_key": self.tls_key, "tls_ca": self.tls_ca}
        if any(tls.values()) and not all(tls.values()):
            missing = ", ".join(k for k, v in tls.items() if not v)
            raise ValueError(f"mutual TLS needs tls_cert, tls_key and tls_ca together; missing {missing}")
        if self.tls_enabled and not self.allowed_clients:  # fail closed: no silent "any certificate will do"
            raise ValueError("mutual TLS is on but allowed_clients is empty: list the client identities to serve")
        if self.allowed_clients and not self.tls_enabled:
            raise ValueError("allowed_clients needs mutual TLS (tls_cert, tls_key, tls_ca): without it no identity")
        if self.encrypted_model and self.model_path:
            raise ValueError("give model_path or encrypted_model, not both")
        if self.encrypted_model and not (self.keyset_dir and self.keyset_password):
            raise ValueError("encrypted_model needs keyset_dir and keyset_password (HPAI_KEYSET_PASSWORD)")
        if (self.keyset_dir or self.signing_public_key) and not self.encrypted_model:
            raise ValueError("keyset_dir and signing_public_key are only used with encrypted_model")
        return self

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key and self.tls_ca)

    def policy(self) -> BatchPolicy:
        return BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms,
            max_batch_tokens=self.max_batch_tokens,
            max_queue_size=self.max_queue_size,
        )
