"""Server settings: every field is a CLI flag (`--max-batch-size 32`) and an
environment variable (`HPAI_MAX_BATCH_SIZE=32`), validated by pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.engine.embedding import MINILM_MAX_TOKENS, MINILM_NAME
from common.engine.precision import PRECISIONS
from common.serving.batcher import BatchPolicy


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPAI_", extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    model_name: str = Field(MINILM_NAME, description="name the API serves the model under")
    model_path: str | None = Field(None, description="Hugging Face model folder (default: the packaged MiniLM)")
    runtime: str = Field("torch-eager", description="runtime from common.engine's registry")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: str = Field("fp32", description=f"one of {', '.join(PRECISIONS)}")
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
    limit_concurrency: int | None = Field(
        None, ge=1, description="connections+requests uvicorn serves at once; beyond it answers 503 without parsing"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check(self) -> ServingSettings:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        return self

    def policy(self) -> BatchPolicy:
        return BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms,
            max_batch_tokens=self.max_batch_tokens,
            max_queue_size=self.max_queue_size,
        )
