"""Mutual TLS: the certificates, the SSL contexts, and the serving app behind a real uvicorn with the shim."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import pickle
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi import Request
from pydantic import ValidationError

from benchmarks.tls_cost import measure
from common.secure import tls
from common.secure.errors import TLSMaterialError
from common.serving import authz
from common.serving.__main__ import main as serving_main
from common.serving.app import create_app
from common.serving.loadgen import run_closed_loop
from common.serving.server import free_port, server_process
from common.serving.settings import ServingSettings
from common.serving.tls_identity import H11TLSProtocol, http_protocol
from tests.serving.stubs import stub_engine

ALICE, MALLORY = tls.client_id("alice"), tls.client_id("mallory")


def issue_cn_only(ca: tls.Issued, common_name: str) -> tls.Issued:
    """A clientAuth certificate signed by `ca` whose subject CN is `common_name` and which has no SAN at all:
    what an attacker who can get any name certified would present to pass for a SPIFFE ID."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return tls.Issued(cert, key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """One CA with a server, an allowed client (alice) and a known-but-unlisted one (mallory); another CA
    with its own "alice"; expired certificates of both sides; an "alice" valid only from three hours on;
    a certificate whose CN spells alice's SPIFFE ID but has no URI SAN. Name -> (cert path, key path)."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = tls.new_ca(), tls.new_ca("another CA")
    three_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    in_three_hours = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    issued = {
        "ca": ca,
        "other-ca": other,
        "server": tls.issue_server(ca),
        "alice": tls.issue_client(ca, "alice"),
        "mallory": tls.issue_client(ca, "mallory"),
        "alice-other-ca": tls.issue_client(other, "alice"),
        "alice-expired": tls.issue_client(ca, "alice", hours=1, start=three_hours_ago),
        "alice-not-yet-valid": tls.issue_client(ca, "alice", start=in_three_hours),
        "alice-cn-only": issue_cn_only(ca, ALICE),
        "server-expired": tls.issue_server(ca, hours=1, start=three_hours_ago),
        "server-other-host": tls.issue_server(ca, ["example.org"]),
    }
    return {name: tuple(map(str, tls.write_pem(i, folder, name))) for name, i in issued.items()}


def client(pki, name: str | None, ca: str = "ca") -> ssl.SSLContext:
    return tls.client_context(pki[ca][0], *(pki[name] if name else ()))


def tls12_only(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# --- certificates --------------------------------------------------------------------------------


def test_certificates_say_what_they_may_do_and_live_hours_not_years():
    ca = tls.new_ca()
    server, alice = tls.issue_server(ca), tls.issue_client(ca, "alice")
    ext = ca.cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    assert ext.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for leaf, eku in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (alice, ExtendedKeyUsageOID.CLIENT_AUTH)):
        ext = leaf.cert.extensions
        assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
        usage = ext.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
        assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [eku]
        assert isinstance(leaf.key, ec.EllipticCurvePrivateKey) and leaf.key.curve.name == "secp256r1"
        lifetime = leaf.cert.not_valid_after_utc - leaf.cert.not_valid_before_utc
        assert lifetime == dt.timedelta(hours=tls.LEAF_HOURS) + tls.CLOCK_SKEW  # hours, not years
        leaf.cert.verify_directly_issued_by(ca.cert)
    server_sans = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert server_sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in server_sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    client_sans = alice.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert client_sans.get_values_for_type(x509.UniformResourceIdentifier) == [ALICE]
    assert alice.cert.subject.rfc4514_string() == "CN=alice"


def test_keys_are_written_owner_only_and_never_printed_or_pickled(tmp_path):
    issued = tls.issue_client(tls.new_ca(), "alice")
    cert_path, key_path = tls.write_pem(issued, tmp_path, "alice")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    back = tls.load_issued(cert_path, key_path)
    assert back.cert == issued.cert and back.key.private_numbers() == issued.key.private_numbers()
    assert "PRIVATE" not in repr(issued) and "CN=alice" in repr(issued)
    with pytest.raises(TypeError, match="refuses to be pickled"):
        pickle.dumps(issued)
    _, other_key = tls.write_pem(tls.issue_client(tls.new_ca(), "bob"), tmp_path, "bob")
    with pytest.raises(TLSMaterialError, match="does not belong to certificate"):
        tls.load_issued(cert_path, other_key)


def test_dev_pki_reissues_only_what_is_missing_expiring_or_from_a_replaced_ca(tmp_path):
    pki = tls.dev_pki(tmp_path, ["alice"])
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(first) == {"ca.pem", "ca.key", "server.pem", "server.key", "client-alice.pem", "client-alice.key"}
    tls.dev_pki(tmp_path, ["alice"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first, "fresh material must be left alone"

    ca = tls.load_issued(pki.ca_cert, tmp_path / "ca.key")
    tls.write_pem(tls.issue_client(ca, "alice", hours=0.5), tmp_path, "client-alice")  # expires within the hour
    tls.dev_pki(tmp_path, ["alice"])
    assert pki.client_cert("alice").read_bytes() != first["client-alice.pem"]
    assert pki.server_cert.read_bytes() == first["server.pem"]

    (tmp_path / "ca.key").unlink()  # a new CA: every leaf of the old one must be reissued
    tls.dev_pki(tmp_path, ["alice"])
    new_ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    for path in (pki.server_cert, pki.client_cert("alice")):
        x509.load_pem_x509_certificate(path.read_bytes()).verify_directly_issued_by(new_ca)


def test_the_cli_writes_a_dev_pki_and_says_where(tmp_path, capsys):
    tls.main([str(tmp_path), "--client", "alice", "--client", "bob", "--hours", "2"])
    out = capsys.readouterr().out
    assert f"{tls.client_id('alice')}: {tmp_path / 'client-alice.pem'}" in out and "client-bob.key" in out
    bob = x509.load_pem_x509_certificate((tmp_path / "client-bob.pem").read_bytes())
    assert bob.not_valid_after_utc - bob.not_valid_before_utc == dt.timedelta(hours=2) + tls.CLOCK_SKEW


def test_the_server_refuses_to_start_on_unusable_tls_files_and_names_them(pki, tmp_path):
    args = ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", pki["server"][1], "--tls-ca", pki["ca"][0]]
    with pytest.raises(SystemExit, match=r"cannot serve mutual TLS: certificate .*missing\.pem: no such file"):
        serving_main([*args, "--allowed-clients", json.dumps([ALICE])])


# --- SSL contexts ----------------------------------------------------------------------------------


def test_contexts_are_tls13_only_require_certificates_and_trust_only_the_ca(pki):
    server = tls.server_context(*pki["server"], pki["ca"][0])
    alice = client(pki, "alice")
    for ctx in (server, alice):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "hpai dev CA"),),)]
    assert alice.check_hostname
    assert server.num_tickets == 0, "no resumption: each connection re-verifies the client certificate"


def test_unusable_files_are_named_and_no_key_bytes_leak(pki, tmp_path):
    with pytest.raises(TLSMaterialError, match=r"certificate .*nope\.pem: no such file"):
        tls.server_context(str(tmp_path / "nope.pem"), pki["server"][1], pki["ca"][0])
    with pytest.raises(TLSMaterialError, match=r"certificate .*server.pem with key .*alice.key"):
        tls.server_context(pki["server"][0], pki["alice"][1], pki["ca"][0])
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSMaterialError, match=r"CA certificate .*ca\.pem"):
        tls.client_context(garbage)
    key_text = Path(pki["alice"][1]).read_text()
    bad_key = tmp_path / "bad.key"
    bad_key.write_text(key_text[:120])  # a truncated key: the error must not echo it
    with pytest.raises(TLSMaterialError) as caught:
        tls.load_issued(pki["alice"][0], bad_key)
    assert key_text[40:100] not in str(caught.value)


def why(exc: Exception) -> str:
    """OpenSSL's reason, and for a failed verification what was wrong with the certificate."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return f"{reason}: {exc.verify_message}" if isinstance(exc, ssl.SSLCertVerificationError) else reason


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str = "127.0.0.1") -> tuple[str, str]:
    """One handshake over loopback with blocking sockets; (server outcome, client outcome): "ok" or the
    OpenSSL reason. In TLS 1.3 the client learns of the refusal of its certificate on its first read."""
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, str] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"hello")
                outcome["server"] = "ok"
        except (ssl.SSLError, OSError) as exc:
            outcome["server"] = why(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=host) as s,
        ):
            outcome["client"] = "ok" if s.recv(5) == b"hello" else "closed"
    except (ssl.SSLError, OSError) as exc:
        outcome["client"] = why(exc)
    thread.join(5)
    listener.close()
    return outcome.get("server", "no handshake"), outcome["client"]


@pytest.mark.parametrize(
    ("client_name", "server_name", "expected"),
    [
        ("alice", "server", ("ok", "ok")),
        (None, "server", ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED")),
        ("alice-other-ca", "server", ("unable to get local issuer certificate", "TLSV1_ALERT_UNKNOWN_CA")),
        ("alice-expired", "server", ("certificate has expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED")),
        ("alice", "server-expired", ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate has expired")),
        ("alice", "server-other-host", ("SSLV3_ALERT_BAD_CERTIFICATE", "IP address mismatch")),
        ("alice-not-yet-valid", "server", ("certificate is not yet valid", "SSLV3_ALERT_BAD_CERTIFICATE")),
        # a server certificate (EKU serverAuth only) presented as a client one: OpenSSL checks the purpose
        ("server", "server", ("unsuitable certificate purpose", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE")),
        # the CA signed it, so the handshake passes: refusing it is the app's job (see the 403 test below)
        ("alice-cn-only", "server", ("ok", "ok")),
    ],
)
def test_handshake_refuses_what_it_must_and_says_why(pki, client_name, server_name, expected):
    server_ctx = tls.server_context(*pki[server_name], pki["ca"][0])
    server, client_side = handshake(server_ctx, client(pki, client_name))
    assert expected[0] in server and expected[1] in client_side, (server, client_side)


def test_tls12_is_refused_both_ways(pki):
    server_ctx = tls.server_context(*pki["server"], pki["ca"][0])
    server, client_side = handshake(server_ctx, tls12_only(client(pki, "alice")))
    assert "UNSUPPORTED_PROTOCOL" in server and client_side == "TLSV1_ALERT_PROTOCOL_VERSION"
    legacy_server = tls12_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    legacy_server.load_cert_chain(*pki["server"])
    server, client_side = handshake(legacy_server, client(pki, "alice"))
    assert client_side == "TLSV1_ALERT_PROTOCOL_VERSION", client_side


def test_identity_is_the_one_spiffe_uri_san_and_never_the_cn(pki):
    def peercert(cn: str, *sans: tuple[str, str]) -> dict:
        return {"subject": ((("commonName", cn),),), "subjectAltName": sans}

    assert tls.peer_identity(peercert("alice", ("URI", ALICE))) == ALICE
    assert tls.peer_identity(peercert(ALICE)) is None, "a CN that spells a SPIFFE ID is not one"
    assert tls.peer_identity(peercert(ALICE, ("DNS", "alice.example"))) is None
    assert tls.peer_identity(peercert("x", ("URI", ALICE), ("URI", MALLORY))) is None, "two URI SANs: which one?"
    assert tls.peer_identity(peercert("x", ("URI", "https://hpai/alice"))) is None, "not a SPIFFE ID"
    assert tls.peer_identity({}) is None and tls.peer_identity(None) is None
    # the same rule on real certificates, as another ASGI server's TLS extension hands them to authz
    for name, expected in (("alice", ALICE), ("alice-cn-only", None), ("server", None)):
        pem = Path(pki[name][0]).read_text()
        assert tls.certificate_identity(x509.load_pem_x509_certificate(pem.encode())) == expected, name
        scope = {"type": "http", "extensions": {"tls": {"client_cert_chain": (pem,)}}}
        assert authz.client_identity(scope) == expected, name


def test_settings_refuse_half_a_tls_configuration_and_an_open_door():
    with pytest.raises(ValidationError, match="missing tls_key, tls_ca"):
        ServingSettings(tls_cert="s.pem")
    with pytest.raises(ValidationError, match="allowed_clients is empty"):
        ServingSettings(tls_cert="s.pem", tls_key="s.key", tls_ca="ca.pem")
    with pytest.raises(ValidationError, match="allowed_clients needs mutual TLS"):
        ServingSettings(allowed_clients=[ALICE])
    assert ServingSettings(tls_cert="s.pem", tls_key="s.key", tls_ca="ca.pem", allowed_clients=[ALICE]).tls_enabled


# --- the serving app over mutual TLS, in a real uvicorn ---------------------------------------------


@contextlib.contextmanager
def serve(app, ssl_ctx: ssl.SSLContext | None, http: type, probe: ssl.SSLContext | bool) -> Iterator[str]:
    """The app in uvicorn on a thread, with our server context and protocol class; yields the base URL."""
    port = free_port()
    kwargs = {"ssl_context_factory": lambda config, default: ssl_ctx} if ssl_ctx else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", http=http, **kwargs))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", verify=probe).status_code == 200:
                break
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def mtls_app(pki):
    settings = ServingSettings(
        tls_cert=pki["server"][0], tls_key=pki["server"][1], tls_ca=pki["ca"][0], allowed_clients=[ALICE]
    )
    app = create_app(settings, engine=stub_engine())

    @app.get("/test/whoami")  # a handler: what it sees of its caller
    async def whoami(request: Request) -> dict:
        ext = request.scope["extensions"]["tls"]
        return {"identity": request.state.client_identity, **{k: v for k, v in ext.items()}}

    return app


@pytest.fixture(scope="module")
def mtls_server(pki) -> Iterator[str]:
    ctx = tls.server_context(*pki["server"], pki["ca"][0])
    with serve(mtls_app(pki), ctx, http_protocol(), client(pki, "alice")) as url:
        yield url


def test_an_allowed_client_is_served_and_the_handler_sees_who_it_is(pki, mtls_server):
    with httpx.Client(verify=client(pki, "alice")) as c:
        r = c.post(f"{mtls_server}/v1/embeddings", json={"input": ["hello", "world"]})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 2 and r.headers["x-client-identity"] == ALICE
        seen = c.get(f"{mtls_server}/test/whoami").json()
        metrics = c.get(f"{mtls_server}/metrics").text
    assert seen["identity"] == ALICE and seen["client_identity"] == ALICE
    assert seen["client_cert_name"] == "CN=alice" and seen["tls_version"] == 0x0304
    leaf = x509.load_pem_x509_certificate(seen["client_cert_chain"][0].encode())
    assert leaf == x509.load_pem_x509_certificate(Path(pki["alice"][0]).read_bytes())
    assert 'hpai_requests_total{endpoint="/v1/embeddings",status="200"}' in metrics


def test_a_known_certificate_of_an_unlisted_client_gets_403_but_may_probe_health(pki, mtls_server, caplog):
    with httpx.Client(verify=client(pki, "mallory")) as c:
        r = c.post(f"{mtls_server}/v1/embeddings", json={"input": "hello"})
        assert r.status_code == 403
        assert (
            r.json()["error"]["message"]
            == f"client {MALLORY!r} is not allowed to call this server (not in its allowed_clients)"
        )
        assert "x-client-identity" not in r.headers
        assert c.get(f"{mtls_server}/metrics").status_code == 403
        assert c.get(f"{mtls_server}/healthz").status_code == 200
        assert c.get(f"{mtls_server}/readyz").status_code == 200
    with httpx.Client(verify=client(pki, "alice")) as c:
        metrics = c.get(f"{mtls_server}/metrics").text
    assert 'hpai_requests_total{endpoint="/v1/embeddings",status="403"} 1.0' in metrics


def test_a_cn_that_spells_an_allowed_spiffe_id_is_not_an_identity(pki, mtls_server):
    """CN=spiffe://hpai/alice, no URI SAN, signed by the server's own CA: the handshake passes, the app refuses."""
    with httpx.Client(verify=client(pki, "alice-cn-only")) as c:
        r = c.post(f"{mtls_server}/v1/embeddings", json={"input": "hello"})
        whoami = c.get(f"{mtls_server}/test/whoami")
        assert c.get(f"{mtls_server}/healthz").status_code == 200, "authenticated: it may still probe health"
    assert r.status_code == 403 and whoami.status_code == 403
    assert r.json()["error"]["message"] == (
        "the client certificate carries no SPIFFE ID: an identity is one spiffe:// URI SAN "
        "(the subject CN is never read as one)"
    )
    assert "x-client-identity" not in r.headers


@pytest.mark.parametrize(
    "who", ["no certificate", "another CA", "expired", "not yet valid", "server certificate", "TLS 1.2", "plain HTTP"]
)
def test_refused_connections_get_no_http_answer_and_the_server_carries_on(pki, mtls_server, who):
    contexts = {
        "no certificate": lambda: client(pki, None),
        "another CA": lambda: client(pki, "alice-other-ca"),
        "expired": lambda: client(pki, "alice-expired"),
        "not yet valid": lambda: client(pki, "alice-not-yet-valid"),
        "server certificate": lambda: client(pki, "server"),
        "TLS 1.2": lambda: tls12_only(client(pki, "alice")),
    }
    url = mtls_server.replace("https://", "http://") if who == "plain HTTP" else mtls_server
    verify = contexts[who]() if who in contexts else True
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"{url}/healthz", verify=verify, timeout=5)
    assert httpx.get(f"{mtls_server}/healthz", verify=client(pki, "alice")).status_code == 200


def test_the_shim_works_on_h11_too_and_adds_nothing_to_plain_connections(pki):
    ctx = tls.server_context(*pki["server"], pki["ca"][0])
    with serve(mtls_app(pki), ctx, H11TLSProtocol, client(pki, "alice")) as url:
        assert httpx.get(f"{url}/test/whoami", verify=client(pki, "alice")).json()["identity"] == ALICE
    plain = create_app(ServingSettings(), engine=stub_engine())

    @plain.get("/test/extensions")
    async def extensions(request: Request) -> dict:
        return {"has_tls": "tls" in (request.scope.get("extensions") or {})}

    with serve(plain, None, http_protocol(), True) as url:
        assert httpx.get(f"{url}/test/extensions").json() == {"has_tls": False}


def test_the_load_generator_speaks_mtls_through_its_client_argument(pki, mtls_server):
    async def run(name: str):
        async with httpx.AsyncClient(verify=client(pki, name)) as c:
            return await run_closed_loop(mtls_server, 2, 0.5, client=c)

    assert set(asyncio.run(run("alice")).counts) == {"200"}
    assert set(asyncio.run(run("mallory")).counts) == {"403"}


def test_a_new_mtls_connection_costs_several_kept_alive_requests(pki, mtls_server):
    """The claim module 04 measures in full with `python -m benchmarks.tls_cost`; here a quick check
    of the tool, with both servers in this process (so only a loose ratio)."""
    plain = create_app(ServingSettings(), engine=stub_engine())
    with serve(plain, None, http_protocol(), True) as plain_url:
        cost = measure(plain_url, mtls_server, client(pki, "alice"), n=30, rounds=1)
    assert cost.handshake_ratio > 1.5, cost
    assert cost.p50_mtls_reconnect_ms > cost.p50_plain_reconnect_ms, cost


@pytest.mark.slow
def test_the_cli_serves_mutual_tls_from_settings(pki):
    """`python -m common.serving --tls-*` end to end, with the real model: the wiring of __main__."""
    files = {"tls_cert": pki["server"][0], "tls_key": pki["server"][1], "tls_ca": pki["ca"][0]}
    with server_process(threads=1, client_tls=client(pki, "alice"), allowed_clients=[ALICE], **files) as server:
        url = server.url
        assert url.startswith("https://")
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "hello"}, verify=client(pki, "alice"))
        assert r.status_code == 200 and r.headers["x-client-identity"] == ALICE
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, verify=client(pki, "mallory")).status_code == 403
