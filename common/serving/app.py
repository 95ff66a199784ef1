"""The FastAPI app: OpenAI-compatible embeddings behind a dynamic batcher.

`create_app(settings)` builds everything from settings; `create_app(settings,
engine=...)` takes a ready engine instead (tests pass a stub, no patching).
The app's state (`common.serving.state`) is made by the lifespan and reaches
each request through Starlette's lifespan state; routes (`routes.py`) take it
with `Depends`, raise typed errors, and `errors.py` answers each in one shape.

The layers a request passes, outermost first: metrics (every answer counted,
403s and 413s too), mutual-TLS authorisation (when TLS is on), the body-size
limit (nothing over `max_body_bytes` is read), then FastAPI's validation and the
route.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from common.engine import Engine
from common.serving.authz import ClientAuthorization
from common.serving.body_limit import BodySizeLimit
from common.serving.errors import add_error_handlers, error_response
from common.serving.metrics import MetricsMiddleware
from common.serving.routes import router
from common.serving.settings import ServingSettings
from common.serving.state import ServingState


def create_app(settings: ServingSettings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """An embeddings server. `engine` (optional) must have a codec with `tokenize(texts)`."""
    settings = settings or ServingSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, ServingState]]:
        state = ServingState(settings, engine)
        await state.start()
        try:
            yield {"serving": state}  # Starlette copies it into every request's scope["state"]
        finally:
            await state.close()

    app = FastAPI(title="High-Performance AI Systems: embeddings server", version="1.0", lifespan=lifespan)
    add_error_handlers(app)
    # add_middleware wraps what is there: the last added runs first
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.tls_enabled:
        app.add_middleware(
            ClientAuthorization, allowed=settings.allowed_clients, refuse=lambda why: error_response(403, why)
        )
    app.add_middleware(MetricsMiddleware)
    app.include_router(router)
    return app
