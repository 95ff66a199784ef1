"""Errors of the embeddings server: one JSON shape (OpenAI's), one typed exception per kind, one handler each.

Route code raises; it never builds an error response. The batcher's and the codec's typed errors
(`QueueFull`, `DeadlineExceeded`, `BatcherClosed`, `InvalidRequest`, `RequestTooLarge`) know no HTTP:
the handlers here give each its status. A refused request is also counted, by reason, in
`hpai_rejected_requests_total` (the batcher counts its own refusals).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response

from common.engine import InvalidRequest, RequestTooLarge
from common.serving.batcher import BatcherClosed, DeadlineExceeded, QueueFull
from common.serving.body_limit import BodyTooLarge
from common.serving.schemas import ErrorResponse

# Documented on every route that can answer them: (status, when)
ERRORS = {
    400: "malformed JSON, a Content-Type other than application/json, or an unsupported value (e.g. dimensions)",
    404: "a model this server does not serve",
    413: "a body over max_body_bytes, more texts than max_inputs_per_request, or a text over max_tokens",
    422: "a field of the wrong type or out of its bounds (e.g. an empty input), named in the message",
    429: "the queue is full; Retry-After says when to try again",
    503: "the model is still loading (Retry-After: 1), failed to load, or the server is shutting down",
    504: "the request's deadline (request_timeout_s) passed in the queue; it was never computed",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error schema and when it happens."""
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


def error_response(
    status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An OpenAI-style error body: what was wrong, and which field."""
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


class APIError(Exception):
    """An error the API answers with `status`; a `reason` is counted in hpai_rejected_requests_total."""

    status: ClassVar[int] = 500
    reason: ClassVar[str | None] = None

    def __init__(self, message: str, param: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


class ModelNotFound(APIError):
    status = 404


class TooManyInputs(APIError):
    status = 413
    reason = "too_large"


class UnsupportedParameter(APIError):
    status = 400
    reason = "invalid"


class ModelNotReady(APIError):
    status = 503


def _count(request: Request, reason: str | None) -> None:
    state = getattr(request.state, "serving", None)  # absent when the app runs without its lifespan
    if reason is not None and state is not None:
        state.metrics.rejected(reason)


def describe_validation_error(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """One message naming the field, and the field, from pydantic's errors. `input` is a union
    (str | list[str]), for which pydantic reports a failure of each branch: pick the one that says more."""

    def field(e: dict[str, Any]) -> list[str]:
        return [str(p) for p in e["loc"] if p not in ("body", "str", "list[str]")]

    for e in errors:
        loc = field(e)
        if loc[:1] == ["input"] and len(loc) == 2:  # an element of the list
            return f"input[{loc[1]}]: expected a string, got {type(e['input']).__name__}", f"input[{loc[1]}]"
        if loc == ["input"] and e["type"] == "too_short":
            return "input: expected at least one text, got an empty list", "input"
    e = errors[0]
    name = ".".join(field(e)) or "body"
    if name == "input" and e["type"] != "missing":
        return f"input: expected a string or a list of strings, got {type(e['input']).__name__}", name
    if e["type"] == "extra_forbidden":
        return f"{name}: unknown field; expected input, model, encoding_format, dimensions or user", name
    return f"{name}: {e['msg']}", name


async def _invalid_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    _count(request, "invalid")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        return error_response(400, f"expected Content-Type: application/json, got {content_type or 'none'!r}")
    errors = list(exc.errors())
    first = errors[0]
    if first["type"] == "json_invalid":
        return error_response(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
    return error_response(422, *describe_validation_error(errors))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    _count(request, exc.reason)
    return error_response(exc.status, exc.message, exc.param, exc.headers)


async def _invalid_input(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    too_large = isinstance(exc, RequestTooLarge)
    _count(request, "too_large" if too_large else "invalid")
    field = f"input[{exc.index}]"
    return error_response(413 if too_large else 422, f"{field}: {exc.reason}", field)


async def _queue_full(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueueFull)  # counted by the batcher
    # Retry-After is whole seconds (RFC 9110): round up, so a client never comes back before it was told to
    return error_response(429, str(exc), headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})


async def _deadline(request: Request, exc: Exception) -> Response:
    return error_response(504, f"request not computed: {exc}")  # counted by the batcher


async def _closed(request: Request, exc: Exception) -> Response:
    return error_response(503, str(exc))


async def _body_too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTooLarge)
    _count(request, "too_large")
    return error_response(413, exc.detail)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # Starlette's own: an unknown path (404), a wrong method (405)
    return error_response(exc.status_code, exc.detail, headers=exc.headers)


HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    RequestValidationError: _invalid_body,
    APIError: _api_error,
    InvalidRequest: _invalid_input,  # and its subclass RequestTooLarge: handlers are found by the error's MRO
    QueueFull: _queue_full,
    DeadlineExceeded: _deadline,
    BatcherClosed: _closed,
    BodyTooLarge: _body_too_large,
    HTTPException: _http_error,
}


def add_error_handlers(app: FastAPI) -> None:
    """Map every error the server answers to its status, in the one error shape."""
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
