"""Authorise each request by the client's TLS identity; refuse unknown ones with 403.

The handshake already proved the client holds a key our CA certified
(authentication); this decides whether that client may call this server
(authorisation), by the SPIFFE ID in the certificate's URI SAN and nothing
else. The identity comes from `scope["extensions"]["tls"]` (put there by
`common.serving.tls_identity`, or by any ASGI server implementing the TLS
extension), so the app does not depend on how it is served.

`/healthz` and `/readyz` stay open to every authenticated peer: a liveness or
readiness probe has a certificate of its own but should not need to be on the
callers' list, and those answers reveal nothing but "up" and "ready".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.secure.tls import certificate_identity

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
IDENTITY_HEADER = b"x-client-identity"

log = logging.getLogger("common.serving")


def _tls(scope: Scope) -> dict[str, Any]:
    return (scope.get("extensions") or {}).get("tls") or {}


def client_identity(scope: Scope) -> str | None:
    """The verified client's SPIFFE ID (its certificate's URI SAN), or None: on a connection without a
    client certificate, or with one that carries no SPIFFE ID (a CN is never taken for one)."""
    tls = _tls(scope)
    if "client_identity" in tls:  # parsed once per connection by common.serving.tls_identity
        return tls["client_identity"]
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        return None
    # another ASGI server's TLS extension: read the leaf certificate ourselves, by the same rule
    return certificate_identity(x509.load_pem_x509_certificate(chain[0].encode()))


def _refusal(scope: Scope, identity: str | None) -> str:
    """Why this request is refused, in words the client can act on."""
    if identity is not None:
        return f"client {identity!r} is not allowed to call this server (not in its allowed_clients)"
    if _tls(scope).get("client_cert_chain"):
        return (
            "the client certificate carries no SPIFFE ID: an identity is one spiffe:// URI SAN "
            "(the subject CN is never read as one)"
        )
    return "no verified client certificate on this connection: this server requires mutual TLS"


class ClientAuthorization:
    """ASGI middleware: the request goes on only if its client identity is in `allowed`.

    An allowed identity is put where handlers and logs see it: `request.state.client_identity`, and
    echoed in the `x-client-identity` response header so a client can tell who the server took it for.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str], refuse: Callable[[str], Response]):
        self.app = app
        self.allowed = frozenset(allowed)
        self.refuse = refuse  # builds the 403 in the app's error format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        identity = client_identity(scope)
        if identity not in self.allowed and scope["path"] not in OPEN_PATHS:
            why = _refusal(scope, identity)
            log.warning("refused %s %s: %s", scope.get("method", ""), scope["path"], why)
            await self.refuse(why)(scope, receive, send)
            return
        scope.setdefault("state", {})["client_identity"] = identity
        log.debug("%s %s from %s", scope.get("method", ""), scope["path"], identity)  # no per-request cost above debug
        if identity is None:
            await self.app(scope, receive, send)
            return
        header = (IDENTITY_HEADER, identity.encode("latin-1", "replace"))

        async def send_with_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_with_identity)
