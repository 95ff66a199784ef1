"""`python -m common.serving`: run the embeddings server.

Every flag is also an environment variable: `--max-batch-size 32` or
`HPAI_MAX_BATCH_SIZE=32`. `--help` lists them with their defaults.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from common.secure.errors import SecureError, TLSMaterialError
from common.secure.tls import server_context
from common.serving.app import create_app
from common.serving.loading import load_engine
from common.serving.settings import ServingSettings
from common.serving.tls_identity import http_protocol

log = logging.getLogger("common.serving")


class CliSettings(ServingSettings):
    model_config = SettingsConfigDict(
        env_prefix="HPAI_",
        extra="forbid",
        cli_parse_args=True,
        cli_kebab_case=True,
        cli_prog_name="python -m common.serving",
        cli_exit_on_error=True,
    )


def main(argv: list[str] | None = None) -> None:
    try:
        settings = CliSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        sys.exit(f"python -m common.serving: invalid settings:\n{exc}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls: dict[str, Any] = {}
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_ca
    if cert and key and ca:  # mutual TLS (settings.tls_enabled): our strict context, and the shim that tells who called
        try:
            context = server_context(cert, key, ca)
        except TLSMaterialError as exc:
            sys.exit(f"python -m common.serving: cannot serve mutual TLS: {exc}")
        tls = {"http": http_protocol(), "ssl_context_factory": lambda config, default: context}
    engine = None
    if settings.encrypted_model:  # decrypted before serving, so a bad key or signature stops the start
        started = time.perf_counter()
        try:
            engine = load_engine(settings)
        except (SecureError, OSError) as exc:
            sys.exit(f"python -m common.serving: cannot load the encrypted model: {type(exc).__name__}: {exc}")
        log.info(
            "verified and decrypted %s in memory in %.2f s", settings.encrypted_model, time.perf_counter() - started
        )
    # one line per start: every setting (the keyset password shows as ****) and the URL; bodies are never logged
    shown = " ".join(f"{k}={v}" for k, v in settings.model_dump().items())
    scheme = "https" if tls else "http"  # https here always means mutual TLS
    log.info("serving on %s://%s:%d with %s", scheme, settings.host, settings.port, shown)
    uvicorn.run(
        create_app(ServingSettings(**settings.model_dump()), engine=engine),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        limit_concurrency=settings.limit_concurrency,  # protects the event loop itself when the queue cannot
        access_log=False,  # per-request lines cost throughput; /metrics counts every request instead
        **tls,
    )


if __name__ == "__main__":
    main()
