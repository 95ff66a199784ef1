"""A uvicorn protocol shim that puts the TLS peer's certificate and identity into the ASGI scope.

Why it exists: uvicorn verifies client certificates (mTLS) but does not tell
the app whose certificate it was. Issues encode/uvicorn#400 ("provide access
to transport information") and #745 ("add client certificate to request
scope") were closed without it; the pull requests that implement the ASGI TLS
extension (#1119, #2586, and #3132 / #3133) are still open, #3043 was closed,
and none is in the uvicorn this repo pins (0.54). Without the identity a
server can only say "some holder of a certificate from our CA": it cannot
authorise one client and refuse another.

How: uvicorn lets `Config(http=...)` take a protocol class. The subclasses
here run uvicorn's own protocol unchanged and, once per connection (in
`connection_made`, which asyncio and uvloop call after the handshake), read
the verified certificate from `transport.get_extra_info("ssl_object")` and
wrap the protocol's app so every request's scope carries
`scope["extensions"]["tls"]`, as the ASGI TLS extension (0.2) defines it,
plus `client_identity` (this repo's addition: the parsed identity, so
nobody parses PEM per request). The cost is one small dict per request.

HTTP only: uvicorn builds WebSocket protocols from its config, not from this
class, so an upgrade gets no extension (the app serves no WebSocket, and
`common.serving.authz` refuses a scope without an identity).

When uvicorn ships the extension itself, delete this file and keep reading
the same scope key.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.secure.tls import peer_identity

TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI TLS extension's dict for one verified connection, plus `client_identity`."""
    der = ssl_object.getpeercert(binary_form=True)
    name, _, _ = ssl_object.cipher() or (None, None, None)
    return {
        "server_cert": None,  # CPython's ssl cannot read back our own certificate; the spec allows None
        # Python < 3.13 exposes only the leaf (no get_verified_chain); [0] is the client's own either way
        "client_cert_chain": (ssl.DER_cert_to_PEM_cert(der),) if der else (),
        "client_cert_name": _rfc4514(der),
        "client_cert_error": None,  # a certificate that fails verification aborts the handshake: never seen here
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,  # ssl gives the OpenSSL name only; the spec allows None
        "cipher_name": name,  # this repo's addition, for logs
        "client_identity": peer_identity(ssl_object.getpeercert()),  # this repo's addition, see the docstring
    }


def _rfc4514(der: bytes | None) -> str | None:
    # cryptography escapes special characters as RFC 4514 requires; once per connection, not per request
    return x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None


class _WithTLS:
    """The protocol's app, with this connection's TLS facts added to each scope."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]):
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self.tls}
        await self.app(scope, receive, send)


class _PeerIdentityMixin(asyncio.Protocol):
    """Placed before uvicorn's protocol class, so `super()` is uvicorn's own `connection_made`."""

    app: ASGIApp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # the spec forbids the extension on plain connections
            self.app = _WithTLS(self.app, tls_extension(ssl_object))
        super().connection_made(transport)


class H11TLSProtocol(_PeerIdentityMixin, H11Protocol):
    """uvicorn's h11 protocol, plus `scope["extensions"]["tls"]`."""


HttpToolsTLSProtocol: type[asyncio.Protocol] | None
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is an optional extra of uvicorn
    HttpToolsTLSProtocol = None
else:

    class _HttpToolsTLSProtocol(_PeerIdentityMixin, HttpToolsProtocol):
        """uvicorn's httptools protocol, plus `scope["extensions"]["tls"]`."""

    HttpToolsTLSProtocol = _HttpToolsTLSProtocol


def http_protocol() -> type[asyncio.Protocol]:
    """The shimmed protocol uvicorn's "auto" would pick: httptools when installed, else h11."""
    return HttpToolsTLSProtocol or H11TLSProtocol
