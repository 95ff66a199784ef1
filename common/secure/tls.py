"""Mutual TLS material: a dev CA, short-lived server and client certificates, and the SSL contexts that use them.

Certificates live hours, not years: a stolen key is useful for a day at most,
and renewing is one call (`dev_pki` reissues what is missing or expiring).
Keys are EC P-256 (fast handshakes, small certificates). A client's identity
is a SPIFFE ID in the certificate's one URI SAN (`spiffe://hpai/NAME`; the
subject CN holds the bare NAME, for logs): a name the server can authorise
by, independent of host names. Only the URI SAN is ever read as an identity.

Both contexts insist on TLS 1.3, require the peer's certificate and trust
only the given CA, never the system store: the CA *is* the access policy.

`python -m common.secure.tls DIR [--client NAME ...]` writes (or renews) a
dev CA, a server certificate for localhost / 127.0.0.1 and client certificates
in DIR; private keys are written 0600.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import write_atomically
from common.secure.errors import TLSMaterialError

TRUST_DOMAIN = "hpai"
SERVER_HOSTS = ("localhost", "127.0.0.1")
LEAF_HOURS = 24.0
CA_HOURS = 7 * 24.0
RENEW_WITHIN = dt.timedelta(hours=1)  # reissue a certificate this close to its expiry
CLOCK_SKEW = dt.timedelta(minutes=5)  # backdate not_before so a slightly slow peer clock still accepts


def client_id(name: str) -> str:
    """The identity a client certificate for `name` carries, and the server authorises by."""
    return f"spiffe://{TRUST_DOMAIN}/{name}"


@dataclass(frozen=True, repr=False)
class Issued:
    """A certificate and its private key. The repr names the subject only, never the key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"Issued({self.cert.subject.rfc4514_string()}, until {self.cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z)"

    def __reduce__(self) -> Any:
        raise TypeError("Issued holds a private key and refuses to be pickled")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _builder(subject: str, issuer: x509.Name | None, key: ec.EllipticCurvePrivateKey, start: dt.datetime, hours: float):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + dt.timedelta(hours=hours))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(name: str = "hpai dev CA", *, hours: float = CA_HOURS, start: dt.datetime | None = None) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, None, key, start or _now(), hours)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _leaf(ca: Issued, subject: str, sans: list[x509.GeneralName], eku: x509.ObjectIdentifier, hours: float, start):
    key = ec.generate_private_key(ec.SECP256R1())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    cert = (
        _builder(subject, ca.cert.subject, key, start or _now(), hours)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_server(
    ca: Issued, hosts: Sequence[str] = SERVER_HOSTS, *, hours: float = LEAF_HOURS, start: dt.datetime | None = None
) -> Issued:
    """A serverAuth certificate valid for `hosts` (DNS names or IP addresses)."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return _leaf(ca, hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, hours, start)


def issue_client(ca: Issued, name: str, *, hours: float = LEAF_HOURS, start: dt.datetime | None = None) -> Issued:
    """A clientAuth certificate whose identity is `client_id(name)` (URI SAN; `name` is the CN)."""
    if not name or "/" in name:
        raise ValueError(f"client name must be non-empty and contain no '/', got {name!r}")
    return _leaf(
        ca, name, [x509.UniformResourceIdentifier(client_id(name))], ExtendedKeyUsageOID.CLIENT_AUTH, hours, start
    )


# --- files -------------------------------------------------------------------


def write_pem(issued: Issued, folder: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
    """`folder/stem.pem` (certificate, 0644) and `folder/stem.key` (unencrypted PKCS#8 key, 0600)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    key_pem = issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomically(key_path, key_pem, mode=0o600)  # never briefly world-readable
    write_atomically(cert_path, issued.cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def load_issued(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Issued:
    """Read a certificate and its key back; TLSMaterialError names the file that is unusable."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise TLSMaterialError(f"certificate {cert_path}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:  # the message of a bad key never contains key bytes
        raise TLSMaterialError(f"private key {key_path}: {type(exc).__name__}: cannot load it") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise TLSMaterialError(f"private key {key_path} does not belong to certificate {cert_path}")
    return Issued(cert, key)


@dataclass(frozen=True)
class DevPKI:
    """Paths of the files `dev_pki` keeps in one folder."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.folder / f"client-{name}.pem"

    def client_key(self, name: str) -> Path:
        return self.folder / f"client-{name}.key"


def _fresh(cert_path: Path, key_path: Path, issuer: Issued | None) -> Issued | None:
    """The stored pair if it is usable for over RENEW_WITHIN more and (for leaves) signed by `issuer`."""
    if not (cert_path.exists() and key_path.exists()):
        return None
    try:
        issued = load_issued(cert_path, key_path)
    except TLSMaterialError:
        return None
    if issued.cert.not_valid_after_utc - _now() < RENEW_WITHIN:
        return None
    if issuer is not None:
        try:
            issued.cert.verify_directly_issued_by(issuer.cert)
        except (ValueError, TypeError, InvalidSignature):  # another CA's (an old dev CA was replaced)
            return None
    return issued


def dev_pki(
    folder: str | os.PathLike[str], clients: Sequence[str] = ("client",), *, hours: float = LEAF_HOURS
) -> DevPKI:
    """Make sure `folder` holds a dev CA, a server certificate and one per client, all valid for over an
    hour; reissue only what is missing, expiring or signed by another CA. Returns the paths."""
    pki = DevPKI(Path(folder))
    ca = _fresh(pki.ca_cert, pki.folder / "ca.key", None)
    if ca is None:
        ca = new_ca()
        write_pem(ca, pki.folder, "ca")
    if _fresh(pki.server_cert, pki.server_key, ca) is None:
        write_pem(issue_server(ca, hours=hours), pki.folder, "server")
    for name in clients:
        if _fresh(pki.client_cert(name), pki.client_key(name), ca) is None:
            write_pem(issue_client(ca, name, hours=hours), pki.folder, f"client-{name}")
    return pki


# --- contexts ----------------------------------------------------------------


def _strict(ctx: ssl.SSLContext, ca: str | os.PathLike[str]) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca))  # the only trust root: no system store is loaded
    except (OSError, ssl.SSLError) as exc:
        raise TLSMaterialError(f"CA certificate {ca}: {exc}") from None
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    for what, path in (("certificate", cert), ("private key", key)):
        if not os.path.isfile(path):  # OpenSSL's FileNotFoundError does not say which of the two
            raise TLSMaterialError(f"{what} {path}: no such file")
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except ssl.SSLError as exc:  # OpenSSL says "[SSL] PEM lib" or "key values mismatch": name the files
        raise TLSMaterialError(f"certificate {cert} with key {key}: {exc.reason or exc}") from None


def server_context(
    cert: str | os.PathLike[str], key: str | os.PathLike[str], ca: str | os.PathLike[str]
) -> ssl.SSLContext:
    """A server side that speaks TLS 1.3 only and completes no handshake without a client certificate
    signed by `ca`."""
    ctx = _strict(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca)
    # no session tickets: every connection is a full handshake that checks the client certificate again
    # (expiry, CA), so a resumed session cannot outlive a short-lived certificate
    ctx.num_tickets = 0
    _load_chain(ctx, cert, key)
    return ctx


def client_context(
    ca: str | os.PathLike[str], cert: str | os.PathLike[str] | None = None, key: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A client side that trusts only `ca`, checks the server's host name, and presents `cert` if given
    (without one, an mTLS server refuses the connection: tests use that)."""
    ctx = _strict(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca)  # PROTOCOL_TLS_CLIENT checks host names
    if cert is not None:
        _load_chain(ctx, cert, key if key is not None else cert)
    return ctx


# --- the peer's identity -----------------------------------------------------


def _spiffe_id(uris: Sequence[str]) -> str | None:
    """The SPIFFE ID among a certificate's URI SANs, or None.

    An X.509-SVID carries exactly one URI SAN, a `spiffe://` one, and that is the identity. Nothing
    else is: not the subject CN (any CA-issued name could spell `spiffe://hpai/alice` there), not a
    second URI SAN (which of two would the server authorise?)."""
    return uris[0] if len(uris) == 1 and uris[0].startswith("spiffe://") else None


def certificate_identity(cert: x509.Certificate) -> str | None:
    """The SPIFFE ID in a verified certificate's URI SAN, or None (see `_spiffe_id`)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return _spiffe_id(sans.get_values_for_type(x509.UniformResourceIdentifier))


def peer_identity(peercert: dict[str, Any] | None) -> str | None:
    """The SPIFFE ID in a verified peer certificate (`SSLObject.getpeercert()`): its one `spiffe://` URI
    SAN, else None. The subject CN is never an identity, whatever it says."""
    if not peercert:
        return None
    return _spiffe_id([value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.secure.tls", description="write or renew a dev CA, server and client certificates"
    )
    parser.add_argument("folder")
    parser.add_argument("--client", action="append", help="client name (repeatable; default: client)")
    parser.add_argument("--hours", type=float, default=LEAF_HOURS, help="validity of server and client certificates")
    args = parser.parse_args(argv)
    pki = dev_pki(args.folder, args.client or ["client"], hours=args.hours)
    for name in args.client or ["client"]:
        print(f"{client_id(name)}: {pki.client_cert(name)} {pki.client_key(name)}")
    print(f"server: {pki.server_cert} {pki.server_key}; CA: {pki.ca_cert}")


if __name__ == "__main__":
    main()
