"""The embeddings server's routes: OpenAI's `/v1/embeddings` and `/v1/models`, and the operator's
`/healthz`, `/readyz` and `/metrics`.

Handlers get the app's state through `Depends` and raise typed errors (`common.serving.errors` maps
each to its status); compute runs on the engine's threads, so the event loop only parses, validates,
tokenises small requests and answers.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Sequence
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request, Response

from common.engine import RequestTooLarge
from common.serving.errors import ModelNotFound, TooManyInputs, UnsupportedParameter, documented
from common.serving.schemas import EmbeddingRequest, EmbeddingResponse, Liveness, ModelCard, ModelList, Readiness
from common.serving.state import ServingState, TextCodec

# Tokenising costs ~1 us a character here: a small request is cheaper on the loop than a thread hop
# (~80 us), a large one would stall every other request, so it goes to a worker thread.
TOKENIZE_ON_LOOP_MAX = 8  # texts
TOKENIZE_ON_LOOP_MAX_CHARS = 1024  # characters, all texts together

router = APIRouter()


def serving_state(request: Request) -> ServingState:
    """The app's state: made by its lifespan, which hands it to every request (Starlette's lifespan state)."""
    state: ServingState = request.state.serving
    return state


State = Annotated[ServingState, Depends(serving_state)]
T = TypeVar("T")


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """Liveness: the process is up and its event loop answers."""
    return Liveness()


@router.get(
    "/readyz", response_model=Readiness, response_model_exclude_none=True, responses={503: {"model": Readiness}}
)
async def readyz(state: State, response: Response) -> Readiness:
    """Readiness: 200 only once the model is loaded and warmed up."""
    if state.ready:
        return Readiness(status="ready", model=state.settings.model_name, precision=state.settings.precision)
    response.status_code = 503
    return Readiness(status="failed" if state.load_error else "loading", error=state.load_error)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


@router.get("/v1/models", response_model=ModelList)
async def models(state: State) -> ModelList:
    """The served model, as OpenAI lists models."""
    return ModelList(data=[state.model_card()])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=documented(404, 422))
async def model(model_id: str, state: State) -> ModelCard:
    if model_id != state.settings.model_name:
        raise ModelNotFound(_not_served(model_id, state), "model")
    return state.model_card()


@router.post(
    "/v1/embeddings",
    # not response_model: the body is written by orjson from float32 (5x faster than pydantic and half the
    # bytes: float32 digits, not float64's); tests hold every answer to EmbeddingResponse
    responses={200: {"model": EmbeddingResponse}, **documented(400, 404, 413, 422, 429, 503, 504)},
)
async def embeddings(body: EmbeddingRequest, request: Request, state: State) -> Response:
    """Embeddings of one text or a list of texts (OpenAI-compatible)."""
    settings = state.settings
    texts = [body.input] if isinstance(body.input, str) else body.input
    if body.model is not None and body.model != settings.model_name:
        raise ModelNotFound(_not_served(body.model, state), "model")
    if len(texts) > settings.max_inputs_per_request:
        limit = settings.max_inputs_per_request
        raise TooManyInputs(f"input: {len(texts)} texts in one request; the limit is {limit}", "input")
    codec, batcher = state.model()
    if body.dimensions is not None and body.dimensions != state.dimensions:
        raise UnsupportedParameter(
            f"dimensions: this model's embeddings have {state.dimensions} dimensions and cannot be truncated "
            f"(it was not trained for it); got {body.dimensions}: omit dimensions",
            "dimensions",
        )
    batcher.admit()  # a full queue refuses before tokenising: a 429 must be cheap
    ids = await _tokenize(codec, texts)
    lengths = [len(row) for row in ids]
    for i, n in enumerate(lengths):  # the server's limit, which may be under the codec's (the model's)
        if n > settings.max_tokens:
            raise RequestTooLarge(i, f"text is {n} tokens; the limit is {settings.max_tokens}")
    vectors = await _unless_client_leaves(request, batcher.submit(ids, lengths, settings.request_timeout_s))
    if vectors is None:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    encoded: Sequence[Any] = vectors
    if body.encoding_format == "base64":
        encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    payload = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "model": settings.model_name,
        "usage": {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)},
    }
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _not_served(name: str, state: ServingState) -> str:
    return f"model {name!r} is not served here; this server serves {state.settings.model_name!r}"


def tokenizes_on_loop(texts: Sequence[str]) -> bool:
    """Whether a request is small enough to tokenise on the event loop (see TOKENIZE_ON_LOOP_MAX*)."""
    return len(texts) <= TOKENIZE_ON_LOOP_MAX and sum(map(len, texts)) <= TOKENIZE_ON_LOOP_MAX_CHARS


async def _tokenize(codec: TextCodec, texts: list[str]) -> list[list[int]]:
    if tokenizes_on_loop(texts):
        return codec.tokenize(texts)
    return await asyncio.to_thread(codec.tokenize, texts)


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None if the client hangs up first (then the batcher drops the request if it is
    still queued: nobody would read the answer)."""
    task = asyncio.ensure_future(work)
    hangup = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
    if not task.done():
        task.cancel()
        return None
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    # after the body has been read, the next ASGI message is the client hanging up
    while (await request.receive())["type"] != "http.disconnect":
        pass
