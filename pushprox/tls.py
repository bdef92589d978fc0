# -*- test-case-name: tests.test_tls -*-
"""
TLS for both sides of pushprox: policies for the client's outgoing connections, the
proxy's listening context, and certificate identity checks with service-identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.exceptions import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, DNSPattern, verify_service_identity
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

if TYPE_CHECKING:
    # Twisted exports this interface only from its private module.
    from pushprox.twisted_hooks import IOpenSSLTrustRoot

__all__ = [
    "certificate_names_fqdn",
    "client_tls_endpoint",
    "https_policy",
    "load_certificates",
    "peer_names",
    "server_context_factory",
]

# Agent asks the policy for a creator on every new connection; building one means a new
# SSL context (and, for platform trust, reading the system CA store), so keep a few.
_CREATOR_CACHE_SIZE = 64


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _load_x509(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{what} {path} holds no valid PEM certificate") from None


def load_certificates(path: str) -> list[Certificate]:
    """Load every certificate of the PEM bundle at C{path}."""
    return [
        Certificate(X509.from_cryptography(c))
        for c in _load_x509(path, "certificate file")
    ]


def _load_private_key(path: str) -> PrivateKeyTypes:
    data = _read(path, "private key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying the key is encrypted.
        raise ValueError(f"private key file {path} is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"private key file {path} holds no valid PEM private key") from None


_SUPPORTED_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


@dataclass(frozen=True)
class _Identity:
    """A certificate, the certificates that complete its chain, and its private key."""

    certificate: x509.Certificate
    chain: list[x509.Certificate]
    private_key: PrivateKeyTypes

    def options(self) -> dict[str, Any]:
        """Return these as L{CertificateOptions} keyword arguments."""
        # Twisted annotates these as pyOpenSSL objects but hands them straight to
        # pyOpenSSL's Context, which (pyOpenSSL 26.4 here) emits a DeprecationWarning for
        # its own X509 and PKey types and wants cryptography's.
        return {
            "privateKey": self.private_key,
            "certificate": self.certificate,
            "extraCertChain": list(self.chain),
        }


def _options(identity: _Identity | None) -> dict[str, Any]:
    return {} if identity is None else identity.options()


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _load_identity(cert: str, key: str) -> _Identity:
    """Load a certificate (followed by its chain) and the private key that matches it."""
    chain = _load_x509(cert, "certificate file")
    private_key = _load_private_key(key)
    if not isinstance(private_key, _SUPPORTED_KEYS):
        raise ValueError(f"private key file {key} holds an unsupported key type")
    if _spki(chain[0].public_key()) != _spki(private_key.public_key()):
        raise ValueError(f"private key file {key} does not match certificate file {cert}")
    return _Identity(certificate=chain[0], chain=chain[1:], private_key=private_key)


def _client_identity(cert: str | None, key: str | None) -> _Identity | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("a client certificate needs both cert and key, not only one of them")
    return _load_identity(cert, key)


@implementer(IPolicyForHTTPS)
class _VerifyingPolicy:
    """Verify the server's chain against a trust root and its name with service-identity."""

    def __init__(self, cacert: str | None, identity: _Identity | None) -> None:
        self._trust_root: IOpenSSLTrustRoot | None = None
        if cacert is not None:
            certificates = load_certificates(cacert)
            self._trust_root = trustRootFromCertificates(certificates)
        self._identity = identity
        self._creators: dict[bytes, IOpenSSLClientConnectionCreator] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """Return a connection creator that verifies C{hostname} (the port does not matter)."""
        creator = self._creators.get(hostname)
        if creator is None:
            creator = optionsForClientTLS(
                hostname.decode("ascii"),
                trustRoot=self._trust_root,
                extraCertificateOptions=_options(self._identity),
            )
            if len(self._creators) >= _CREATOR_CACHE_SIZE:
                self._creators.clear()
            self._creators[hostname] = creator
        return creator


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """Make client connections that verify nothing but still send SNI for DNS names."""

    def __init__(self, options: CertificateOptions, hostname: bytes) -> None:
        self._options = options
        text = hostname.decode("ascii")
        self._server_name = None if isIPAddress(text) or isIPv6Address(text) else hostname

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """Create an unverified client TLS connection."""
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IPolicyForHTTPS)
class _InsecurePolicy:
    """Accept any server certificate and any name; present the client certificate if any."""

    def __init__(self, identity: _Identity | None) -> None:
        self._options = CertificateOptions(verify=False, **_options(identity))

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """Return a connection creator that does not verify C{hostname}'s certificate."""
        return _UnverifiedCreator(self._options, hostname)


def https_policy(
    *, cacert: str | None, cert: str | None, key: str | None, insecure_skip_verify: bool = False
) -> IPolicyForHTTPS:
    """
    Build the HTTPS policy of the client's connections, to the proxy or to targets.

    It trusts C{cacert} (else the platform's trust store) and checks the host name,
    presents C{cert}/C{key} when given; insecure mode verifies nothing and ignores C{cacert}.
    """
    identity = _client_identity(cert, key)
    if insecure_skip_verify:
        return _InsecurePolicy(identity)
    return _VerifyingPolicy(cacert, identity)


def server_context_factory(*, cert: str, key: str, client_ca: str | None) -> CertificateOptions:
    """
    Build the proxy's TLS listening context.

    With C{client_ca}, clients are asked for a certificate signed by it: a certificate
    that does not verify fails the handshake, but having none is allowed at the TLS layer
    (Prometheus scrapes without one); the HTTP layer decides which paths need one.
    """
    identity = _load_identity(cert, key)
    if client_ca is None:
        return CertificateOptions(**identity.options())
    authorities = _load_x509(client_ca, "client CA file")
    options = CertificateOptions(
        verify=True,
        caCerts=[X509.from_cryptography(c) for c in authorities],
        requireCertificate=False,
        **identity.options(),
    )
    # Twisted does not send the acceptable CA names in the certificate request; clients
    # holding several certificates use them to pick the right one. The context is built
    # once and shared by every connection, so configuring it here applies to all.
    context = options.getContext()
    for authority in authorities:
        context.add_client_ca(authority)
    return options


def peer_names(transport: object) -> list[str]:
    """Return the lowercase subjectAltName DNS names of a TLS transport's peer certificate."""
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return []
    try:
        certificate = get_peer_certificate()
    except NotImplementedError:
        # twisted.internet.ssl.Server, the pre-TLSMemoryBIO transport, has the method
        # only to raise this.
        return []
    if isinstance(certificate, X509):
        certificate = certificate.to_cryptography()
    if not isinstance(certificate, x509.Certificate):
        return []
    try:
        alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [name.lower() for name in alt_names.value.get_values_for_type(x509.DNSName)]


def certificate_names_fqdn(names: list[str], fqdn: str) -> bool:
    """Tell whether a certificate with DNS names C{names} is valid for host C{fqdn}."""
    try:
        service_id = DNS_ID(fqdn)
    except ValueError:
        return False
    patterns = []
    for name in names:
        try:
            patterns.append(DNSPattern.from_bytes(name.encode("ascii")))
        except (UnicodeEncodeError, CertificateError):
            continue
    try:
        verify_service_identity(patterns, obligatory_ids=[service_id], optional_ids=[])
    except (VerificationError, CertificateError):
        return False
    return True


def _wrapped_protocol(tls: IProtocol) -> IProtocol:
    wrapped: IProtocol = tls.wrappedProtocol  # type: ignore[attr-defined]
    return wrapped


@implementer(IStreamClientEndpoint)
class _ClientTLSEndpoint:
    """``wrapped``'s connections with TLS on top, as ``wrapClientTLS`` makes them."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator,
                 wrapped: IStreamClientEndpoint, clock: IReactorTime | None) -> None:
        self._creator = creator
        self._wrapped = wrapped
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect ``protocolFactory``'s protocol over TLS; fires with that protocol."""
        factory = TLSMemoryBIOFactory(self._creator, True, protocolFactory, clock=self._clock)
        connecting: Deferred[IProtocol] = self._wrapped.connect(factory)
        return connecting.addCallback(_wrapped_protocol)


def client_tls_endpoint(creator: IOpenSSLClientConnectionCreator,
                        wrapped: IStreamClientEndpoint,
                        clock: IReactorTime | None = None) -> IStreamClientEndpoint:
    """
    What ``twisted.internet.endpoints.wrapClientTLS`` returns, made from public names only.

    ``wrapClientTLS`` refuses to work when ``twisted.internet.endpoints`` was imported
    without pyOpenSSL, which the commands do when no option names TLS
    (``pushprox.footprint``); an ``https://`` target is then scraped through this.
    """
    return _ClientTLSEndpoint(creator, wrapped, clock)
