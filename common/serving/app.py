"""The FastAPI app: OpenAI-compatible embeddings behind a dynamic batcher.

`create_app(settings)` builds everything from settings; `create_app(settings,
engine=...)` takes a ready engine instead (tests pass a stub, no patching).
The model loads in the background after start-up, so `/healthz` answers at
once and `/readyz` says 503 until the model is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.device import set_thread_count
from common.engine import Engine, InvalidRequest, build_engine
from common.engine.embedding import EmbeddingCodec, sentence_encoder
from common.serving.authz import ClientAuthorization
from common.serving.batcher import BatcherClosed, DeadlineExceeded, DynamicBatcher, QueueFull
from common.serving.metrics import ServingMetrics, observe_duration, watch_loop_lag
from common.serving.settings import ServingSettings

log = logging.getLogger("common.serving")

ENDPOINTS = ("/v1/embeddings", "/healthz", "/readyz", "/metrics")
TOKENIZE_ON_LOOP_MAX = 8  # texts a request may have and still be tokenised on the event loop (more: a thread)


# --- the API contract --------------------------------------------------------


class EmbeddingRequest(BaseModel):
    input: str | list[str] = Field(description="a text, or a list of texts, to embed")
    model: str | None = Field(None, description="the served model's name (optional)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="floats, or base64 of little-endian float32"
    )
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


def error(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-style error body: what was wrong, and which field."""
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def too_busy(exc: QueueFull) -> JSONResponse:
    """429 with the batcher's estimate of when the queue will have room."""
    return error(429, str(exc), headers={"Retry-After": str(int(exc.retry_after_s))})


# --- the app -----------------------------------------------------------------


class _State:
    """Everything one app owns; created in the lifespan, so nothing is global."""

    def __init__(self, settings: ServingSettings, engine: Engine | None):
        self.settings = settings
        self.metrics = ServingMetrics()
        self.engine = engine
        self.batcher: DynamicBatcher[list[int], np.ndarray] | None = None
        self.load_error: str | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def build_engine(self) -> Engine:
        s = self.settings
        if s.encrypted_model:  # never fall back to the plain packaged model
            from common.serving.encrypted import encrypted_engine

            return encrypted_engine(s)
        if s.threads:
            set_thread_count(s.threads)
        codec = EmbeddingCodec.from_folder(s.model_path, max_tokens=s.max_tokens)
        model = sentence_encoder(s.model_path, name=s.model_name)
        return build_engine(
            model, codec, runtime=s.runtime, device=s.device, precision=s.precision, workers=s.model_copies
        )

    async def load(self) -> None:
        try:
            if self.engine is None:
                self.engine = await asyncio.to_thread(self.build_engine)
            await asyncio.to_thread(self.engine.start)  # warm-up off the loop: /healthz stays responsive
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        engine = self.engine

        async def compute(rows: list[list[int]]) -> list[np.ndarray]:
            return await asyncio.wrap_future(engine.submit(rows))

        batcher = DynamicBatcher(
            compute, self.settings.policy(), concurrency=self.settings.model_copies, observer=self.metrics
        )
        await batcher.start()
        self.batcher = batcher
        self.metrics.ready.set(1)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.close()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)


class MetricsMiddleware:
    """Counts every answer by endpoint and status, times it, and tracks requests in flight."""

    def __init__(self, app: ASGIApp, state: Callable[[], _State | None]):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state()
        if scope["type"] != "http" or state is None:
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"  # bounded label values
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        state.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            state.metrics.inflight.dec()
            observe_duration(state.metrics, endpoint, status, started)


def _describe(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """One message naming the field, from pydantic's errors (a str | list[str] union reports both branches)."""
    for e in errors:
        loc = [p for p in e["loc"] if p not in ("body", "str", "list[str]")]
        if loc[:1] == ["input"] and len(loc) == 2:  # an element of the list
            return f"input[{loc[1]}]: expected a string, got {type(e['input']).__name__}", f"input[{loc[1]}]"
    e = errors[0]
    loc = [str(p) for p in e["loc"] if p not in ("body", "str", "list[str]")]
    field = ".".join(loc) or "body"
    if field == "input" and e["type"] != "missing":
        return f"input: expected a string or a list of strings, got {type(e['input']).__name__}", field
    return f"{field}: {e['msg']}", field


async def _wait_for_disconnect(request: Request) -> None:
    # after the body has been read, the next ASGI message is the client hanging up
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(settings: ServingSettings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """An embeddings server. `engine` (optional) must have a codec with `tokenize(texts)`."""
    settings = settings or ServingSettings()
    holder: dict[str, _State] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _State(settings, engine)
        holder["state"] = app.state.serving = state
        state.tasks.append(asyncio.create_task(watch_loop_lag(state.metrics)))
        state.tasks.append(asyncio.create_task(state.load()))
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="High-Performance AI Systems: embeddings server",
        version="1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    if settings.tls_enabled:  # added first so it runs inside MetricsMiddleware: 403s are counted too
        app.add_middleware(ClientAuthorization, allowed=settings.allowed_clients, refuse=lambda why: error(403, why))
    app.add_middleware(MetricsMiddleware, state=lambda: holder.get("state"))

    def state_of(request: Request) -> _State:
        return request.app.state.serving

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        state_of(request).metrics.rejected("invalid")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            return error(400, f"expected Content-Type: application/json, got {content_type or 'none'!r}")
        errors = exc.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            return error(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
        return error(422, *_describe(errors))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: 200 only once the model is loaded and warmed up."""
        state = state_of(request)
        if state.ready:
            return JSONResponse({"status": "ready", "model": settings.model_name, "precision": settings.precision})
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        m = state_of(request).metrics
        return Response(m.render(), media_type=m.content_type)

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        responses={400: {}, 404: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}},
    )
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        state = state_of(request)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if body.model is not None and body.model != settings.model_name:
            return error(
                404, f"model {body.model!r} is not served here; this server serves {settings.model_name!r}", "model"
            )
        if not texts:
            state.metrics.rejected("invalid")
            return error(422, "input: expected at least one text, got an empty list", "input")
        if len(texts) > settings.max_inputs_per_request:
            state.metrics.rejected("too_large")
            return error(
                413,
                f"input: {len(texts)} texts in one request; the limit is {settings.max_inputs_per_request}",
                "input",
            )
        if state.batcher is None or state.engine is None:
            why = f"model failed to load ({state.load_error})" if state.load_error else "model is still loading"
            return error(503, why, headers={"Retry-After": "1"})
        try:
            state.batcher.admit()  # a full queue refuses before tokenising: a 429 must be cheap
        except QueueFull as exc:
            return too_busy(exc)
        try:
            tokenize = state.engine.codec.tokenize
            # ~40 us a text: a few on the loop cost less than a thread hop, a long list would stall every request
            ids = tokenize(texts) if len(texts) <= TOKENIZE_ON_LOOP_MAX else await asyncio.to_thread(tokenize, texts)
        except InvalidRequest as exc:
            state.metrics.rejected("too_large" if "limit" in str(exc) else "invalid")
            status = 413 if "limit" in str(exc) else 422
            return error(status, f"input[{exc.index}]: {str(exc).split(': ', 1)[1]}", f"input[{exc.index}]")

        lengths = [len(row) for row in ids]
        for i, n in enumerate(lengths):
            if n > settings.max_tokens:
                state.metrics.rejected("too_large")
                return error(413, f"input[{i}]: text is {n} tokens; the limit is {settings.max_tokens}", f"input[{i}]")
        work = asyncio.ensure_future(state.batcher.submit(ids, lengths, settings.request_timeout_s))
        hangup = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
        if not work.done():
            work.cancel()  # the batcher drops it before compute if it is still queued
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        try:
            vectors = work.result()
        except QueueFull as exc:
            return too_busy(exc)
        except DeadlineExceeded as exc:
            return error(504, f"request not computed: {exc}")
        except BatcherClosed as exc:
            return error(503, str(exc))

        if body.encoding_format == "base64":
            encoded: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            encoded = vectors
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": settings.model_name,
            "usage": {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)},
        }
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return app
