"""The API contract of the embeddings server: request, response and error bodies, in OpenAI's shapes.

These models are the OpenAPI schema a client reads (`/openapi.json`); the limits that do not depend
on a setting live here too, so a bad field is refused by validation and named in the 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_MAX_CHARS = 256  # a model or user name longer than this is not a name


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused: ignoring it would lose what it asked

    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="a text, or a non-empty list of texts, to embed"
    )
    model: str | None = Field(None, max_length=NAME_MAX_CHARS, description="the served model's name (optional)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="floats, or base64 of little-endian float32"
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        description="OpenAI's truncation of the embedding: only the model's own dimension is accepted "
        "(a model not trained for it cannot be truncated)",
    )
    user: str | None = Field(None, max_length=NAME_MAX_CHARS, description="accepted for OpenAI compatibility; unused")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="position of the text in `input`")
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One served model, as OpenAI's `GET /v1/models` lists it."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the server started serving it")
    owned_by: str = "hpai"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed"]
    model: str | None = None
    precision: str | None = None
    error: str | None = Field(None, description="why the model failed to load")


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorDetail(BaseModel):
    message: str = Field(description="what was wrong, and what is expected")
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = Field(None, description="the field that was wrong, e.g. input[3]")
    code: int = Field(description="the HTTP status")


class ErrorResponse(BaseModel):
    """Every error this server answers (OpenAI's error shape)."""

    error: ErrorDetail
