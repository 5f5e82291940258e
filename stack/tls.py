"""A throwaway certificate authority for the secure-mode stack (`LEDGERFLOW_STACK_SECURE=1`).

Made once per stack folder with `cryptography`, in `<stack dir>/tls`: a CA, a server certificate
for the Kafka broker (which also presents it as a client to its own controller listener), one for
PostgreSQL, and a client certificate per Kafka service principal for mutual TLS. The CA key stays
beside them (mode 0600) only so that a principal added later can get a certificate; nothing here
is meant to leave the machine. EC P-256 keys: fast to make and accepted by Java, OpenSSL and
PostgreSQL alike.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

VALIDITY_DAYS = 365  # a local stack lives for days; a year never expires mid-run
CLOCK_SKEW = dt.timedelta(minutes=5)
CA_NAME = "ledgerflow-stack-ca"
BROKER_NAME = "ledgerflow-broker"  # also the broker's principal on its mutual-TLS listeners
POSTGRES_NAME = "ledgerflow-postgres"


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key as PEM files; `bundle` has both (Kafka's PEM keystore)."""

    cert: Path
    key: Path
    bundle: Path


@dataclass(frozen=True)
class TlsFiles:
    root: Path
    ca_cert: Path
    ca_key: Path

    def identity(self, name: str) -> Pem:
        return Pem(
            cert=self.root / f"{name}.crt",
            key=self.root / f"{name}.key",
            bundle=self.root / f"{name}.pem",
        )


def tls_files(stack_dir: Path) -> TlsFiles:
    root = stack_dir / "tls"
    return TlsFiles(root=root, ca_cert=root / "ca.crt", ca_key=root / "ca.key")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create with the final mode from the start: a key is never briefly world-readable."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.chmod(mode)  # umask may have narrowed it; keys stay 0600 either way
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: the only unencrypted form Kafka's PEM keystore reads.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_ca(files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files.root.mkdir(parents=True, exist_ok=True)
    _write(files.ca_key, _key_pem(key), 0o600)
    _write(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def issue(
    files: TlsFiles,
    name: str,
    *,
    server_names: Iterable[str] = (),
    server: bool = False,
    client: bool = False,
) -> Pem:
    """Issue `name`'s certificate (CN=name) from the stack CA, unless it already exists."""
    pem = files.identity(name)
    if pem.cert.is_file() and pem.key.is_file() and pem.bundle.is_file():
        return pem
    ca_cert, ca_key = _load_ca(files)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    alt_names: list[x509.GeneralName] = []
    for host in server_names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _key_pem(key)
    _write(pem.key, key_pem, 0o600)
    _write(pem.cert, cert_pem, 0o644)
    _write(pem.bundle, key_pem + cert_pem, 0o600)
    return pem


def ensure_tls(stack_dir: Path, host: str, client_names: Iterable[str]) -> TlsFiles:
    """The CA, the broker's and PostgreSQL's server certificates and one client certificate per
    principal; existing files are kept, so restarts do not invalidate anything."""
    files = tls_files(stack_dir)
    if not (files.ca_cert.is_file() and files.ca_key.is_file()):
        # A new CA invalidates whatever was issued by the old one.
        for stale in files.root.glob("*.*") if files.root.is_dir() else ():
            stale.unlink()
        _new_ca(files)
    server_names = sorted({host, "127.0.0.1", "localhost"})
    issue(files, BROKER_NAME, server_names=server_names, server=True, client=True)
    issue(files, POSTGRES_NAME, server_names=server_names, server=True)
    for name in client_names:
        issue(files, name, client=True)
    return files
