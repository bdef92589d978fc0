"""
Throwaway certificate authorities and certificates for tests, written as PEM files.

Keys are ECDSA P-256 so that a whole PKI takes milliseconds to make. Names that parse
as IP addresses become iPAddress subjectAltNames, everything else a dNSName (wildcards
included).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PKI", "CertificateAuthority", "IssuedCertificate", "make_pki", "write_bundle"]

_ONE_HOUR = datetime.timedelta(hours=1)
_ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class IssuedCertificate:
    """Paths of a certificate and its private key, and the names it carries."""

    cert: str
    key: str
    names: tuple[str, ...]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_alt_name(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates into a directory."""

    def __init__(self, directory: str, name: str) -> None:
        """Create a new CA called C{name} and write its certificate into C{directory}."""
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public_key = self._key.public_key()
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self._subject)
            .issuer_name(self._subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_HOUR)
            .not_valid_after(now + _ONE_DAY)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = _write(
            os.path.join(directory, f"{name}.crt"),
            self.certificate.public_bytes(serialization.Encoding.PEM),
        )

    def issue(
        self,
        stem: str,
        names: Sequence[str],
        *,
        server: bool = True,
        client: bool = True,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """
        Issue a leaf certificate for C{names}, written to C{stem}.crt and C{stem}.key.

        The first name is also the subject's common name. By default the certificate is
        valid from an hour ago for a day, for both serverAuth and clientAuth.
        """
        if not names:
            raise ValueError("a certificate needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usages = [
            oid
            for wanted, oid in (
                (server, ExtendedKeyUsageOID.SERVER_AUTH),
                (client, ExtendedKeyUsageOID.CLIENT_AUTH),
            )
            if wanted
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_HOUR if not_before is None else not_before)
            .not_valid_after(now + _ONE_DAY if not_after is None else not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_subject_alt_name(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            cert=_write(
                os.path.join(self.directory, f"{stem}.crt"),
                certificate.public_bytes(serialization.Encoding.PEM),
            ),
            key=_write(os.path.join(self.directory, f"{stem}.key"), _key_pem(key)),
            names=tuple(names),
        )

    def issue_expired(self, stem: str, names: Sequence[str]) -> IssuedCertificate:
        """Issue a certificate for C{names} whose validity ended a day ago."""
        now = _now()
        return self.issue(stem, names, not_before=now - 10 * _ONE_DAY, not_after=now - _ONE_DAY)


def write_bundle(path: str, cert_paths: Sequence[str]) -> str:
    """Concatenate the PEM files C{cert_paths} into one bundle at C{path}; return C{path}."""
    data = b""
    for cert_path in cert_paths:
        with open(cert_path, "rb") as f:
            data += f.read()
    return _write(path, data)


@dataclass(frozen=True)
class PKI:
    """
    Paths of a test PKI.

    C{server} and C{client} are signed by C{ca}; C{expired_server} is signed by C{ca} for
    the same names as C{server} but expired; C{rogue_server} and C{rogue_client} carry the
    same names as C{server} and C{client} but are signed by C{other_ca}. C{ca_bundle}
    holds C{other_ca} first and C{ca} second.
    """

    directory: str
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    ca_bundle: str
    server: IssuedCertificate
    client: IssuedCertificate
    expired_server: IssuedCertificate
    rogue_server: IssuedCertificate
    rogue_client: IssuedCertificate

    @property
    def ca_cert(self) -> str:
        """Path of the CA certificate that signed C{server} and C{client}."""
        return self.ca.cert_path

    @property
    def other_ca_cert(self) -> str:
        """Path of the CA certificate that signed the rogue certificates."""
        return self.other_ca.cert_path


def make_pki(
    directory: str,
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
    client_names: Sequence[str] = ("node1.example",),
) -> PKI:
    """Create C{directory} if needed and write a complete test PKI into it."""
    os.makedirs(directory, exist_ok=True)
    ca = CertificateAuthority(directory, "pushprox-test-ca")
    other_ca = CertificateAuthority(directory, "pushprox-other-ca")
    return PKI(
        directory=directory,
        ca=ca,
        other_ca=other_ca,
        ca_bundle=write_bundle(
            os.path.join(directory, "ca-bundle.crt"), [other_ca.cert_path, ca.cert_path]
        ),
        server=ca.issue("server", server_names, client=False),
        client=ca.issue("client", client_names, server=False),
        expired_server=ca.issue_expired("expired-server", server_names),
        rogue_server=other_ca.issue("rogue-server", server_names, client=False),
        rogue_client=other_ca.issue("rogue-client", client_names, server=False),
    )
