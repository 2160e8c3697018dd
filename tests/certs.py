"""Certificates made at test time (the `cryptography` package): a CA with a server certificate for
127.0.0.1/localhost and a client certificate, and a second CA with a client certificate of its
own, which a server trusting only the first must refuse. EC P-256 keys: quick to make."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A CA certificate when `usage` is None (self-signed if `issuer` is None too), else a leaf."""
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
    )
    if usage is None:
        usages = {"key_cert_sign": True, "crl_sign": True, "digital_signature": True}
    else:
        usages = {"key_cert_sign": False, "crl_sign": False, "digital_signature": True}
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usages,
        ),
        critical=True,
    )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(out: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = out / f"{stem}.crt", out / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_certs(out: Path) -> Certs:
    paths: dict[str, tuple[Path, Path]] = {}
    for prefix, ca_name in (("", "nbo test CA"), ("other_", "another CA")):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue(ca_name, ca_key, None)
        paths[f"{prefix}ca"] = _write(out, f"{prefix}ca", ca_cert, ca_key)
        issuer = (ca_cert.subject, ca_key)
        leaves = [("client", ExtendedKeyUsageOID.CLIENT_AUTH)]
        if not prefix:
            leaves.append(("server", ExtendedKeyUsageOID.SERVER_AUTH))
        for stem, usage in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            paths[f"{prefix}{stem}"] = _write(out, f"{prefix}{stem}", _issue(stem, key, issuer, usage=usage), key)
    return Certs(
        ca=paths["ca"][0],
        server_cert=paths["server"][0],
        server_key=paths["server"][1],
        client_cert=paths["client"][0],
        client_key=paths["client"][1],
        other_ca=paths["other_ca"][0],
        other_client_cert=paths["other_client"][0],
        other_client_key=paths["other_client"][1],
    )
